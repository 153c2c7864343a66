"""`shrinkteanet embed` / `compare` on image files: numbers against an independent
Module computation, identity structure, thresholds, landmarks, bad input.

Images: an identity is a coarse 4x4 colour pattern (large-scale structure a random
network keeps), each image adds its own noise and brightness and sits in a
non-square frame, so centre cropping and resizing are exercised."""
import json

import cv2
import mxnet as mx
import numpy as np
import pytest

from shrinkteanet.cli import main
from shrinkteanet.symbols import get_symbol
from shrinkteanet.study.tiny import random_params

SIZE = 32
EMB = 16
IDS = 4
PER_ID = 3


def reference_embedding(ctx, faces):
    """Independent: one fresh plain Module per forward (no second forward on the
    raw graph), image + mirror added, L2-normalised."""
    x = faces.transpose(0, 3, 1, 2).astype(np.float32)
    outs = []
    for v in (x, x[:, :, :, ::-1]):
        mod = mx.mod.Module(ctx["sym"], label_names=None, context=mx.cpu())
        mod.bind([("data", v.shape)], for_training=False)
        mod.set_params(ctx["arg"], ctx["aux"])
        mod.forward(mx.io.DataBatch([mx.nd.array(np.ascontiguousarray(v))]), is_train=False)
        outs.append(mod.get_outputs()[0].asnumpy())
    e = outs[0] + outs[1]
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def centre(img):
    h, w = img.shape[:2]
    s = min(h, w)
    sq = img[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
    return cv2.resize(sq, (SIZE, SIZE), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="session")
def ctx(tmp_path_factory):
    d = tmp_path_factory.mktemp("embed")
    sym = get_symbol("mfn", emb_size=EMB, blocks=(1, 1, 1, 1), filters=(8, 8, 16, 16, 32), image_size=SIZE)
    arg, aux = random_params(sym, SIZE)
    prefix = str(d / "tiny")
    mx.model.save_checkpoint(prefix, 1, sym, arg, aux)
    rng = np.random.RandomState(5)
    patterns = rng.randint(0, 256, size=(IDS, 4, 4, 3)).astype(np.float32)
    paths, labels, images = [], [], []
    for i in range(IDS):
        for k in range(PER_ID):
            face = np.kron(patterns[i], np.ones((10, 10, 1))) + rng.normal(0, 20, (40, 40, 3)) + rng.uniform(-15, 15)
            img = rng.randint(0, 256, size=(40, 52, 3)).astype(np.float32)  # clutter left and right
            img[:, 6:46] = face
            img = np.clip(img, 0, 255).astype(np.uint8)
            p = str(d / f"id{i}_{k}.png")  # PNG: lossless, so the reference sees the same pixels
            cv2.imwrite(p, img[:, :, ::-1])
            paths.append(p)
            labels.append(i)
            images.append(img)
    bad_text = d / "notes.jpg"
    bad_text.write_text("this is not an image\n")
    return {"dir": d, "prefix": prefix, "model": f"{prefix},1", "sym": sym, "arg": arg, "aux": aux,
            "paths": paths, "labels": np.array(labels), "images": images, "bad": str(bad_text),
            "missing": str(d / "missing.jpg")}


@pytest.fixture(scope="session")
def embedded(ctx):
    out = str(ctx["dir"] / "emb.npy")
    report = str(ctx["dir"] / "emb.json")
    argv = ["embed", *ctx["paths"][:5], ctx["bad"], ctx["missing"], *ctx["paths"][5:], "--model", ctx["model"],
            "--out", out, "--json", report]
    rc = main(argv)
    return {"rc": rc, "emb": np.load(out), "names": open(str(ctx["dir"] / "emb.txt")).read().splitlines(),
            "report": json.load(open(report))}


def test_embed_matches_independent_computation(ctx, embedded):
    assert embedded["rc"] == 0
    emb = embedded["emb"]
    assert emb.dtype == np.float32 and emb.shape == (IDS * PER_ID, EMB)
    assert embedded["names"] == ctx["paths"]  # bad files dropped, order kept
    ref = reference_embedding(ctx, np.stack([centre(im) for im in ctx["images"]]))
    np.testing.assert_allclose(emb, ref, atol=2e-4)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_same_identity_scores_above_different_identity(ctx, embedded):
    emb, lab = embedded["emb"], ctx["labels"]
    cos = emb @ emb.T
    iu = np.triu_indices(len(lab), 1)
    same = lab[iu[0]] == lab[iu[1]]
    s, d = cos[iu][same], cos[iu][~same]
    assert s.mean() > d.mean() + 0.1, (s.mean(), d.mean())
    # and per identity: its own images are nearer on average than any other identity's
    for i in range(IDS):
        rows = cos[lab == i]
        own = rows[:, lab == i][~np.eye(PER_ID, dtype=bool)].mean()
        others = [rows[:, lab == j].mean() for j in range(IDS) if j != i]
        assert own > max(others)


def test_bad_files_named_and_skipped(ctx, embedded, capsys):
    skipped = {s["path"]: s["reason"] for s in embedded["report"]["skipped"]}
    assert set(skipped) == {ctx["bad"], ctx["missing"]}
    assert "not a readable image" in skipped[ctx["bad"]] and "no such file" in skipped[ctx["missing"]]
    assert embedded["report"]["count"] == IDS * PER_ID and embedded["report"]["dim"] == EMB
    out = str(ctx["dir"] / "strict.npy")
    assert main(["embed", ctx["paths"][0], ctx["bad"], "--model", ctx["model"], "--out", out, "--strict"]) == 2
    err = capsys.readouterr().err
    assert ctx["bad"] in err and "not a readable image" in err
    assert main(["embed", ctx["bad"], "--model", ctx["model"], "--out", out]) == 2
    assert "none of the 1 files" in capsys.readouterr().err


def test_model_input_size_mismatch_names_both_sizes(ctx, capsys):
    rc = main(["embed", ctx["paths"][0], "--model", ctx["model"], "--out", str(ctx["dir"] / "x.npy"),
               "--image-size", "48"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "32x32" in err and "48x48" in err


def test_landmarks_align_the_face(ctx, tmp_path):
    from shrinkteanet.data.align import norm_crop

    img = ctx["images"][0]
    lm = np.array([[15.0, 14.0], [33.0, 15.0], [24.0, 22.0], [17.0, 30.0], [31.0, 31.0]])
    lm_file = tmp_path / "lm.txt"
    # one line for the first image (by base name), none for the second: centre crop
    lm_file.write_text("# path x1 y1 ... x5 y5\n" + "id0_0.png " + " ".join(f"{v:.1f}" for v in lm.ravel()) + "\n")
    # `--out lm.npy` would write its file list to lm.txt, the landmarks it reads: refused (issue 21)
    assert main(["embed", ctx["paths"][0], "--model", ctx["model"], "--out", str(tmp_path / "lm.npy"),
                 "--landmarks", str(lm_file)]) == 2
    out = str(tmp_path / "emb.npy")
    assert main(["embed", ctx["paths"][0], ctx["paths"][1], "--model", ctx["model"], "--out", out,
                 "--landmarks", str(lm_file)]) == 0
    emb = np.load(out)
    ref = reference_embedding(ctx, np.stack([norm_crop(img, lm, SIZE), centre(ctx["images"][1])]))
    np.testing.assert_allclose(emb, ref, atol=2e-4)
    plain = reference_embedding(ctx, centre(img)[None])
    assert np.abs(emb[0] - plain[0]).max() > 1e-2  # the landmarks did change the crop
    lm_file.write_text("id0_0.png 1 2 3\n")
    assert main(["embed", ctx["paths"][0], "--model", ctx["model"], "--out", out, "--landmarks", str(lm_file)]) == 2


def test_compare_threshold_and_calibration(ctx, embedded, tmp_path, capsys):
    from shrinkteanet.data.binfile import write_bin
    from shrinkteanet.data.recordio import encode_image
    from shrinkteanet.eval.verification import evaluate

    emb = embedded["emb"]
    a, b, c = ctx["paths"][0], ctx["paths"][1], ctx["paths"][PER_ID]  # b: same identity, c: another
    cos_ab, cos_ac = float(emb[0] @ emb[1]), float(emb[0] @ emb[PER_ID])
    assert cos_ab > cos_ac
    t = (cos_ab + cos_ac) / 2
    results = {}
    for other in (b, c):
        js = str(tmp_path / "cmp.json")
        assert main(["compare", a, other, "--model", ctx["model"], "--threshold", f"{t}", "--json", js]) == 0
        results[other] = json.load(open(js))
    assert results[b]["cosine"] == pytest.approx(cos_ab, abs=2e-4) and results[b]["same"] is True
    assert results[c]["cosine"] == pytest.approx(cos_ac, abs=2e-4) and results[c]["same"] is False
    out = capsys.readouterr().out
    assert "SAME" in out and "DIFFERENT" in out

    # calibration on a .bin of aligned crops: cosine threshold = 1 - d/2 of InsightFace's best threshold d
    crops = [centre(im) for im in ctx["images"]]
    lab = ctx["labels"]
    pairs = [(i, j) for i in range(len(crops)) for j in range(i + 1, len(crops))]
    jpegs, issame = [], []
    for i, j in pairs:
        jpegs += [encode_image(crops[i], quality=100), encode_image(crops[j], quality=100)]
        issame.append(bool(lab[i] == lab[j]))
    bin_path = str(tmp_path / "cal.bin")
    write_bin(bin_path, jpegs, issame)
    from shrinkteanet.data.binfile import load_bin

    images, _ = load_bin(bin_path, image_size=(SIZE, SIZE))
    ref = reference_embedding(ctx, images)
    expected = 1.0 - evaluate(ref, np.array(issame))["threshold"] / 2.0
    js = str(tmp_path / "cal.json")
    assert main(["compare", a, c, "--model", ctx["model"], "--calibrate", bin_path, "--json", js]) == 0
    r = json.load(open(js))
    assert r["threshold"] == pytest.approx(expected, abs=0.005)
    assert r["same"] is (r["cosine"] >= r["threshold"]) and "calibrated" in r["threshold_source"]

    assert main(["compare", a, ctx["bad"], "--model", ctx["model"]]) == 2
    assert ctx["bad"] in capsys.readouterr().err
