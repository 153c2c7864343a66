"""ShrinkTeaNet wiring and the baseline methods on tiny networks (32x32, emb 16).

Teacher: r18 with one unit per stage; student: MobileFaceNet with one block per stage.
Both have stages at 16, 8, 4, 2 pixels, so every stage can be distilled.
"""
import math

import mxnet as mx
import numpy as np
import pytest

from shrinkteanet.methods.base import assembler, registry
from shrinkteanet.study import tiny
from shrinkteanet.training.config import generate_config
from shrinkteanet.core.errors import InputError
from shrinkteanet.model.network import materialize
from shrinkteanet.training.networks import build_networks

SIZE, EMB, CLASSES = tiny.DISTILL_SIZE, tiny.DISTILL_EMB, tiny.DISTILL_CLASSES
T_OPTS, S_OPTS = tiny.DISTILL_TEACHER_OPTS, tiny.DISTILL_STUDENT_OPTS
make_cfg, build, batch = tiny.distill_config, tiny.build_distill_method, tiny.distill_batch


@pytest.fixture(scope="session")
def teacher_ckpt(tmp_path_factory):
    """The tiny r18 teacher of ``study.tiny.train_distill_teacher`` (shared with bench/bench_distill.py)."""
    return tiny.train_distill_teacher(tmp_path_factory.mktemp("teacher") / "model")


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _np_angular(s, t):
    return (1 - np.sum(_unit(s) * _unit(t), axis=1)) ** 2


def _snapshot(block):
    return {k: p.data().asnumpy().copy() for k, p in block.collect_params().items()}


def test_presets_select_every_method():
    for name in registry.names():
        cfg = generate_config("mfn", "synth", "arcface", name)
        assert registry.method_of(cfg) is registry.method(name)
    with pytest.raises(InputError, match="distill='bogus'"):
        registry.method_of(generate_config("mfn", "synth", "arcface", "none", ["distill=bogus"]))
    # Sec. 4.3: "Student-1" is Eq. 7 with the l2 distance, i.e. at all four stages
    l2 = generate_config("mfn", "synth", "arcface", "l2")
    assert l2.distill_stages == [1, 2, 3, 4] and l2.l2_lambda == 0.001
    l2_final = generate_config("mfn", "synth", "arcface", "l2_final")
    assert (l2_final.distill, l2_final.distill_stages, l2_final.l2_lambda) == ("l2", [4], 0.001)
    stn_final = generate_config("mfn", "synth", "arcface", "stn_final")
    assert (stn_final.distill, stn_final.distill_stages) == ("stn", [4])


@pytest.mark.parametrize("stages,lambdas,want", [
    ([1, 2, 3, 4], [], {"angular_1": 0.125, "angular_2": 0.25, "angular_3": 0.5, "angular_4": 1.0}),
    ([2, 4], [], {"angular_2": 0.25, "angular_4": 1.0}),
    # the weight follows the stage number, not the position in distill_stages (Eq. 7: lambda_i = lambda_{i+1}/2)
    ([3], [], {"angular_3": 0.5}),
    ([4, 1], [], {"angular_4": 1.0, "angular_1": 0.125}),
    ([2, 3], [], {"angular_2": 0.25, "angular_3": 0.5}),
    ([1, 4], [0.3, 2.0], {"angular_1": 0.3, "angular_4": 2.0}),
])
def test_lambda_schedule(teacher_ckpt, stages, lambdas, want):
    _, method = build("stn", teacher_ckpt, f"distill_stages={stages!r}", f"distill_lambdas={lambdas!r}")
    assert method.loss_weights == {"softmax": 1.0, **want}
    assert sorted(method.adapters) == sorted(s for s in stages if s != 4)
    data, label = batch()
    parts = method(data, label)
    assert list(parts) == ["softmax", *want]
    # the weighted part is lambda times Eq. 4 on the final embeddings
    if 4 in stages:
        emb = method.student(data)[0].asnumpy()
        temb = method.teacher(data)[0].asnumpy() if method.teacher.with_taps else method.teacher(data).asnumpy()
        np.testing.assert_allclose(parts["angular_4"].asnumpy(), want["angular_4"] * _np_angular(emb, temb),
                                   rtol=1e-4, atol=1e-6)


def test_l2_and_hint_weights(teacher_ckpt):
    _, m = build("l2", teacher_ckpt)
    assert m.loss_weights == {"softmax": 1.0, "l2_1": 0.000125, "l2_2": 0.00025, "l2_3": 0.0005, "l2": 0.001}
    _, m = build("l2_final", teacher_ckpt)
    assert m.loss_weights == {"softmax": 1.0, "l2": 0.001}
    _, m = build("l2", teacher_ckpt, "distill_stages=[3,4]")
    assert m.loss_weights == {"softmax": 1.0, "l2_3": 0.0005, "l2": 0.001}
    _, m = build("hint", teacher_ckpt, "hint_lambda=2.0")
    assert m.loss_weights == {"softmax": 1.0, "hint_1": 0.25, "hint_2": 0.5, "hint_3": 1.0, "hint_4": 2.0}


def test_intermediate_terms_vanish_when_the_student_is_the_teacher(teacher_ckpt):
    """Eq. 6 wiring: with the teacher as its own student and identity adapters, the
    tail after stage i applied to the teacher's own F_i gives back the teacher's
    embedding, so every angular_i is 0; random adapters make it positive."""
    cfg = make_cfg("stn", teacher_ckpt, "network=r18", f"net_opts={dict(T_OPTS)!r}")
    _, teacher, fc7 = build_networks(cfg)
    twin, _, _ = build_networks(cfg)
    materialize(twin, SIZE)
    for name, p in teacher.collect_params().items():
        twin.collect_params()[name].set_data(p.data())
    method = assembler.build_method(cfg, twin, teacher, teacher_fc7=fc7)
    data, _ = batch(1)
    label = mx.nd.array(np.arange(8) % CLASSES)
    random_parts = method(data, label)  # not recording: adapters' BN on running stats (0, 1)
    for stage, adapter in method.adapters.items():
        c = adapter.conv.weight.shape[0]
        adapter.conv.weight.set_data(mx.nd.array(np.eye(c).reshape(c, c, 1, 1)))
    parts = method(data, label)
    for stage in (1, 2, 3, 4):
        assert float(parts[f"angular_{stage}"].max().asscalar()) < 1e-6, stage
    for stage in (1, 2, 3):
        assert float(random_parts[f"angular_{stage}"].mean().asscalar()) > 1e-3, stage


@pytest.mark.parametrize("hybridize", [False, True])
def test_stn_step_freezes_teacher_and_trains_student_and_adapters(teacher_ckpt, hybridize):
    cfg, method = build("stn", teacher_ckpt, hybridize=hybridize)
    teacher = method.teacher
    before = _snapshot(teacher)
    params = method.trainable_params()
    names = set(params.keys())
    # the output units share InsightFace's names (pre_fc1, fc1): compare the objects
    assert not {id(p) for p in params.values()} & {id(p) for p in teacher.collect_params().values()}
    assert {n for n in names if n.startswith("adapter")} and "fc7_weight" in names
    student_before = _snapshot(method.student)
    trainer = mx.gluon.Trainer(params, "sgd", {"learning_rate": 0.1, "momentum": 0.9})
    for step in range(2):
        data, label = batch(step)
        with mx.autograd.record():
            parts = method(data, label)
            total = mx.nd.add_n(*[v.sum() for v in parts.values()])
        total.backward()
        for name, p in params.items():
            if name.endswith("fc1_gamma"):  # BatchNorm fix_gamma=True (InsightFace fc1): no gradient by design
                continue
            g = p.grad().asnumpy()
            assert np.isfinite(g).all() and np.abs(g).sum() > 0, name
        trainer.step(8)
    after = _snapshot(teacher)
    for k in before:
        assert before[k].tobytes() == after[k].tobytes(), k
    changed = [k for k, v in _snapshot(method.student).items() if v.tobytes() != student_before[k].tobytes()]
    assert len(changed) >= len(student_before) - 1


def test_cached_teacher_embedding_skips_the_teacher_forward(teacher_ckpt):
    _, method = build("stn", teacher_ckpt)
    data, label = batch(2)
    given = np.random.RandomState(0).normal(size=(8, EMB)).astype(np.float32)

    class Forbidden:
        with_taps = False

        def __call__(self, *_):
            raise AssertionError("teacher forward ran although teacher_emb was given")

    method._frozen.teacher = Forbidden()
    parts = method(data, label, mx.nd.array(given))
    emb = method.student(data)[0].asnumpy()
    np.testing.assert_allclose(parts["angular_4"].asnumpy(), _np_angular(emb, given), rtol=1e-4, atol=1e-6)
    # the intermediate terms still run the teacher's tails, against the given embedding
    feat = method.adapters[2](method.student(data)[2])
    tail_emb = method._frozen.tails[2](feat).asnumpy()
    np.testing.assert_allclose(parts["angular_2"].asnumpy(), 0.25 * _np_angular(tail_emb, given), rtol=1e-4,
                               atol=1e-6)


def test_spatial_mismatch_and_missing_pieces_are_clear_errors(teacher_ckpt):
    cfg = make_cfg("stn", teacher_ckpt)
    student, teacher, fc7 = build_networks(cfg)
    real = student.split.stage_shapes
    student.split.stage_shapes = lambda size: [(c, h * 2, w * 2) for c, h, w in real(size)]
    with pytest.raises(InputError, match="stage 1 is 32x32 in the student .* 16x16 in the teacher"):
        assembler.build_method(cfg, student, teacher, teacher_fc7=fc7)
    with pytest.raises(InputError, match="needs a teacher"):
        assembler.build_method(cfg, student, None)
    with pytest.raises(InputError, match="fc7_weight"):
        assembler.build_method(make_cfg("margin", teacher_ckpt), student, teacher, teacher_fc7=None)
    with pytest.raises(InputError, match="teacher_network"):
        build_networks(make_cfg("stn", teacher_ckpt, "teacher_network=mfn",
                                        f"teacher_net_opts={dict(S_OPTS)!r}"))


def test_margin_distillation_uses_fixed_teacher_centres(teacher_ckpt):
    cfg, method = build("margin", teacher_ckpt)
    assert method.loss_weights == {"margin": 1.0}
    assert "fc7_weight" not in set(method.trainable_params().keys())
    centres = method.head.weight.data().asnumpy()
    from shrinkteanet.model.checkpoint import load_checkpoint
    _, arg, _ = load_checkpoint(*teacher_ckpt, keep_extra=True)
    assert centres.tobytes() == arg["fc7_weight"].asnumpy().tobytes()
    data, label = batch(3)
    parts = method(data, label)
    emb = method.student(data).asnumpy()
    temb = method.teacher(data).asnumpy()
    y = label.asnumpy().astype(int)
    d = np.maximum(np.sum(_unit(temb) * _unit(centres)[y], axis=1), 0)
    m = 0.2 + 0.3 * d / d.max()
    cos = _unit(emb) @ _unit(centres).T
    logits = cos.copy()
    for i in range(len(y)):
        th = math.acos(np.clip(cos[i, y[i]], -1 + 1e-6, 1 - 1e-6))
        logits[i, y[i]] = math.cos(th + m[i]) if th + m[i] <= math.pi else cos[i, y[i]] - m[i] * math.sin(m[i])
    logits *= 64
    z = logits - logits.max(1, keepdims=True)
    ce = -(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(1)))
    np.testing.assert_allclose(parts["margin"].asnumpy(), ce, rtol=1e-3, atol=1e-3)


def test_kd_on_margin_logits_matches_numpy(teacher_ckpt):
    cfg, method = build("kd", teacher_ckpt, "kd_temperature=2.0", "kd_lambda=0.5")
    data, label = batch(4)
    parts = method(data, label)
    assert list(parts) == ["softmax", "kd"]
    emb = method.student(data)
    s_logits = method.head(emb, label).asnumpy()
    temb = method.teacher(data).asnumpy()
    from shrinkteanet.model.checkpoint import load_checkpoint
    _, arg, _ = load_checkpoint(*teacher_ckpt, keep_extra=True)
    w = arg["fc7_weight"].asnumpy()
    y = label.asnumpy().astype(int)
    cos = _unit(temb) @ _unit(w).T
    t_logits = cos.copy()
    for i in range(len(y)):
        th = math.acos(np.clip(cos[i, y[i]], -1 + 1e-6, 1 - 1e-6))
        t_logits[i, y[i]] = math.cos(th + 0.5) if th + 0.5 <= math.pi else cos[i, y[i]] - 0.5 * math.sin(0.5)
    t_logits *= 64

    def log_softmax(z):
        z = z - z.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))

    lt, ls = log_softmax(t_logits / 2.0), log_softmax(s_logits / 2.0)
    want = 0.5 * 4.0 * (np.exp(lt) * (lt - ls)).sum(1)
    np.testing.assert_allclose(parts["kd"].asnumpy(), want, rtol=1e-3, atol=1e-4)
    _, m2 = build("kd", teacher_ckpt, "kd_emb_loss=angular", "kd_emb_lambda=0.3")
    assert m2.loss_weights == {"softmax": 1.0, "kd": 1.0, "angular_4": 0.3}


def test_lowres_student_input_and_knowledge_transfer(teacher_ckpt):
    cfg, method = build("lowres_ktkd", teacher_ckpt)
    assert registry.loader_lowres_size(cfg) == 0 and registry.student_image_size(cfg) == SIZE // 2
    data, label = batch(5)
    small = method.student_input(data).asnumpy()
    want = data.asnumpy().reshape(8, 3, SIZE // 2, 2, SIZE // 2, 2).mean(axis=(3, 5))
    np.testing.assert_allclose(small, want, rtol=1e-5)
    s_params = dict(method.student.collect_params().items())
    t_params = dict(method.teacher.collect_params().items())
    same = [n for n in t_params if s_params[n].shape == t_params[n].data().shape]
    for n in same:  # the fully convolutional body is the teacher's, bit for bit
        assert s_params[n].data().asnumpy().tobytes() == t_params[n].data().asnumpy().tobytes(), n
    assert "pre_fc1_weight" not in same  # the 'E' output FC depends on the resolution
    assert len(same) == len(t_params) - 1
    from shrinkteanet.model.checkpoint import load_checkpoint
    _, arg, _ = load_checkpoint(*teacher_ckpt, keep_extra=True)
    assert method.head.weight.data().asnumpy().tobytes() == arg["fc7_weight"].asnumpy().tobytes()
    assert "fc7_weight" in set(method.trainable_params().keys())  # KT: centres are a start, not fixed
    assert set(method(data, label)) == {"softmax", "kd"}
    with pytest.raises(InputError, match="expected image_size=32"):
        method(mx.nd.array(small), label)
    with pytest.raises(InputError, match="student parameters match the teacher"):
        cfg2 = make_cfg("lowres_kt", teacher_ckpt, "network=mfn", f"net_opts={dict(S_OPTS)!r}")
        s2, t2, f2 = build_networks(cfg2)
        assembler.build_method(cfg2, s2, t2, teacher_fc7=f2)


@pytest.mark.parametrize("method_name,extra", [
    ("stn", ()), ("l2", ("distill_stages=[2,4]",)), ("kd", ("kd_emb_loss=angular",)), ("hint", ()),
    ("margin", ()), ("lowres_kd", ()), ("lowres_ktkd", ("kd_emb_loss=l2",)), ("lowres_kt", ()), ("none", ())])
def test_short_run_every_term_decreases(teacher_ckpt, method_name, extra):
    """25 SGD steps on the teacher's synthetic batch: every loss part goes down.  The
    classification term is scaled by 0.1 and the small paper weights of l2 (0.001) and
    hint raised, so that in so short a run each term, not only the softmax, drives
    the step (on 16 images the softmax reaches ~0 within a few steps anyway)."""
    mx.random.seed(0)
    cfg, method = build(method_name, teacher_ckpt, *extra, "softmax_weight=0.1", "l2_lambda=0.1",
                        "hint_lambda=10", "kd_emb_lambda=5", hybridize=True)
    trainer = mx.gluon.Trainer(method.trainable_params(), "sgd", {"learning_rate": 0.005, "momentum": 0.9})
    data, label = batch(6, n=16)
    history = tiny.sgd_steps(method, trainer, data, label, 25)
    for name in history[0]:
        first, last = history[0][name], history[-1][name]
        assert np.isfinite(last) and last < first, (name, [h[name] for h in history])


# ---- every stage part against numpy (issue 25: hint, the intermediate l2_i and lowres_kd were only
# checked to decrease).  The networks' pieces (student taps, teacher taps and tails) come from their own
# blocks, tested in tests/test_model.py; the adapter H_i (1x1 conv + BN on running statistics), the
# distances and the weights of Eq. 6/7 are recomputed here in numpy.
def _np_adapter(adapter, x):
    """H_i(x) = BN(conv1x1(x)) in inference mode: ``(x W^T) * gamma / sqrt(var + eps) + beta - ...``."""
    w = adapter.conv.weight.data().asnumpy()[:, :, 0, 0]
    bn = adapter.bn
    gamma, beta = bn.gamma.data().asnumpy(), bn.beta.data().asnumpy()
    mean, var = bn.running_mean.data().asnumpy(), bn.running_var.data().asnumpy()
    z = np.einsum("oc,nchw->nohw", w, x)
    scale = (gamma / np.sqrt(var + 2e-5))[None, :, None, None]
    return (z - mean[None, :, None, None]) * scale + beta[None, :, None, None]


def _randomize_adapter_bn(method, seed):
    """Random BatchNorm scale, shift and statistics in every adapter, so that the check sees them."""
    rng = np.random.RandomState(seed)
    for adapter in method.adapters.values():
        bn = adapter.adapter.bn if hasattr(adapter, "adapter") else adapter.bn
        for p, lo, hi in ((bn.gamma, 0.5, 1.5), (bn.beta, -0.2, 0.2), (bn.running_mean, -0.1, 0.1),
                          (bn.running_var, 0.5, 2.0)):
            p.set_data(mx.nd.array(rng.uniform(lo, hi, size=p.shape)))


@pytest.mark.parametrize("name,extra", [("stn", ("stn_weight=2.5",)), ("l2", ("l2_lambda=0.02",)),
                                        ("hint", ("hint_lambda=3.0",))])
def test_every_stage_part_matches_numpy(teacher_ckpt, name, extra):
    """stn: ``w lambda_i (1 - cos(T_{i+1..n}(H_i(F_i^s)), t))^2`` (Eq. 6) and ``w (1 - cos(s, t))^2``
    (Eq. 4); l2: the same with ``||.||^2``; hint: ``w lambda_i mean((H_i(F_i^s) - F_i^t)^2)``; lambda_i =
    0.5 ** (4 - i) (Eq. 7)."""
    _, method = build(name, teacher_ckpt, *extra)
    _randomize_adapter_bn(method, 3)
    data, label = batch(7)
    parts = {k: v.asnumpy() for k, v in method(data, label).items()}
    out = method.student(data)
    emb, taps = out[0].asnumpy(), [t.asnumpy() for t in out[1:]]
    t_out = method.teacher(data)
    t_emb = (t_out[0] if isinstance(t_out, (list, tuple)) else t_out).asnumpy()
    weight = float(extra[0].split("=")[1])
    l2 = lambda a, b: ((a - b) ** 2).reshape(len(a), -1).sum(1)  # noqa: E731
    for stage in (1, 2, 3, 4):
        lam = weight * 0.5 ** (4 - stage)
        if name == "hint":
            feat = _np_adapter(method.adapters[stage], taps[stage - 1])
            want = lam * ((feat - t_out[stage].asnumpy()) ** 2).reshape(len(feat), -1).mean(1)
            key = f"hint_{stage}"
        else:
            if stage == 4:
                view = emb
            else:
                feat = _np_adapter(method.adapters[stage], taps[stage - 1])
                view = method._frozen.tails[stage](mx.nd.array(feat)).asnumpy()
            want = lam * (_np_angular(view, t_emb) if name == "stn" else l2(view, t_emb))
            key = (f"angular_{stage}" if name == "stn" else ("l2" if stage == 4 else f"l2_{stage}"))
        np.testing.assert_allclose(parts[key], want, rtol=2e-3, atol=1e-6, err_msg=key)


def _np_margin_logits(emb, centres, y, s=64.0, m=0.5):
    """InsightFace's ArcFace logits (``loss_m2=m``, the easy-margin fallback past pi) in numpy."""
    cos = _unit(emb) @ _unit(centres).T
    logits = cos.copy()
    for i in range(len(y)):
        th = math.acos(np.clip(cos[i, y[i]], -1 + 1e-6, 1 - 1e-6))
        logits[i, y[i]] = math.cos(th + m) if th + m <= math.pi else cos[i, y[i]] - m * math.sin(m)
    return logits * s


def test_lowres_kd_matches_numpy(teacher_ckpt):
    """lowres_kd (Karlekar et al. 2019): ``kd_lambda T^2 KL(softmax(z_t/T) || softmax(z_s/T))`` with z_s
    the student's margin logits on the 2x2 area average of the batch, z_t the teacher's on the batch
    itself with its own fc7 centres; plus the margin softmax of the student."""
    _, method = build("lowres_kd", teacher_ckpt, "kd_temperature=3.0", "kd_lambda=0.7")
    data, label = batch(8)
    parts = {k: v.asnumpy() for k, v in method(data, label).items()}
    assert list(parts) == ["softmax", "kd"]
    x = data.asnumpy()
    small = x.reshape(len(x), 3, SIZE // 2, 2, SIZE // 2, 2).mean(axis=(3, 5))
    emb = method.student(mx.nd.array(small)).asnumpy()
    from shrinkteanet.model.checkpoint import load_checkpoint

    _, arg, _ = load_checkpoint(*teacher_ckpt, keep_extra=True)
    y = label.asnumpy().astype(int)
    s_logits = _np_margin_logits(emb, method.head.weight.data().asnumpy(), y)
    t_logits = _np_margin_logits(method.teacher(data).asnumpy(), arg["fc7_weight"].asnumpy(), y)

    def log_softmax(z):
        z = z - z.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))

    lt, ls = log_softmax(t_logits / 3.0), log_softmax(s_logits / 3.0)
    np.testing.assert_allclose(parts["kd"], 0.7 * 9.0 * (np.exp(lt) * (lt - ls)).sum(1), rtol=2e-3, atol=1e-4)
    np.testing.assert_allclose(parts["softmax"], -log_softmax(s_logits)[np.arange(len(y)), y], rtol=2e-3, atol=1e-4)


@pytest.mark.parametrize("name,extra", [("none", ()), ("lowres_kt", ()),
                                        ("lowres_ktkd", ("kd_emb_loss=l2", "kd_emb_lambda=0.4")),
                                        ("kd", ("kd_emb_loss=angular", "kd_emb_lambda=0.3"))])
def test_softmax_and_embedding_parts_match_numpy(teacher_ckpt, name, extra):
    """``softmax``: the cross-entropy of the student's ArcFace logits (InsightFace's combined margin,
    s=64, m2=0.5) at ``softmax_weight``; the ``kd_emb_loss`` term: ``w ||s - t||^2`` (``l2``) or
    ``w (1 - cos(s, t))^2`` (``angular_4``, Eq. 4), the student at its own input size."""
    _, method = build(name, teacher_ckpt, *extra, "softmax_weight=0.6")
    data, label = batch(9)
    parts = {k: v.asnumpy() for k, v in method(data, label).items()}
    x = data.asnumpy()
    k = SIZE // method.student_size
    small = x.reshape(len(x), 3, method.student_size, k, method.student_size, k).mean(axis=(3, 5))
    emb = method.student(mx.nd.array(small))
    emb = (emb[0] if isinstance(emb, (list, tuple)) else emb).asnumpy()
    y = label.asnumpy().astype(int)
    z = _np_margin_logits(emb, method.head.weight.data().asnumpy(), y)
    z = z - z.max(1, keepdims=True)
    ce = -(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(1)))
    np.testing.assert_allclose(parts["softmax"], 0.6 * ce, rtol=2e-3, atol=1e-4)
    if not extra:
        return
    t_emb = method.teacher(data).asnumpy()
    if "kd_emb_loss=l2" in extra:
        np.testing.assert_allclose(parts["l2"], 0.4 * ((emb - t_emb) ** 2).sum(1), rtol=2e-3, atol=1e-5)
    else:
        np.testing.assert_allclose(parts["angular_4"], 0.3 * _np_angular(emb, t_emb), rtol=2e-3, atol=1e-6)
