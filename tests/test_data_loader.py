"""FaceLoader: determinism across worker counts and resume, sharding, pixels,
augmentations against independent numpy/OpenCV computations, bad records."""
import logging
import os

import cv2
import mxnet as mx
import numpy as np
import pytest
import simplejpeg

from shrinkteanet.data import FaceRecordDataset
from shrinkteanet.data.loader import FaceLoader
from shrinkteanet.data.loader import _color_jitter
from shrinkteanet.data.recordio import write_rec_set
from shrinkteanet.core.errors import InputError


def face(rng, size=112):
    small = rng.randint(0, 256, (7, 7, 3)).astype(np.uint8)
    img = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
    return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def rec_set(tmp_path_factory):
    d = tmp_path_factory.mktemp("loader_set")
    rng = np.random.RandomState(1)
    write_rec_set(d, [(face(rng), i // 6) for i in range(50)], workers=1, progress=False)
    return str(d)


@pytest.fixture(scope="session")
def decoded(rec_set):
    ds = FaceRecordDataset(rec_set)
    return {int(k): ds.read_key(int(k)) for k in ds.record_ids}


def collect(loader, epoch, start=0):
    return [tuple(np.array(x) for x in b) for b in loader.epoch(epoch, start)]


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            np.testing.assert_array_equal(u, v)


def test_deterministic_across_workers_and_resume(rec_set):
    loaders = [FaceLoader(rec_set, 8, seed=3, workers=w) for w in (0, 1, 2)]
    try:
        runs = [collect(l, 2) for l in loaders]
        assert len(runs[0]) == len(loaders[0]) == 50 // 8
        assert_same(runs[0], runs[1])
        assert_same(runs[0], runs[2])
        # the same epoch again (persistent workers) and a resume in the middle
        assert_same(collect(loaders[2], 2), runs[0])
        assert_same(collect(loaders[2], 2, start=4), runs[0][4:])
        assert_same(collect(loaders[0], 2, start=4), runs[0][4:])
        # closing a generator early leaves nothing in flight for the next epoch
        gen = loaders[2].epoch(5)
        next(gen)
        gen.close()
        assert_same(collect(loaders[2], 2), runs[0])
        # ... and so does a new epoch started while an old generator is still open
        stale = loaders[2].epoch(6)
        next(stale)
        assert_same(collect(loaders[2], 2), runs[0])
        del stale
        other = collect(loaders[0], 3)
        assert not np.array_equal(np.concatenate([b[2] for b in other]), np.concatenate([b[2] for b in runs[0]]))
        # batches are lent zero-copy, yet stay valid when a consumer keeps them all:
        # a slot someone still references is never refilled (copies once spares run out)
        kept = list(loaders[2].epoch(2))
        for b, ref in zip(kept, runs[0]):
            np.testing.assert_array_equal(b.data, ref[0])
        owns = [b.data.base is None for b in kept]
        assert owns[:2] == [False, False] and any(owns)  # lent first, copies once spares ran out
        views = [b.data[1:3] for b in kept]  # views of views keep their slot too
        del kept
        assert_same(collect(loaders[2], 2), runs[0])
        for v, ref in zip(views, runs[0]):
            np.testing.assert_array_equal(v, ref[0][1:3])
        del views
        always = FaceLoader(rec_set, 8, seed=3, workers=2, copy=True)
        assert all(b.data.base is None for b in always.epoch(2))
        always.close()
    finally:
        for l in loaders:
            l.close()


def test_epoch_order_is_a_pure_function_of_seed_and_epoch(rec_set):
    a = FaceLoader(rec_set, 8, seed=7, workers=0)
    b = FaceLoader(rec_set, 8, seed=7, workers=0)
    keys = a.epoch_keys(4)
    np.testing.assert_array_equal(keys, b.epoch_keys(4))
    np.testing.assert_array_equal(np.sort(keys), np.arange(1, 51))
    assert not np.array_equal(keys, a.epoch_keys(5))
    assert not np.array_equal(keys, FaceLoader(rec_set, 8, seed=8, workers=0).epoch_keys(4))
    idx = np.concatenate([bt.index for bt in a.epoch(4)])
    np.testing.assert_array_equal(idx, keys[: len(idx)])  # drop_last: 6 batches of 8
    assert len(FaceLoader(rec_set, 8, workers=0, drop_last=False)) == 7


def test_shards_are_disjoint_and_equal(rec_set):
    parts = [FaceLoader(rec_set, 4, seed=1, workers=0, part_index=i, num_parts=3) for i in range(3)]
    keys = [p.epoch_keys(0) for p in parts]
    assert [len(k) for k in keys] == [16, 16, 16] and [len(p) for p in parts] == [4, 4, 4]
    allk = np.concatenate(keys)
    assert len(set(allk.tolist())) == 48 and set(allk.tolist()) <= set(range(1, 51))
    with pytest.raises(InputError):
        FaceLoader(rec_set, 4, part_index=3, num_parts=3)


def test_pixels_labels_and_mirror(rec_set, decoded):
    loader = FaceLoader(rec_set, 10, seed=0, workers=0, mirror=True)
    nflip = 0
    for b in loader.epoch(0):
        assert b.data.dtype == np.float32 and b.data.shape == (10, 3, 112, 112)
        assert b.label.dtype == np.int64 and b.index.dtype == np.int64
        for x, lab, key, fl in zip(b.data, b.label, b.index, b.flipped):
            img, ref_label = decoded[int(key)]
            assert lab == ref_label == (key - 1) // 6
            ref = img[:, ::-1] if fl else img
            np.testing.assert_array_equal(x, ref.transpose(2, 0, 1).astype(np.float32))
            nflip += bool(fl)
    assert 10 < nflip < 40  # about half of 50
    plain = FaceLoader(rec_set, 10, seed=0, workers=0, mirror=False)
    assert not any(b.flipped.any() for b in plain.epoch(0))


def test_color_jitter_matches_mxnet_formulas():
    rng = np.random.RandomState(0)
    img = rng.randint(0, 256, (6, 5, 3)).astype(np.uint8)
    alpha = np.array([1.1, 0.9, 1.05], np.float32)
    got = _color_jitter(img, alpha, [2, 0, 1])
    # mx.image's Saturation, then Brightness, then Contrast jitter on NDArrays
    x = mx.nd.array(img.astype(np.float32))
    coef = mx.nd.array([[[0.299, 0.587, 0.114]]])
    gray = mx.nd.sum(x * coef, axis=2, keepdims=True) * (1 - 1.05)
    x = x * 1.05 + gray
    x = x * 1.1
    gray = (3.0 * (1.0 - 0.9) / x.size) * mx.nd.sum(x * coef)
    x = x * 0.9 + gray
    np.testing.assert_allclose(got, np.clip(x.asnumpy(), 0, 255), rtol=1e-5, atol=1e-3)


def test_jitter_and_lowres_in_batches(rec_set, decoded):
    jit = FaceLoader(rec_set, 10, seed=0, workers=0, mirror=False, color_jitter=0.125)
    b = next(jit.epoch(0))
    ref = np.stack([decoded[int(k)][0].transpose(2, 0, 1) for k in b.index]).astype(np.float32)
    assert b.data.min() >= 0 and b.data.max() <= 255
    assert np.abs(b.data - ref).mean() > 0.5  # changed ...
    assert np.abs(b.data.mean((1, 2, 3)) / ref.mean((1, 2, 3)) - 1).max() < 0.35  # ... within +-12.5 % per op
    low = FaceLoader(rec_set, 10, seed=0, workers=0, mirror=False, lowres_size=28)
    b = next(low.epoch(0))
    for x, k in zip(b.data, b.index):
        img = decoded[int(k)][0]
        small = cv2.resize(img, (28, 28), interpolation=cv2.INTER_AREA)
        ref = cv2.resize(small, (112, 112), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_array_equal(x, ref.transpose(2, 0, 1).astype(np.float32))
    half = FaceLoader(rec_set, 50, seed=0, workers=0, drop_last=False, mirror=False, lowres_size=(20, 40), lowres_prob=0.5)
    b = next(half.epoch(0))
    same = [np.array_equal(x, decoded[int(k)][0].transpose(2, 0, 1)) for x, k in zip(b.data, b.index)]
    assert 10 < sum(same) < 40


def _copy_set_with(tmp_path, rec_set, replace):
    """Copy of the set with some records' JPEG replaced (via mx.recordio)."""
    src = mx.recordio.MXIndexedRecordIO(os.path.join(rec_set, "train.idx"), os.path.join(rec_set, "train.rec"), "r")
    dst = mx.recordio.MXIndexedRecordIO(str(tmp_path / "train.idx"), str(tmp_path / "train.rec"), "w")
    for k in sorted(src.keys):
        s = src.read_idx(k)
        if k in replace:
            h, _ = mx.recordio.unpack(s)
            s = mx.recordio.pack(h, replace[k])
        dst.write_idx(k, s)
    dst.close()
    with open(os.path.join(rec_set, "property")) as f, open(tmp_path / "property", "w") as g:
        g.write(f.read())
    return str(tmp_path)


def test_corrupt_record_is_replaced_and_counted(tmp_path, rec_set, caplog):
    d = _copy_set_with(tmp_path, rec_set, {7: b"\xff\xd8\xff\xe0 not a jpeg", 30: b""})
    ref = FaceLoader(rec_set, 10, seed=2, workers=0)
    loader = FaceLoader(d, 10, seed=2, workers=2)
    try:
        with caplog.at_level(logging.WARNING, logger="shrinkteanet"):
            got = collect(loader, 0)
        want = collect(ref, 0)
        assert loader.num_corrupt == 2
        assert "record 7" in caplog.text and "record 30" in caplog.text
        for (gd, gl, gi, gf), (wd, wl, wi, wf) in zip(got, want):
            assert gd.shape == wd.shape
            bad = np.isin(wi, [7, 30])
            np.testing.assert_array_equal(gd[~bad], wd[~bad])
            assert not np.isin(gi, [7, 30]).any()
            for i in np.flatnonzero(bad):  # the substitute is another image of the batch, with its key
                j = np.flatnonzero(wi == gi[i])[0]
                np.testing.assert_array_equal(gd[i], wd[j])
                assert gl[i] == wl[j]
    finally:
        loader.close()


def test_wrong_size_record_fails_naming_it(tmp_path, rec_set):
    rng = np.random.RandomState(3)
    d = _copy_set_with(tmp_path, rec_set, {12: simplejpeg.encode_jpeg(face(rng, 100), colorspace="RGB")})
    loader = FaceLoader(d, 25, seed=0, workers=2)
    try:
        with pytest.raises(InputError, match="record 12 is 100x100"):
            collect(loader, 0)
        # the loader stays usable after the failure
        with pytest.raises(InputError, match="record 12"):
            collect(loader, 1)
    finally:
        loader.close()
