"""MTCNN on MXNet (issue 11): converted weights against an independent numpy forward of the
wheel's Keras layout, the wheel's box arithmetic, and real photographs.

Real photos come from the face_recognition 1.3.0 source archive, fetched by
``make test-assets`` into ./test-assets/face_recognition (or $SHRINKTEANET_TEST_ASSETS).
"""
import json
import math
import os
import pathlib

import numpy as np
import pytest

from shrinkteanet.core.constants import ARCFACE_TEMPLATE
from shrinkteanet.core.errors import InputError

ROOT = pathlib.Path(__file__).resolve().parent.parent
ASSETS = pathlib.Path(os.environ.get("SHRINKTEANET_TEST_ASSETS", ROOT / "test-assets")) / "face_recognition"
PHOTOS = {"obama.jpg": "obama", "obama2.jpg": "obama", "obama3.jpg": "obama", "biden.jpg": "biden"}


def photo(name):
    """RGB uint8 of a real test photo; a clear failure when the asset cache is absent."""
    import cv2

    path = ASSETS / name
    if not (ASSETS / ".complete").is_file() or not path.is_file():
        pytest.fail(f"test asset {path} is missing: run `make test-assets` (downloads the face_recognition "
                    "1.3.0 source archive from PyPI into ./test-assets)", pytrace=False)
    return np.ascontiguousarray(cv2.imread(str(path))[:, :, ::-1])


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    d = tmp_path_factory.mktemp("mtcnn-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SHRINKTEANET_CACHE", str(d))
        yield d


@pytest.fixture(scope="session")
def detector(cache):
    from shrinkteanet.data.mtcnn import MTCNN

    return MTCNN()


# ----------------------------------------------------------------- independent numpy forward
# Written from the wheel's network definitions (Keras, NHWC, HWIO kernels), float64.

def np_conv(x, k, b):
    kh, kw = k.shape[:2]
    n, h, w, _ = x.shape
    out = np.zeros((n, h - kh + 1, w - kw + 1, k.shape[3]))
    for i in range(kh):
        for j in range(kw):
            out += np.tensordot(x[:, i:i + h - kh + 1, j:j + w - kw + 1, :], k[i, j], axes=([3], [0]))
    return out + b


def np_prelu(x, alpha):
    return np.maximum(x, 0) + alpha.reshape(-1) * np.minimum(x, 0)


def np_maxpool(x, k, s, padding):
    """Keras MaxPooling2D: 'valid' floor((H-k)/s)+1; 'same' ceil(H/s) with the padding split
    pad_total//2 before, the rest after, padded cells never win."""
    n, h, w, c = x.shape

    def plan(size):
        if padding == "valid":
            return (size - k) // s + 1, 0, 0
        out = -(-size // s)
        total = max((out - 1) * s + k - size, 0)
        return out, total // 2, total - total // 2

    oh, ph0, ph1 = plan(h)
    ow, pw0, pw1 = plan(w)
    xp = np.full((n, h + ph0 + ph1, w + pw0 + pw1, c), -np.inf)
    xp[:, ph0:ph0 + h, pw0:pw0 + w] = x
    out = np.empty((n, oh, ow, c))
    for i in range(oh):
        for j in range(ow):
            out[:, i, j] = xp[:, i * s:i * s + k, j * s:j * s + k].max(axis=(1, 2))
    return out


def np_softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_flatten_permuted(x):
    # Keras Permute((2, 1, 3)) then Flatten: (N, H, W, C) -> (N, W, H, C) -> rows
    return x.transpose(0, 2, 1, 3).reshape(len(x), -1)


def np_forward(name, w, x):
    """Keras-layout forward of the wheel's P/R/O-Net on NHWC input."""
    w = [a.astype(np.float64) for a in w]
    if name == "pnet":
        x = np_maxpool(np_prelu(np_conv(x, w[0], w[1]), w[2]), 2, 2, "same")
        x = np_prelu(np_conv(x, w[3], w[4]), w[5])
        x = np_prelu(np_conv(x, w[6], w[7]), w[8])
        return [np_conv(x, w[9], w[10]), np_softmax(np_conv(x, w[11], w[12]))]
    if name == "rnet":
        x = np_maxpool(np_prelu(np_conv(x, w[0], w[1]), w[2]), 3, 2, "same")
        x = np_maxpool(np_prelu(np_conv(x, w[3], w[4]), w[5]), 3, 2, "valid")
        x = np_prelu(np_conv(x, w[6], w[7]), w[8])
        x = np_prelu(np_flatten_permuted(x) @ w[9] + w[10], w[11])
        return [x @ w[12] + w[13], np_softmax(x @ w[14] + w[15])]
    x = np_maxpool(np_prelu(np_conv(x, w[0], w[1]), w[2]), 3, 2, "same")
    x = np_maxpool(np_prelu(np_conv(x, w[3], w[4]), w[5]), 3, 2, "valid")
    x = np_maxpool(np_prelu(np_conv(x, w[6], w[7]), w[8]), 2, 2, "same")
    x = np_prelu(np_conv(x, w[9], w[10]), w[11])
    x = np_prelu(np_flatten_permuted(x) @ w[12] + w[13], w[14])
    return [x @ w[15] + w[16], x @ w[17] + w[18], np_softmax(x @ w[19] + w[20])]


def _crops(shape, seed):
    """Inputs in MTCNN's normalised range: a smooth pattern plus noise, some saturated."""
    rng = np.random.default_rng(seed)
    n, h, w = shape
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([np.sin(6 * xx + c) * np.cos(4 * yy - c) for c in range(3)], axis=-1)
    x = 0.6 * base[None] + 0.5 * rng.standard_normal((n, h, w, 3))
    return np.clip(x, -1, 1).astype(np.float32)


@pytest.mark.parametrize("name,shape", [("pnet", (2, 37, 29)), ("pnet", (1, 24, 30)),
                                        ("rnet", (5, 24, 24)), ("onet", (4, 48, 48))])
def test_converted_nets_reproduce_the_wheels_network(cache, name, shape):
    """Faithfulness: the hybridized MXNet net (as the detector runs it) equals a numpy forward
    of the same Keras weights to 1e-4; odd sizes exercise Keras' 'same' pooling."""
    import mxnet as mx

    from shrinkteanet.data.mtcnn import load_keras_weights, load_net

    x = _crops(shape, seed=len(name) + shape[1])
    ref = np_forward(name, load_keras_weights(name), x.astype(np.float64))
    net = load_net(name)
    out = net(mx.nd.array(x.transpose(0, 3, 1, 2)))
    out = [o.asnumpy() for o in out]
    if name == "pnet":
        out = [o.transpose(0, 2, 3, 1) for o in out]
    assert [o.shape for o in out] == [r.shape for r in ref]
    for o, r in zip(out, ref):
        assert np.abs(o - r).max() <= 1e-4


def test_weight_cache_is_keyed_verified_and_atomic(tmp_path, monkeypatch):
    import mxnet as mx

    from shrinkteanet.data import mtcnn as M

    monkeypatch.setenv("SHRINKTEANET_CACHE", str(tmp_path))
    path = M.converted_params("rnet")
    assert path == str(tmp_path / "mtcnn" / f"rnet-{M.SOURCE_SHA256['rnet'][:16]}.params")
    assert sorted(os.listdir(tmp_path / "mtcnn")) == [os.path.basename(path), os.path.basename(path) + ".sha256"]
    loaded = mx.nd.load(path)
    keras = M.load_keras_weights("rnet")
    # OIHW from HWIO, and the dense rows re-ordered from Keras' (w, h, c) to MXNet's (c, h, w)
    np.testing.assert_array_equal(loaded["conv3.weight"].asnumpy()[5, 7, 1, 0], keras[6][1, 0, 7, 5])
    c, hh, ww, unit = 17, 2, 0, 9
    np.testing.assert_array_equal(loaded["fc4.weight"].asnumpy()[unit, c * 9 + hh * 3 + ww],
                                  keras[9][ww * 3 * 64 + hh * 64 + c, unit])
    # a second call uses the cache (no unpickling)
    monkeypatch.setattr(M, "load_keras_weights", lambda name: pytest.fail("converted again"))
    assert M.converted_params("rnet") == path
    # a corrupted cache is detected by its checksum and rebuilt
    monkeypatch.undo()
    monkeypatch.setenv("SHRINKTEANET_CACHE", str(tmp_path))
    with open(path, "r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01\x02\x03")
    assert M.converted_params("rnet") == path
    np.testing.assert_array_equal(mx.nd.load(path)["fc4.weight"].asnumpy(), loaded["fc4.weight"].asnumpy())
    # a source file that is not the 1.0.0 wheel's is refused before unpickling
    monkeypatch.setitem(M.SOURCE_SHA256, "onet", "0" * 64)
    with pytest.raises(InputError, match="onet.lz4 has SHA-256"):
        M.converted_params("onet")


def tf_crop_reference(img, box, size):
    """Scalar transcription of TensorFlow's CropAndResize (bilinear, extrapolation 0) for
    a box given as [y1/H, x1/W, y2/H, x2/W]."""
    h, w, c = img.shape
    y1, x1, y2, x2 = box[1] / h, box[0] / w, box[3] / h, box[2] / w
    out = np.zeros((size, size, c))
    for i in range(size):
        iy = y1 * (h - 1) + i * (y2 - y1) * (h - 1) / (size - 1)
        if iy < 0 or iy > h - 1:
            continue
        t, btm = math.floor(iy), math.ceil(iy)
        ly = iy - t
        for j in range(size):
            ix = x1 * (w - 1) + j * (x2 - x1) * (w - 1) / (size - 1)
            if ix < 0 or ix > w - 1:
                continue
            lft, rgt = math.floor(ix), math.ceil(ix)
            lx = ix - lft
            top = img[t, lft] + (img[t, rgt] - img[t, lft]) * lx
            bot = img[btm, lft] + (img[btm, rgt] - img[btm, lft]) * lx
            out[i, j] = top + (bot - top) * ly
    return out


def test_crop_and_resize_follows_tensorflow():
    from shrinkteanet.data.mtcnn import crop_and_resize

    rng = np.random.default_rng(3)
    img = rng.uniform(-1, 1, (31, 43, 3)).astype(np.float32)
    boxes = np.array([[3.2, 4.7, 20.9, 22.4],     # inside
                      [-6.0, -3.5, 14.0, 16.5],   # over the top-left corner: zeros there
                      [30.0, 20.0, 52.5, 42.5],   # over the bottom-right corner
                      [10.0, 10.0, 10.0, 10.0]])  # degenerate
    got = crop_and_resize(img, boxes, 24)
    assert got.shape == (4, 24, 24, 3) and got.dtype == np.float32
    for b, g in zip(boxes, got):
        np.testing.assert_allclose(g, tf_crop_reference(img.astype(np.float64), b, 24), atol=2e-5)
    assert np.all(got[1, 0] == 0) and np.any(got[1, -1] != 0)


def test_nms_is_the_wheels_all_pairs_rule():
    """A box is dropped when ANY higher-scored box overlaps it, even one itself dropped:
    B overlaps A, C overlaps only B -> only A survives (greedy NMS would keep C)."""
    from shrinkteanet.data.mtcnn import iou_matrix, nms_keep

    a = [0, 0, 10, 10]
    b = [4, 0, 14, 10]     # IoU(A, B) = 60 / 140
    c = [8, 0, 18, 10]     # IoU(A, C) = 20 / 180, IoU(B, C) = 60 / 140
    d = [100, 100, 110, 110]
    boxes = np.array([a, b, c, d], dtype=float)
    ov = iou_matrix(boxes, boxes)
    assert ov[0, 1] == pytest.approx(60 / 140) and ov[0, 2] == pytest.approx(20 / 180)
    assert list(nms_keep(boxes, 0.3)) == [0, 3]
    assert list(nms_keep(boxes, 0.5)) == [0, 1, 2, 3]
    # 'min' divides by the smaller area: a box inside another is always suppressed
    inner = np.array([[0, 0, 20, 20], [2, 2, 6, 6]], dtype=float)
    assert iou_matrix(inner, inner, "min")[0, 1] == pytest.approx(1.0)
    assert list(nms_keep(inner, 0.7, "min")) == [0] and list(nms_keep(inner, 0.7, "union")) == [0, 1]
    # blockwise evaluation gives the same answer as one block
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 50, (300, 2))
    many = np.concatenate([xy, xy + rng.uniform(5, 20, (300, 2))], axis=1)
    assert np.array_equal(nms_keep(many, 0.4, block=37), nms_keep(many, 0.4, block=1000))


def test_scale_pyramid_and_packing():
    from shrinkteanet.data.mtcnn import _pnet_cells, pack_levels, scale_pyramid

    s = scale_pyramid(640, 480)
    # round(-(log(480/12)/log(0.709) + 1)) = round(9.73) = 10 levels from 12/20
    assert len(s) == 10
    np.testing.assert_allclose(s, 0.6 * 0.709 ** np.arange(10))
    assert 480 * s[-1] >= 12 > 480 * s[-1] * 0.709
    assert len(scale_pyramid(11, 200)) == 0
    sizes = [(int(480 * v), int(640 * v)) for v in s]
    offsets, (ch, cw) = pack_levels(sizes)
    rects = [(y, x, y + h, x + w) for (y, x), (h, w) in zip(offsets, sizes)]
    for i, (y0, x0, y1, x1) in enumerate(rects):
        assert y0 % 2 == 0 and x0 % 2 == 0 and y1 <= ch and x1 <= cw
        for (u0, v0, u1, v1) in rects[i + 1:]:  # at least one pixel of gutter between levels
            assert y1 < u0 or u1 < y0 or x1 < v0 or v1 < x0
    assert ch * cw < 1.5 * sum(h * w for h, w in sizes)
    assert _pnet_cells(12, 12) == (1, 1) and _pnet_cells(37, 29) == (14, 10)


def test_mosaic_pnet_equals_per_level_pnet(detector):
    """One P-Net run over the packed pyramid gives each level's own P-Net map (cells whose
    window stays inside the level)."""
    from shrinkteanet.data.mtcnn import normalise

    img = (np.clip(_crops((1, 157, 211), 9)[0] * 127.5 + 127.5, 0, 255)).astype(np.uint8)
    norm = normalise(img)
    s = [0.6, 0.6 * 0.709, 0.6 * 0.709 ** 2, 0.6 * 0.709 ** 3]
    levels = [(v, (int(157 * v), int(211 * v))) for v in s]
    default = detector.mosaic
    try:
        detector.mosaic = True
        packed = detector._pnet_maps(norm, levels)
        detector.mosaic = False
        single = detector._pnet_maps(norm, levels)
    finally:
        detector.mosaic = default
    for (_, (h, w)), (r1, p1), (r2, p2) in zip(levels, packed, single):
        assert p1.shape == p2.shape and r1.shape == r2.shape
        hh, ww = (h - 12) // 2 + 1, (w - 12) // 2 + 1  # windows fully inside the level
        np.testing.assert_allclose(p1[:hh, :ww], p2[:hh, :ww], atol=1e-5)
        np.testing.assert_allclose(r1[:, :hh, :ww], r2[:, :hh, :ww], atol=1e-5)


def _aligned_landmark_offsets(landmarks):
    """Template minus the landmarks mapped by their least-squares similarity (the transform
    ``norm_crop`` applies), in pixels of the 112x112 crop."""
    from shrinkteanet.data.align import estimate_similarity

    m = estimate_similarity(landmarks, ARCFACE_TEMPLATE)
    return landmarks @ m[:, :2].T + m[:, 2] - ARCFACE_TEMPLATE


@pytest.fixture(scope="session")
def real_detections(detector):
    return {name: detector.detect(photo(name)) for name in sorted(PHOTOS)}


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_real_photo_one_face_aligned_to_template(detector, real_detections, name):
    from shrinkteanet.data.mtcnn import detect_and_align

    boxes, scores, landmarks = real_detections[name]
    assert len(boxes) == 1, f"{name}: {len(boxes)} faces"
    assert scores[0] > 0.9
    x1, y1, x2, y2 = boxes[0]
    lm = landmarks[0].astype(np.float64)
    assert np.all((lm[:, 0] > x1) & (lm[:, 0] < x2) & (lm[:, 1] > y1) & (lm[:, 1] < y2))
    assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]          # image-left eye / mouth corner first
    assert lm[[0, 1], 1].max() < lm[2, 1] < lm[[3, 4], 1].min()  # eyes above nose above mouth
    off = _aligned_landmark_offsets(lm)
    # per photo: aligned landmark coordinates within 3 px of the template on average, none far off
    assert np.abs(off).mean() <= 3.0
    assert np.linalg.norm(off, axis=1).max() <= 8.0
    aligned, info = detect_and_align(photo(name), detector=detector)
    assert aligned.shape == (112, 112, 3) and aligned.dtype == np.uint8
    assert info["status"] == "ok" and info["num_faces"] == 1
    np.testing.assert_allclose(info["landmarks"], lm, atol=1e-3)


def test_real_photos_mean_landmark_distance_to_template(real_detections):
    """Over the four photos, aligned landmarks lie within 3 px (Euclidean) of the template on
    average.  (Per photo the residual is a property of the face: obama.jpg's broad smile puts
    its mouth corners ~7 px from the template's, with the landmarks on the mouth corners.)"""
    dist = [np.linalg.norm(_aligned_landmark_offsets(lm[0].astype(np.float64)), axis=1)
            for _, _, lm in real_detections.values()]
    assert np.mean(dist) <= 3.0


def test_faithful_on_real_face_crops(detector):
    """Faithfulness where it matters: R-Net / O-Net on the crops the cascade builds around a
    real face (probabilities near 1) equal the numpy forward of the wheel's weights."""
    import mxnet as mx

    from shrinkteanet.data.mtcnn import crop_and_resize, load_keras_weights, normalise

    norm = normalise(photo("obama.jpg"))
    rows = detector.stage2(norm, detector.stage1(norm))
    assert 1 <= len(rows) <= 8
    for name, net, size in (("rnet", detector.rnet, 24), ("onet", detector.onet, 48)):
        x = crop_and_resize(norm, rows[:, :4], size)
        ref = np_forward(name, load_keras_weights(name), x.astype(np.float64))
        out = [o.asnumpy() for o in net(mx.nd.array(x.transpose(0, 3, 1, 2)))]
        assert ref[-1][:, 1].max() > 0.9
        for o, r in zip(out, ref):
            assert np.abs(o - r).max() <= 1e-4


def test_detect_and_align_selection_and_failures(detector):
    import cv2

    from shrinkteanet.data.mtcnn import detect_and_align

    blank = np.full((240, 320, 3), 128, np.uint8)
    aligned, info = detect_and_align(blank, detector=detector)
    assert aligned is None and info["status"] == "no face" and info["num_faces"] == 0
    # two people: Obama small near the centre, Biden large at the right edge
    a = cv2.resize(photo("obama2.jpg"), (180, 345))
    b = cv2.resize(photo("biden.jpg"), (330, 750))[:575]
    both = np.full((575, 1030, 3), 128, np.uint8)
    both[115:460, 460:640] = a
    both[:, 700:] = b
    boxes, _, _ = detector.detect(both)
    assert len(boxes) == 2
    aligned, info = detect_and_align(both, detector=detector, select="single")
    assert aligned is None and info["status"] == "several faces" and info["num_faces"] == 2
    _, largest = detect_and_align(both, detector=detector, select="largest")
    _, central = detect_and_align(both, detector=detector, select="central")
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    assert largest["bbox"] == pytest.approx(boxes[np.argmax(areas)].tolist())
    assert largest["bbox"][0] > 700 and 460 < central["bbox"][0] < 640
    with pytest.raises(InputError, match="selection"):
        detect_and_align(both, detector=detector, select="biggest")
    with pytest.raises(InputError, match="HxWx3"):
        detector.detect(np.zeros((10, 10, 5), np.uint8))


def test_cli_align_raw_photos(cache, tmp_path, capsys):
    """`data align --detector mtcnn DIR --out OUT --lst OUT.lst`: aligned JPEGs, a face2rec2
    list that InsightFace's parse_lst_line reads, and a per-image failure report."""
    import cv2

    from shrinkteanet.cli import main
    from shrinkteanet.data.lst import read_lst

    src = tmp_path / "photos"
    for ident, names in {"obama": ["obama.jpg", "obama2.jpg"], "biden": ["biden.jpg"]}.items():
        (src / ident).mkdir(parents=True)
        for n in names:
            img = photo(n)
            scale = 480.0 / img.shape[0]
            small = cv2.resize(img, (int(img.shape[1] * scale), 480), interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(src / ident / n), small[:, :, ::-1])
    (src / "biden" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    cv2.imwrite(str(src / "obama" / "wall.png"), np.full((200, 300, 3), 90, np.uint8))
    out, lst, js = tmp_path / "aligned", tmp_path / "out.lst", tmp_path / "report.json"
    rc = main(["data", "align", "--detector", "mtcnn", str(src), "--out", str(out), "--lst", str(lst),
               "--json", str(js)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "aligned 3 of 5 photos" in text and "broken.jpg: unreadable file" in text and "wall.png: no face" in text

    lines = lst.read_text().splitlines()
    assert len(lines) == 3
    labels = {}
    for line in lines:
        vec = line.split("\t")
        assert len(vec) == 17 and vec[0] == "1"
        bbox = [int(v) for v in vec[3:7]]  # InsightFace parses bbox fields with int()
        lm = np.array([float(v) for v in vec[7:17]]).reshape(2, 5).T
        assert bbox[0] < lm[:, 0].min() and lm[:, 0].max() < bbox[2] and bbox[1] < lm[:, 1].min()
        assert np.abs(lm - ARCFACE_TEMPLATE).mean() <= 3.0  # landmarks of the aligned image
        img = cv2.imread(str(tmp_path / vec[1]))
        assert img is not None and img.shape == (112, 112, 3)
        labels[os.path.basename(vec[1])] = int(vec[2])
    assert labels == {"biden.jpg": 0, "obama.jpg": 1, "obama2.jpg": 1}  # sorted identity folders
    assert len(read_lst(str(lst))) == 3

    report = (out / "failures.tsv").read_text().splitlines()
    assert sorted(r.split("\t")[1] for r in report) == ["no face", "unreadable file"]
    res = json.loads(js.read_text())
    assert res["num_images"] == 5 and res["num_aligned"] == 3 and res["num_failed"] == 2
    assert res["failures_by_reason"] == {"unreadable file": 1, "no face": 1, "several faces": 0}
    ok = [r for r in res["images"] if r["status"] == "ok"]
    assert all(len(r["landmarks"]) == 5 and len(r["bbox"]) == 4 for r in ok)

    # the raw-photo branch needs its source; the landmark branch still needs --lst
    assert main(["data", "align", "--detector", "mtcnn", "--out", str(out)]) == 2
    assert main(["data", "align", "--out", str(out)]) == 2
    assert "SRC_DIR_OR_LST" in capsys.readouterr().err
