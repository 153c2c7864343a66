"""Alignment (Umeyama similarity, norm_crop, fallbacks), .lst parsing and `data align`."""
import json
import logging
import os

import cv2
import numpy as np
import pytest

from shrinkteanet.cli import main as cli_main
from shrinkteanet.core.constants import ARCFACE_TEMPLATE
from shrinkteanet.data.align import align_face, crop_fallback, estimate_similarity, norm_crop, template
from shrinkteanet.data.lst import LstItem, parse_lst_line, read_lst, write_lst
from shrinkteanet.core.errors import InputError


def similarity(angle, scale, tx, ty):
    c, s = np.cos(angle) * scale, np.sin(angle) * scale
    return np.array([[c, -s, tx], [s, c, ty]])


def apply(m, pts):
    return pts @ m[:, :2].T + m[:, 2]


def test_estimate_similarity_recovers_exact_transform():
    m = similarity(0.4, 1.7, 12.0, -5.0)
    src = np.random.RandomState(0).rand(5, 2) * 100
    np.testing.assert_allclose(estimate_similarity(src, apply(m, src)), m, atol=1e-9)


def test_estimate_similarity_is_the_least_squares_optimum():
    """With noise, compare against the linear least-squares fit of (a, b, tx, ty) in
    [[a, -b, tx], [b, a, ty]] - the same problem solved independently."""
    rng = np.random.RandomState(1)
    src = rng.rand(5, 2) * 150
    dst = apply(similarity(-0.7, 0.6, 40, 10), src) + rng.normal(0, 2.0, (5, 2))
    a_rows = np.zeros((10, 4))
    a_rows[0::2] = np.c_[src[:, 0], -src[:, 1], np.ones(5), np.zeros(5)]
    a_rows[1::2] = np.c_[src[:, 1], src[:, 0], np.zeros(5), np.ones(5)]
    a, b, tx, ty = np.linalg.lstsq(a_rows, dst.ravel(), rcond=None)[0]
    np.testing.assert_allclose(estimate_similarity(src, dst), [[a, -b, tx], [b, a, ty]], atol=1e-8)
    with pytest.raises(InputError):
        estimate_similarity(np.ones((5, 2)), dst)


def blob(shape, centre, sigma=2.5):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return np.exp(-((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) / (2 * sigma**2)).astype(np.float32)


def centroid(img):
    yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
    w = img / img.sum()
    return np.array([(xx * w).sum(), (yy * w).sum()])


def test_norm_crop_puts_landmarks_on_template():
    """Acceptance: the five landmarks land on the template within 0.5 px."""
    rng = np.random.RandomState(2)
    for trial in range(3):
        m = similarity(rng.uniform(-0.5, 0.5), rng.uniform(1.2, 2.5), rng.uniform(20, 60), rng.uniform(20, 60))
        lm = apply(m, ARCFACE_TEMPLATE.astype(np.float64)) + rng.normal(0, 0.3, (5, 2))
        h, w = 320, 300
        for k in range(5):
            img = blob((h, w), lm[k], sigma=2.0 * (1 + trial * 0.3))
            out = norm_crop(img, lm, 112)
            assert out.shape == (112, 112)
            got = centroid(out)
            # landmark k goes where the fitted transform sends it; the fit is within noise of the template
            fitted = apply(estimate_similarity(lm, ARCFACE_TEMPLATE), lm[k : k + 1])[0]
            assert np.abs(got - fitted).max() < 0.5
            assert np.abs(got - ARCFACE_TEMPLATE[k]).max() < 0.5 + 0.3 * 3
    # a colour image keeps its channels and the RGB layout
    rgb = np.zeros((200, 200, 3), np.uint8)
    rgb[..., 0] = 200
    out = norm_crop(rgb, ARCFACE_TEMPLATE * 1.5 + 10)
    assert out.shape == (112, 112, 3) and out[56, 56].tolist() == [200, 0, 0]


def test_template_sizes():
    np.testing.assert_allclose(template(112), ARCFACE_TEMPLATE, atol=1e-6)
    np.testing.assert_allclose(template(224), ARCFACE_TEMPLATE * 2, atol=1e-5)
    t128 = template(128)
    np.testing.assert_allclose(t128[:, 0], ARCFACE_TEMPLATE[:, 0] + 8, atol=1e-5)
    np.testing.assert_allclose(t128[:, 1], ARCFACE_TEMPLATE[:, 1], atol=1e-5)


def test_fallback_crops(caplog):
    img = np.random.RandomState(3).randint(0, 256, (240, 200, 3)).astype(np.uint8)
    got = crop_fallback(img, bbox=[50, 60, 150, 170])
    ref = cv2.resize(img[38:192, 28:172], (112, 112), interpolation=cv2.INTER_LINEAR)  # bbox +- 22
    np.testing.assert_array_equal(got, ref)
    with caplog.at_level(logging.WARNING, logger="shrinkteanet"):
        centre = align_face(img, None, None, name="x.jpg")
    assert "x.jpg" in caplog.text and "centre" in caplog.text
    # centre box [12.5, 15, 187.5, 225] grown by 22 px on each side covers the whole 200x240 image
    ref = cv2.resize(img, (112, 112), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(centre, ref)
    with pytest.raises(InputError):
        crop_fallback(img, bbox=[500, 500, 600, 600])


def test_parse_lst_lines():
    it = parse_lst_line("1\ta/b.jpg\t7")
    assert it == LstItem(True, "a/b.jpg", 7, None, None)
    xs, ys = [10, 20, 15, 11, 19], [30, 31, 40, 50, 51]
    line = "0\tp.png\t3\t1\t2\t30\t40\t" + "\t".join(map(str, xs + ys))
    it = parse_lst_line(line)
    assert (it.aligned, it.path, it.label) == (False, "p.png", 3)
    np.testing.assert_array_equal(it.bbox, [1, 2, 30, 40])
    np.testing.assert_array_equal(it.landmarks, np.c_[xs, ys])  # x values first, then y (face2rec2)
    it = parse_lst_line("0\tp.png\t3\t1.5\t2\t30\t40")
    assert it.landmarks is None and it.bbox[0] == 1.5
    for bad in ("1\tp.png", "1\tp.png\tx", "0\tp.png\t3\t1\t2\t3\t4\t5", "1\tp.png\t-1"):
        with pytest.raises(InputError, match="F.lst:9"):
            parse_lst_line(bad, "F.lst:9")


def test_lst_file_round_trip(tmp_path):
    items = [LstItem(True, str(tmp_path / "a.jpg"), 0, None, None),
             LstItem(False, str(tmp_path / "d" / "b.jpg"), 2, np.array([1.0, 2, 3, 4]), np.arange(10.0).reshape(5, 2))]
    write_lst(tmp_path / "x.lst", items, root=str(tmp_path))
    assert (tmp_path / "x.lst").read_text().splitlines()[0] == "1\ta.jpg\t0"
    back = read_lst(tmp_path / "x.lst")
    assert [b.path for b in back] == [i.path for i in items]
    np.testing.assert_allclose(back[1].landmarks, items[1].landmarks)
    (tmp_path / "bad.lst").write_text("1\ta.jpg\t0\n\n1\tb.jpg\n")
    with pytest.raises(InputError, match="bad.lst:3"):
        read_lst(tmp_path / "bad.lst")


def test_cli_align_over_lst(tmp_path, capsys):
    rng = np.random.RandomState(4)
    m = similarity(0.2, 2.0, 50, 30)
    lm = apply(m, ARCFACE_TEMPLATE.astype(np.float64))
    img = (rng.rand(340, 320, 3) * 60).astype(np.uint8)
    for k in range(5):  # white dots on the landmarks
        cv2.circle(img, tuple(int(round(v)) for v in lm[k]), 3, (255, 255, 255), -1)
    os.makedirs(tmp_path / "raw" / "id0")
    cv2.imwrite(str(tmp_path / "raw" / "id0" / "a.png"), img[:, :, ::-1])
    cv2.imwrite(str(tmp_path / "raw" / "id0" / "b.png"), img[:, :, ::-1])
    fields = "\t".join(f"{v:.3f}" for v in list(lm[:, 0]) + list(lm[:, 1]))
    (tmp_path / "in.lst").write_text(f"0\traw/id0/a.png\t0\t40\t40\t250\t300\t{fields}\n0\traw/id0/b.png\t1\t40\t40\t250\t300\n")
    rc = cli_main(["data", "align", "--lst", str(tmp_path / "in.lst"), "--out-dir", str(tmp_path / "al"),
                   "--workers", "1", "--quality", "100", "--json", str(tmp_path / "r.json")])
    assert rc == 0
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["num_images"] == 2 and rep["num_fallback"] == 1
    out = read_lst(rep["out_lst"])
    assert [(o.aligned, o.label) for o in out] == [(True, 0), (True, 1)]
    assert out[0].path == str(tmp_path / "al" / "raw" / "id0" / "a.jpg")  # mirrors the input tree
    al = cv2.imread(out[0].path)[:, :, ::-1]
    assert al.shape == (112, 112, 3)
    for k in range(5):  # the dots now sit on the template
        x, y = np.round(ARCFACE_TEMPLATE[k]).astype(int)
        assert al[y, x].min() > 200
    assert "aligned 2 faces" in capsys.readouterr().out
