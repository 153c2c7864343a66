"""Tiny training set-up shared by the training-engine tests: a 32x32 RecordIO set whose
classes are learnable colour layouts, a verification .bin, and a tiny teacher."""
import numpy as np

TINY_STUDENT = "net_opts={'blocks':[1,1,1,1],'filters':[8,8,16,16,32]}"
TINY_TEACHER = "teacher_net_opts={'units':[1,1,1,1],'filters':[8,8,16,16,32]}"


def make_images(ids=8, per=8, size=32, seed=0):
    rng = np.random.RandomState(seed)
    protos = rng.randint(0, 256, size=(ids, 4, 4, 3)).astype(np.float32)
    out = []
    for c in range(ids):
        base = np.kron(protos[c], np.ones((size // 4, size // 4, 1)))
        for _ in range(per):
            out.append((np.clip(base + rng.randn(size, size, 3) * 25, 0, 255).astype(np.uint8), c))
    return out


def make_set(path, ids=8, per=8, size=32, with_bin=True):
    from shrinkteanet.data.binfile import write_bin
    from shrinkteanet.data.recordio import write_rec_set

    samples = make_images(ids, per, size)
    write_rec_set(path, samples, image_size=(size, size), workers=1, progress=False)
    if with_bin:
        # 20 pairs alternating same / different identity, from a second draw of the same classes
        pool = make_images(ids, 4, size, seed=1)
        jpegs, issame = [], []
        for k in range(20):
            a = pool[(k * 3) % len(pool)]
            same = k % 2 == 0
            cands = [s for s in pool if (s[1] == a[1]) == same and s is not a]
            b = cands[k % len(cands)]
            jpegs += [a[0], b[0]]
            issame.append(same)
        write_bin(str(path / "lfw.bin"), jpegs, issame)
    return path


def overrides(data, out=None, *extra):
    items = [f"data_dir={data}", TINY_STUDENT, "teacher_network=r18", TINY_TEACHER, "emb_size=32", "batch_size=16",
             "lr=0.1", "loss=softmax", "margin_s=16", "workers=0", "verbose=0", "frequent=1000", "num_classes=0"]
    if out:
        items.append(f"out={out}")
    return items + list(extra)


def train_teacher(data, out):
    """A tiny r18 teacher (checkpoint OUT/model, last number returned)."""
    from shrinkteanet.training import config
    from shrinkteanet.training import train

    cfg = config.config_by_name("teacher_r90", overrides(data, f"{out}/model", "network=r18",
                                                          TINY_TEACHER.replace("teacher_net_opts", "net_opts"),
                                                          "lr_schedule=constant", "max_batches=24"))
    summary = train.train(cfg)
    return f"{out}/model,{summary['checkpoint']}"
