"""Teacher-embedding cache: layout, values, resume, and equal losses with the live teacher."""
import json
import os
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest

from shrinkteanet.study.tiny import train_overrides, train_tiny_teacher, write_tiny_set
from shrinkteanet.training import config
from shrinkteanet.training import train
from shrinkteanet.core.errors import InputError
from shrinkteanet.training.teacher_cache import TeacherCache, build_cache


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    data = write_tiny_set(root / "set", with_bin=False)
    teacher = train_tiny_teacher(data, root / "teacher")
    cache = root / "cache"
    r = subprocess.run([sys.executable, "-m", "shrinkteanet", "cache-teacher", "--model", teacher, "--data", str(data),
                        "--out", str(cache), "--json", str(root / "cache.json")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    return data, teacher, cache, root


def test_cache_layout_and_values(tiny):
    from shrinkteanet.data.recordio import FaceRecordDataset
    from shrinkteanet.model.checkpoint import load_checkpoint

    data, teacher, cache, root = tiny
    meta = json.loads((cache / "meta.json").read_text())
    assert meta["num_images"] == 64 and meta["done"] == 64 and meta["emb_size"] == 32 and meta["dtype"] == "float16"
    assert os.path.getsize(cache / "emb.f16") == 64 * 2 * 32 * 2
    assert json.loads((root / "cache.json").read_text())["done"] == 64
    c = TeacherCache(cache)
    ds = FaceRecordDataset(str(data))
    keys = np.array([3, 40, 1, 64])
    imgs = np.stack([ds.read_key(int(k))[0] for k in keys]).astype("float32").transpose(0, 3, 1, 2)
    # independent reference: the teacher's symbol bound with mx.mod.Module in inference mode
    prefix, epoch = teacher.split(",")
    sym, arg, aux = load_checkpoint(prefix, int(epoch))
    mod = mx.mod.Module(sym, label_names=None)
    mod.bind(data_shapes=[("data", imgs.shape)], for_training=False)
    mod.set_params(arg, aux)
    ref = []
    for x in (imgs, imgs[:, :, :, ::-1]):
        mod.forward(mx.io.DataBatch([mx.nd.array(x)]), is_train=False)
        ref.append(mod.get_outputs()[0].asnumpy())
    flipped = np.array([False, True, True, False])
    got = c.lookup(keys, flipped)
    want = np.where(flipped[:, None], ref[1], ref[0])
    assert got.dtype == np.float32 and got.shape == (4, 32)
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3 * np.abs(want).max())
    assert not np.allclose(ref[0], ref[1], atol=1e-3)  # the mirror row is really another embedding
    with pytest.raises(InputError, match="record key 999"):
        c.lookup([999], [False])


def test_cache_resumes_and_refuses_other_models(tiny, tmp_path):
    data, teacher, cache, _ = tiny
    part = tmp_path / "part"
    build_cache(teacher, str(data), str(part), chunk=16, progress=False)
    full = np.fromfile(part / "emb.f16", dtype=np.float16)
    # pretend the run died after the first chunk: rows 16.. lost
    meta = json.loads((part / "meta.json").read_text())
    meta["done"] = 16
    (part / "meta.json").write_text(json.dumps(meta))
    arr = np.memmap(part / "emb.f16", dtype=np.float16, mode="r+", shape=(64, 2, 32))
    arr[16:] = 0
    arr.flush()
    del arr
    with pytest.raises(InputError, match="incomplete"):
        TeacherCache(part)
    assert build_cache(teacher, str(data), str(part), chunk=16, progress=False)["done"] == 64
    assert np.array_equal(np.fromfile(part / "emb.f16", dtype=np.float16), full)
    assert np.array_equal(full, np.fromfile(cache / "emb.f16", dtype=np.float16))
    # a cache made by another teacher is never completed or mixed with this one
    meta = json.loads((part / "meta.json").read_text())
    meta["model"], meta["done"] = "/elsewhere/model,1", 16
    (part / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="another model"):
        build_cache(teacher, str(data), str(part), progress=False)
    assert json.loads((part / "meta.json").read_text())["done"] == 16


def test_cache_gives_the_live_teachers_losses(tiny):
    """One ShrinkTeaNet batch: every loss part with the cached targets equals the part with the
    full teacher forward (to float16 rounding of the cached embedding)."""
    from shrinkteanet.data.loader import FaceLoader
    from shrinkteanet.methods.base.assembler import build_method
    from shrinkteanet.training.networks import build_networks

    data, teacher, cache, _ = tiny
    cfg = config.config_by_name("mfnr_stn", train_overrides(data, None, f"teacher={teacher}", "image_size=32",
                                                      "num_classes=8"))
    mx.random.seed(0)
    student, t, fc7 = build_networks(cfg)
    method = build_method(cfg, student, t, num_classes=8, teacher_fc7=fc7)
    batch = next(FaceLoader(str(data), 16, seed=3, workers=0).epoch(0))
    assert batch.flipped.any() and not batch.flipped.all()
    x, y = mx.nd.array(batch.data), mx.nd.array(batch.label)
    live = method(x, y)
    cached = method(x, y, mx.nd.array(TeacherCache(cache).lookup(batch.index, batch.flipped)))
    assert list(live) == ["softmax", "angular_1", "angular_2", "angular_3", "angular_4"] == list(cached)
    for k in live:
        a, b = live[k].asnumpy(), cached[k].asnumpy()
        np.testing.assert_allclose(b, a, rtol=5e-3, atol=1e-4, err_msg=k)
    assert live["angular_4"].asnumpy().mean() > 1e-3  # a real, non-zero distillation term was compared


def test_training_with_the_cache_matches_the_live_teacher(tiny):
    data, teacher, cache, root = tiny
    runs = {}
    for name, extra in (("live", ()), ("cached", (f"teacher_cache={cache}",))):
        cfg = config.config_by_name("mfnr_stn", train_overrides(data, None, f"teacher={teacher}", "max_batches=4",
                                                          "lr_schedule=constant", *extra))
        seen = []
        train.train(cfg, callbacks=[lambda info: seen.append(info["losses"])])
        runs[name] = seen
    for a, b in zip(runs["live"], runs["cached"]):
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=2e-2, abs=1e-3), k


@pytest.mark.parametrize("name", ["mfn_adadistill", "mfn_ekd", "mfn_stn_final", "mfn_l2_final"])
def test_embedding_only_methods_train_from_the_cache_without_a_teacher(tiny, name, monkeypatch):
    """AdaDistill, EKD and the final-stage ShrinkTeaNet / L2 read nothing of the teacher but its
    embedding: with ``teacher_cache`` and no ``teacher`` no checkpoint is loaded, and four steps give
    the live teacher's loss values (to the float16 rounding of the cache)."""
    from shrinkteanet.training import networks

    data, teacher, cache, _ = tiny
    runs, cosines = {}, {}
    for how, extra in (("live", (f"teacher={teacher}",)), ("cached", (f"teacher_cache={cache}",))):
        if how == "cached":
            monkeypatch.setattr(networks, "load_teacher", lambda *a, **k: pytest.fail("the teacher was loaded"))
        cfg = config.config_by_name(name, train_overrides(data, None, "max_batches=4", "lr_schedule=constant", *extra))
        seen = []
        cosines[how] = train.train(cfg, callbacks=[lambda info: seen.append(dict(info["losses"]))])["stage_cosines"]
        runs[how] = seen
    # the end-of-training cosine to the teacher (the study's column) reads the cache's embeddings
    assert set(cosines["cached"]) == set(cosines["live"]) == {"4"}
    for k, v in cosines["live"].items():
        assert cosines["cached"][k] == pytest.approx(v, abs=5e-3), k
    assert len(runs["live"]) == len(runs["cached"]) == 4
    for a, b in zip(runs["live"], runs["cached"]):
        assert set(a) == set(b) and len(a) >= 1
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=2e-2, abs=1e-3), k
    assert any(v > 1e-3 for k, v in runs["live"][0].items() if k != "softmax")  # a live distillation term


def test_a_method_that_needs_more_than_the_embedding_still_needs_the_teacher(tiny):
    data, _, cache, _ = tiny
    cfg = config.config_by_name("mfn_stn", train_overrides(data, None, "max_batches=1", f"teacher_cache={cache}"))
    with pytest.raises(InputError, match="teacher cache alone cannot serve it"):
        train.train(cfg)
