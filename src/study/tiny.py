"""Tiny data, networks and teachers for smoke runs: the one home of the fixtures that the tests
and the benchmarks share (``tests/``, ``bench/``), and a quick way for a user to see a training
run end to end in seconds.

* ``layout_images`` / ``write_tiny_set``: a RecordIO set whose classes are learnable colour
  layouts (a ``grid x grid`` random prototype per class, blown up to the image size, plus
  Gaussian pixel noise), with an optional 20-pair ``lfw.bin``;
* ``TINY_STUDENT`` / ``TINY_TEACHER`` / ``train_overrides``: ``key=value`` overrides that shrink
  any training config to a network of a few thousand parameters;
* ``train_tiny_teacher``: a tiny r18 teacher checkpoint trained by ``shrinkteanet.training``;
* ``random_params``: He-scaled weights for a Symbol, so that every layer of an untrained
  network matters (export and embedding checks);
* ``train_distill_teacher`` / ``distill_config`` / ``build_distill_method`` / ``distill_batch`` /
  ``sgd_steps``: the tiny teacher-student pair (32x32, 16-d) of the distillation tests and benchmark.

Every function is a pure function of its arguments and seeds. mxnet and the training stage are
imported only by the functions that need them.
"""
import os

import numpy as np

TINY_STUDENT = "net_opts={'blocks':[1,1,1,1],'filters':[8,8,16,16,32]}"
TINY_TEACHER = "teacher_net_opts={'units':[1,1,1,1],'filters':[8,8,16,16,32]}"


def layout_images(ids=8, per=8, size=32, seed=0, grid=4):
    """``[(RGB uint8 (size, size, 3), class)]``, ``per`` images of each of ``ids`` classes.

    Parameters
    ----------
    ids, per : int
        Classes and images per class (class-major order, as a RecordIO set wants them).
    size : int
        Image side; a multiple of ``grid``.
    seed : int
        ``numpy.random.RandomState`` seed of the prototypes and the noise.
    grid : int
        Cells per side of a class prototype.

    Returns
    -------
    list of (numpy.ndarray, int)
    """
    rng = np.random.RandomState(seed)
    protos = rng.randint(0, 256, size=(ids, grid, grid, 3)).astype(np.float32)
    out = []
    for c in range(ids):
        base = np.kron(protos[c], np.ones((size // grid, size // grid, 1)))
        for _ in range(per):
            out.append((np.clip(base + rng.randn(size, size, 3) * 25, 0, 255).astype(np.uint8), c))
    return out


def write_tiny_set(path, ids=8, per=8, size=32, *, with_bin=True, grid=4):
    """Write ``layout_images(ids, per, size, grid=grid)`` as an InsightFace set at ``path`` and,
    with ``with_bin``, a 20-pair ``lfw.bin`` (alternating same / different identity) from a
    second draw of the same classes.

    Returns
    -------
    path : the ``path`` given
    """
    from shrinkteanet.data.recordio import write_rec_set

    samples = layout_images(ids, per, size, grid=grid)
    write_rec_set(path, samples, image_size=(size, size), workers=1, progress=False)
    if with_bin:
        _write_pairs(path, layout_images(ids, 4, size, seed=1, grid=grid))
    return path


def _write_pairs(path, pool):
    from shrinkteanet.data.binfile import write_bin

    jpegs, issame = [], []
    for k in range(20):
        a = pool[(k * 3) % len(pool)]
        same = k % 2 == 0
        cands = [s for s in pool if (s[1] == a[1]) == same and s is not a]
        b = cands[k % len(cands)]
        jpegs += [a[0], b[0]]
        issame.append(same)
    write_bin(os.path.join(os.fspath(path), "lfw.bin"), jpegs, issame)


def train_overrides(data, out=None, *extra):
    """``key=value`` overrides of a tiny, quiet, single-process run on the set ``data`` (ids
    taken from its ``property``), checkpoints at ``out`` when given, then ``extra``."""
    items = [f"data_dir={data}", TINY_STUDENT, "teacher_network=r18", TINY_TEACHER, "emb_size=32", "batch_size=16",
             "lr=0.1", "loss=softmax", "margin_s=16", "workers=0", "verify_every=0", "frequent=1000", "num_classes=0"]
    if out:
        items.append(f"out={out}")
    return items + list(extra)


def train_tiny_teacher(data, out):
    """A tiny r18 teacher trained for 24 batches on ``data``; returns ``"OUT/model,EPOCH"``."""
    from shrinkteanet.training import config
    from shrinkteanet.training import train

    cfg = config.config_by_name("teacher_r90", train_overrides(data, f"{out}/model", "network=r18",
                                                                TINY_TEACHER.replace("teacher_net_opts", "net_opts"),
                                                                "lr_schedule=constant", "max_batches=24"))
    summary = train.train(cfg)
    return f"{out}/model,{summary['checkpoint']}"


def random_params(sym, size, seed=0, *, fc1_gamma=None, batchnorm="random"):
    """``(arg_params, aux_params)`` for ``sym`` on ``size x size`` input: He-normal weights and
    PReLU slopes 0.25.

    Parameters
    ----------
    batchnorm : str
        ``"random"``: BatchNorm scales, shifts and statistics drawn too (every layer matters);
        ``"identity"``: scale 1, shift 0, mean 0, variance 1 (the weights' draws alone).
    fc1_gamma : float, optional
        Stored in the fix_gamma ``fc1`` BatchNorm (MXNet computes with 1 whatever is stored).
    """
    import mxnet as mx

    rng = np.random.RandomState(seed)
    drawn = batchnorm == "random"
    a_shapes, _, x_shapes = sym.infer_shape(data=(1, 3, size, size))
    arg, aux = {}, {}
    for name, shape in zip(sym.list_arguments(), a_shapes):
        if name == "data":
            continue
        if name.endswith("_weight"):
            v = rng.normal(0, np.sqrt(2.0 / int(np.prod(shape[1:]))), shape)
        elif name.endswith("relu_gamma"):
            v = np.full(shape, 0.25)
        elif name.endswith("_gamma"):
            v = rng.uniform(0.5, 1.5, shape) if drawn else np.ones(shape)
        else:
            v = rng.normal(0, 0.1, shape) if drawn else np.zeros(shape)
        arg[name] = mx.nd.array(v, dtype="float32")
    if fc1_gamma is not None:
        arg["fc1_gamma"] = mx.nd.full(arg["fc1_gamma"].shape, fc1_gamma)
    for name, shape in zip(sym.list_auxiliary_states(), x_shapes):
        var = name.endswith("var")
        if drawn:
            v = rng.uniform(0.5, 1.5, shape) if var else rng.normal(0, 0.1, shape)
        else:
            v = np.ones(shape) if var else np.zeros(shape)
        aux[name] = mx.nd.array(v, dtype="float32")
    return arg, aux


# ---- the tiny distillation pair of tests/test_distill.py and bench/bench_distill.py ------------------
#: 32x32 faces, 16-d embeddings, 4 classes: an r18 teacher with one unit per stage and a MobileFaceNet
#: student with one block per stage, both with stages at 16, 8, 4, 2 pixels (every stage can be distilled)
DISTILL_SIZE, DISTILL_EMB, DISTILL_CLASSES = 32, 16, 4
DISTILL_TEACHER_OPTS = dict(units=(1, 1, 1, 1), filters=(8, 8, 16, 16, 32))
DISTILL_STUDENT_OPTS = dict(blocks=(1, 1, 1, 1), filters=(4, 4, 8, 8, 16))


def distill_batch(seed=0, n=8):
    """``(data, label)`` NDArrays: ``n`` uniform random 32x32 images of ``seed``, labels ``0..3`` in turn."""
    import mxnet as mx

    rng = np.random.RandomState(seed)
    data = mx.nd.array(rng.uniform(0, 255, size=(n, 3, DISTILL_SIZE, DISTILL_SIZE)))
    label = mx.nd.array(np.arange(n) % DISTILL_CLASSES)
    return data, label


def distill_config(method, ckpt, *extra):
    """The tiny config of ``method`` against the teacher checkpoint ``ckpt`` ((prefix, epoch)); the
    knowledge-transfer methods get the teacher's architecture as their student; then ``extra``."""
    from shrinkteanet.training.config import generate_config

    prefix, epoch = ckpt
    kt = method.startswith("lowres_kt")
    opts = DISTILL_TEACHER_OPTS if kt else DISTILL_STUDENT_OPTS
    return generate_config("r18" if kt else "mfn", "synth", "arcface", method, [
        f"emb_size={DISTILL_EMB}", f"image_size={DISTILL_SIZE}", f"num_classes={DISTILL_CLASSES}",
        f"teacher={prefix},{epoch}", "teacher_network=r18", f"teacher_net_opts={dict(DISTILL_TEACHER_OPTS)!r}",
        f"net_opts={dict(opts)!r}", f"lowres_size={DISTILL_SIZE // 2}", *extra])


def build_distill_method(method, ckpt, *extra, hybridize=False):
    """``(cfg, Method)`` of ``distill_config(method, ckpt, *extra)``, networks built by ``training.networks``."""
    from shrinkteanet.methods.base.assembler import build_method
    from shrinkteanet.training.networks import build_networks

    cfg = distill_config(method, ckpt, *extra)
    student, teacher, fc7 = build_networks(cfg)
    return cfg, build_method(cfg, student, teacher, teacher_fc7=fc7, hybridize=hybridize)


def sgd_steps(method, trainer, data, label, steps):
    """``steps`` SGD steps on the sum of every loss part; returns each step's part means (floats)."""
    import mxnet as mx

    history = []
    for _ in range(steps):
        with mx.autograd.record():
            parts = method(data, label)
            total = mx.nd.add_n(*[v.sum() for v in parts.values()])
        total.backward()
        trainer.step(data.shape[0])
        history.append({k: float(v.mean().asscalar()) for k, v in parts.items()})
    return history


def train_distill_teacher(prefix):
    """The tiny r18 teacher trained (ArcFace, self-studied, 30 SGD steps) on ``distill_batch(6, 16)``,
    so that its embeddings point at its class centres as a real teacher's do; saved with its fc7 as an
    InsightFace checkpoint.  Returns ``(prefix, 1)``."""
    import mxnet as mx

    from shrinkteanet.methods.base.assembler import build_method
    from shrinkteanet.model.checkpoint import save_checkpoint
    from shrinkteanet.training.config import generate_config
    from shrinkteanet.training.networks import build_networks

    mx.random.seed(11)
    cfg = generate_config("r18", "synth", "arcface", "none", [
        f"emb_size={DISTILL_EMB}", f"image_size={DISTILL_SIZE}", f"num_classes={DISTILL_CLASSES}",
        f"net_opts={dict(DISTILL_TEACHER_OPTS)!r}"])
    net, _, _ = build_networks(cfg)
    method = build_method(cfg, net, hybridize=True)
    trainer = mx.gluon.Trainer(method.trainable_params(), "sgd", {"learning_rate": 0.01, "momentum": 0.9})
    data, label = distill_batch(6, n=16)
    sgd_steps(method, trainer, data, label, 30)
    arg, aux = net.get_params()
    arg["fc7_weight"] = method.head.weight.data().copy()
    save_checkpoint(os.fspath(prefix), 1, net.embedding_symbol, arg, aux)
    return os.fspath(prefix), 1
