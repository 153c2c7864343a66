"""Synthetic face generator: determinism, exact landmarks, and every output format read back
through the project's own readers (FaceRecordDataset, .lst, load_bin, IJB meta, MegaFace lists)."""
import json
import os

import numpy as np
import pytest

from _files import tree_sha1
from shrinkteanet.core.constants import ARCFACE_TEMPLATE
from shrinkteanet.data import face_render
from shrinkteanet.data import synth
from shrinkteanet.core.errors import InputError

SMALL = dict(identities=5, images_per_id=4, test_identities=6, pairs=20, ijb_templates=9, megaface_probes=3,
             megaface_probe_images=3, megaface_distractors=12, megaface_noise=0.1, seed=3, workers=1, progress=False)


@pytest.fixture(scope="session")
def suite(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    res = synth.generate(out, **SMALL)
    return out, res


def _decode(data):
    import simplejpeg

    return simplejpeg.decode_jpeg(data, colorspace="RGB")


def _clean_nuisance(seed=0, pose="normal"):
    """Nuisance at difficulty 0: frontal, no blur/noise/light/occlusion, no clutter."""
    n = face_render.sample_nuisance(face_render.keyed_rng(seed), 0.0, pose)
    n["bg_items"] = 0
    return n


# ----------------------------------------------------------------------------- rendering


def test_landmarks_hit_the_rendered_pupils_even_when_turned():
    # Independent check of "landmarks are exact": at difficulty 0 the pixel under each eye
    # landmark is the pupil (near black) and the bright sclera lies beside it.
    g = face_render.identity(11, synth.NS_TRAIN, 0)
    g = dict(g, glasses=False)
    for yaw in (0.0, 25.0):
        n = _clean_nuisance()
        n["yaw"] = yaw
        img, lm, _ = face_render.render(g, n, lambda l: np.array([[3.0, 0, 150], [0, 3.0, 150]]), (300, 300))
        grey = img.astype(np.float64).mean(2)
        for x, y in lm[:2]:
            assert grey[int(round(y)), int(round(x))] < 40
            # 4 face units (12 px) above the pupil is lid/skin, far brighter
            assert grey[int(round(y)) - 12, int(round(x))] > 80


def test_aligned_render_puts_landmarks_near_template_and_pose_moves_them():
    g = face_render.identity(0, synth.NS_TRAIN, 1)
    n = _clean_nuisance()
    _, lm, _ = face_render.render(g, n, None, (112, 112), lm_noise=False)
    # frontal, no detector noise: the least-squares fit leaves only the identity's geometry
    assert np.abs(lm - ARCFACE_TEMPLATE).max() < 9.0
    assert np.abs(lm - ARCFACE_TEMPLATE).mean() < 4.0
    n["yaw"] = 50.0
    _, lm_turned, _ = face_render.render(g, n, None, (112, 112), lm_noise=False)
    eye_mid = lm_turned[:2, 0].mean()
    eye_mid0 = lm[:2, 0].mean()
    # the nose tip leaves the eye midline when the head turns (what makes CFP-FP hard)
    assert abs(lm_turned[2, 0] - eye_mid) > abs(lm[2, 0] - eye_mid0) + 4


def test_loose_crop_aligns_to_the_aligned_render():
    from shrinkteanet.data.align import norm_crop

    g = face_render.identity(5, synth.NS_IJB, 2)
    n = _clean_nuisance(4)
    n["yaw"], n["roll"] = 10.0, 20.0
    loose, lm, _ = face_render.render(g, n, face_render._loose_layout(face_render.keyed_rng(1), 220, 190, n["roll"]), (220, 190))
    assert loose.shape == (190, 220, 3)
    aligned, _, _ = face_render.render(g, n, None, (112, 112), lm_noise=False)
    crop = norm_crop(loose, lm)
    face = (slice(35, 100), slice(28, 84))  # inside the face: the backgrounds differ by design
    diff = np.abs(crop[face].astype(np.float64) - aligned[face].astype(np.float64)).mean()
    assert diff < 12.0, diff


def test_render_task_is_deterministic_and_difficulty_scales_nuisance():
    t = synth._task(dict(seed=9, difficulty=1.0, size=(112, 112), quality=90), synth.NS_LFW, 3, (7, 1))
    a, b = face_render.render_task(t), face_render.render_task(t)
    assert a[0] == b[0] and np.array_equal(a[1], b[1])
    t2 = t[:5] + ((7, 2),) + t[6:]
    assert face_render.render_task(t2)[0] != a[0]
    yaws = {d: np.std([face_render.sample_nuisance(face_render.keyed_rng(d, k), d)["yaw"] for k in range(300)]) for d in (0.0, 0.5, 1.5)}
    assert yaws[0.0] == 0.0 and 0 < yaws[0.5] < yaws[1.5]
    assert face_render.sample_nuisance(face_render.keyed_rng(1), 0.0)["noise"] == 0.0


def test_difficulty_knob_grows_within_identity_variation_on_the_face():
    def face_spread(d):
        # mean absolute difference of two images of the same identity inside the face
        common = dict(seed=1, difficulty=d, size=(56, 56), quality=95)
        diffs = []
        for i in range(16):
            a, b = (_decode(face_render.render_task(synth._task(common, synth.NS_LFW, i, (i, m)))[0]) for m in (0, 1))
            face = (slice(20, 46), slice(18, 38))
            diffs.append(np.abs(a[face].astype(np.float64) - b[face].astype(np.float64)).mean())
        return float(np.mean(diffs))

    s0, s1, s2 = face_spread(0.0), face_spread(face_render.DEFAULT_DIFFICULTY), face_spread(2 * face_render.DEFAULT_DIFFICULTY)
    # at difficulty 0 only the background and clothes change: the face differs by JPEG noise only
    assert s0 < 3.0 and s1 > s0 + 10 and s2 > s1 + 5, (s0, s1, s2)


def test_age_drift_greys_hair_and_adds_age():
    g = face_render.sample_identity(face_render.keyed_rng(1, 2))
    h = face_render.age_identity(g, face_render.keyed_rng(3), 1.0)
    grey = np.array([175, 172, 168.0])
    assert h["age"] > g["age"]
    assert np.linalg.norm(h["hair_rgb"] - grey) < np.linalg.norm(g["hair_rgb"] - grey)
    assert h["hairline"] <= g["hairline"]
    for k in ("eye_dx", "nose_y", "mouth_w", "iris_rgb"):  # the individual stays the same
        assert np.array_equal(np.asarray(h[k]), np.asarray(g[k]))


# ----------------------------------------------------------------------------- formats


def test_training_set_reads_back(suite):
    from shrinkteanet.data import FaceRecordDataset
    from shrinkteanet.data.lst import read_lst

    out, res = suite
    ds = FaceRecordDataset(str(out))
    n, k = SMALL["identities"], SMALL["images_per_id"]
    assert len(ds) == n * k and ds.num_classes == n
    assert [ds[i][1] for i in range(len(ds))] == [i // k for i in range(n * k)]
    assert ds.identity_ranges == [(1 + i * k, 1 + (i + 1) * k) for i in range(n)]
    assert open(os.path.join(out, "property")).read().strip() == f"{n},112,112"
    items = read_lst(os.path.join(out, "train.lst"))
    assert len(items) == n * k and all(it.aligned for it in items)
    for i, it in enumerate(items):
        assert it.label == i // k
        img = _decode(open(it.path, "rb").read())
        assert np.array_equal(img, ds[i][0])  # the .lst image is the record's image
        x0, y0, x1, y1 = it.bbox
        assert (it.landmarks[:, 0] > x0).all() and (it.landmarks[:, 0] < x1).all()
        assert (it.landmarks[:, 1] > y0).all() and (it.landmarks[:, 1] < y1).all()
    lms = np.stack([it.landmarks for it in items])
    # aligned: landmarks scatter around the ArcFace template by pose only
    assert np.abs(lms.mean(0) - ARCFACE_TEMPLATE).max() < 6.0
    assert lms.std(0).mean() > 0.5
    assert res["train"]["num_images"] == n * k


def test_verification_bins_read_back(suite):
    from shrinkteanet.eval.verification import load_bin

    out, res = suite
    for name in ("lfw", "cfp_fp", "agedb_30"):
        imgs, issame = load_bin(os.path.join(out, name + ".bin"))
        assert imgs.shape == (2 * SMALL["pairs"], 112, 112, 3) and imgs.dtype == np.uint8
        assert issame.tolist() == [p % 2 == 0 for p in range(SMALL["pairs"])]
        assert res["bins"][name]["same"] == SMALL["pairs"] // 2
        # every image differs from every other (fresh nuisance per image)
        flat = imgs.reshape(len(imgs), -1)
        assert len({f.tobytes() for f in flat}) == len(flat)


def test_cfp_pairs_put_a_frontal_face_against_a_turned_one():
    common = dict(seed=2, difficulty=1.0, size=(112, 112), quality=95)
    off = {"frontal": [], "profile": []}
    for p in range(12):
        for pose in off:
            _, lm, _, _ = face_render.render_task(synth._task(common, synth.NS_CFP, p, (p, 0), pose=pose))
            off[pose].append(abs(lm[2, 0] - lm[:2, 0].mean()) / abs(lm[1, 0] - lm[0, 0]))
    assert min(off["profile"]) > max(off["frontal"])


def test_evaluation_identities_are_disjoint_from_training():
    # each benchmark draws its individuals from its own namespace of the seed
    train = [face_render.identity(0, synth.NS_TRAIN, i) for i in range(50)]
    keys = {(round(g["eye_dx"], 9), round(g["a"], 9)) for g in train}
    for ns in (synth.NS_LFW, synth.NS_CFP, synth.NS_AGEDB, synth.NS_IJB, synth.NS_MF_PROBE, synth.NS_MF_DISTRACTOR):
        other = [face_render.identity(0, ns, i) for i in range(50)]
        assert not keys & {(round(g["eye_dx"], 9), round(g["a"], 9)) for g in other}


def test_ijb_tree_reads_back(suite):
    from shrinkteanet.data.align import norm_crop
    from shrinkteanet.eval import ijb

    out, res = suite
    paths = ijb.meta_paths(os.path.join(out, "IJBC"), "IJBC")
    names, tids, mids = ijb.read_template_media(paths["tid_mid"])
    names5, lmk, scores = ijb.read_landmarks(paths["lmk"])
    assert names == names5 and len(names) == res["ijb"]["images"]
    assert len(set(tids.tolist())) == SMALL["ijb_templates"]
    assert ((scores > 0) & (scores <= 1)).all()
    # several media per template somewhere, several frames per media somewhere
    assert max(len(set(mids[tids == t])) for t in set(tids.tolist())) > 1
    assert np.bincount(mids).max() > 1
    for name, lm in zip(names, lmk):
        img = _decode(open(os.path.join(paths["images"], name), "rb").read())
        h, w = img.shape[:2]
        assert 150 <= h <= 250 and 150 <= w <= 250  # loose, not aligned
        assert norm_crop(img, lm).shape == (112, 112, 3)
        assert (lm[:, 0] > 0).all() and (lm[:, 0] < w).all() and (lm[:, 1] > 0).all() and (lm[:, 1] < h).all()
    g1t, g1s = ijb.read_template_subjects(paths["gallery1"])
    g2t, g2s = ijb.read_template_subjects(paths["gallery2"])
    pt, ps = ijb.read_template_subjects(paths["probe"])
    subject = {}
    for t, s in zip(np.concatenate([g1t, g2t, pt]), np.concatenate([g1s, g2s, ps])):
        assert subject.setdefault(int(t), int(s)) == int(s)
    assert set(subject) == set(tids.tolist())
    assert not set(g1s.tolist()) & set(g2s.tolist())
    gallery = {}
    for t, s in zip(np.concatenate([g1t, g2t]), np.concatenate([g1s, g2s])):
        gallery.setdefault(int(s), set()).add(int(t))
    assert all(len(v) == 1 for v in gallery.values())  # ijb_1n's gen_mask needs one per subject
    assert set(ps.tolist()) <= set(gallery)
    t1, t2, lab = ijb.read_template_pairs(paths["pairs"])
    assert lab.sum() > 0 and (lab == 0).sum() > 0
    for a, b, l in zip(t1, t2, lab):
        assert l == int(subject[int(a)] == subject[int(b)])


def test_megaface_tree_reads_back(suite):
    from shrinkteanet.eval import megaface

    out, res = suite
    root = os.path.join(out, "megaface")
    paths, ids = megaface.read_facescrub_list(os.path.join(root, "templatelists", "facescrub_features_list.json"))
    assert len(paths) == SMALL["megaface_probes"] * SMALL["megaface_probe_images"]
    assert len(set(ids)) == SMALL["megaface_probes"]
    for p, i in zip(paths, ids):
        assert p.split("/")[0] == i
        assert _decode(open(os.path.join(root, "facescrub_images", p), "rb").read()).shape == (112, 112, 3)
    lists = megaface.find_distractor_lists(os.path.join(root, "templatelists"))
    assert list(lists) == [10]  # sizes of the devkit up to the 12 distractors available
    d10 = megaface.read_distractor_list(lists[10])
    assert len(set(d10)) == 10
    for p in d10:
        assert os.path.isfile(os.path.join(root, "megaface_images", p))
    all_d = [os.path.relpath(os.path.join(dp, f), os.path.join(root, "megaface_images"))
             for dp, _, fs in os.walk(os.path.join(root, "megaface_images")) for f in fs]
    assert len(all_d) == SMALL["megaface_distractors"]
    fs_noise = megaface.read_noise_list(os.path.join(root, "facescrub_noises.txt"), "facescrub")
    mf_noise = megaface.read_noise_list(os.path.join(root, "megaface_noises.txt"), "megaface")
    assert len(fs_noise) == res["megaface"]["facescrub_noise"] and fs_noise <= set(paths)
    assert len(mf_noise) == res["megaface"]["megaface_noise"] == 1 and mf_noise <= set(all_d)
    with open(os.path.join(root, "templatelists", "facescrub_features_list.json")) as f:
        assert set(json.load(f)) == {"path", "id"}


def test_same_seed_same_bytes_any_worker_count(tmp_path):
    kw = dict(identities=3, images_per_id=2, test_identities=4, pairs=4, ijb=False, megaface=False, seed=5,
              progress=False)
    synth.generate(tmp_path / "a", workers=1, **kw)
    synth.generate(tmp_path / "b", workers=2, **kw)
    synth.generate(tmp_path / "c", workers=1, **dict(kw, seed=6))
    for name in ("train.rec", "train.idx", "train.lst", "lfw.bin", "cfp_fp.bin", "agedb_30.bin"):
        a = (tmp_path / "a" / name).read_bytes()
        assert a == (tmp_path / "b" / name).read_bytes(), name
    assert (tmp_path / "a" / "lfw.bin").read_bytes() != (tmp_path / "c" / "lfw.bin").read_bytes()


@pytest.mark.parametrize("bad, msg", [(dict(identities=1), "--identities"), (dict(pairs=1), "--pairs"),
                                      (dict(megaface_distractors=5), "--megaface-distractors"),
                                      (dict(difficulty=-1.0), "--difficulty")])
def test_bad_sizes_are_input_errors(tmp_path, bad, msg):
    kw = dict(identities=2, images_per_id=1, test_identities=2, pairs=2, progress=False)
    kw.update(bad)
    with pytest.raises(InputError, match=msg):
        synth.generate(tmp_path / "x", **kw)
    assert not (tmp_path / "x" / "train.rec").exists()


def test_cli_synth_prints_summary_and_json(tmp_path, capsys):
    from shrinkteanet.cli import main

    out, js = tmp_path / "out", tmp_path / "r.json"
    rc = main(["data", "synth", str(out), "--identities", "2", "--images-per-id", "2", "--test-identities", "3",
               "--pairs", "4", "--no-ijb", "--no-megaface", "--workers", "1", "--json", str(js)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "train" in text and "lfw.bin" in text and "4 pairs" in text
    rep = json.loads(js.read_text())
    assert rep["train"]["num_images"] == 4 and rep["bins"]["agedb_30"]["pairs"] == 4
    assert "ijb" not in rep and not (out / "IJBC").exists()
    assert main(["data", "synth", str(out), "--identities", "0", "--no-ijb", "--no-megaface"]) == 2


# ----------------------------------------------------------------------------- validation split (issue 26)


def test_validation_set_leaves_every_other_file_byte_identical(tmp_path):
    kw = dict(SMALL, identities=3, images_per_id=2, pairs=6, ijb_templates=6, megaface_distractors=10)
    res_off = synth.generate(tmp_path / "off", **kw)
    res_on = synth.generate(tmp_path / "on", val_pairs=10, val_identities=5, **kw)
    off, on = tree_sha1(tmp_path / "off"), tree_sha1(tmp_path / "on")
    assert set(on) - set(off) == {"val.bin"} and set(off) <= set(on)
    assert {k: on[k] for k in off} == off  # every file written without the option keeps its bytes
    assert len(off) > 20  # the trees were compared, not two empty folders
    no_path = {k: {f: v for f, v in b.items() if f != "path"} for k, b in res_off["bins"].items()}
    assert "val" not in res_off and no_path == {k: {f: v for f, v in b.items() if f != "path"}
                                                for k, b in res_on["bins"].items()}
    assert res_on["val"] == {"path": str(tmp_path / "on" / "val.bin"), "pairs": 10, "same": 5, "identities": 5}
    from shrinkteanet.data.binfile import load_bin

    imgs, issame = load_bin(str(tmp_path / "on" / "val.bin"))
    assert imgs.shape[0] == 20 and list(issame) == [p % 2 == 0 for p in range(10)]
    # its pairs are its own draws, not a copy of a test set's
    lfw, _ = load_bin(str(tmp_path / "on" / "lfw.bin"))
    assert not any(np.array_equal(a, b) for a in imgs for b in lfw)


def test_validation_identities_are_disjoint_from_training_and_test_identities():
    def keys(ns):
        return {(round(g["eye_dx"], 9), round(g["a"], 9)) for g in (face_render.identity(0, ns, i) for i in range(60))}

    val = keys(synth.NS_VAL)
    assert len(val) == 60
    for ns in (synth.NS_TRAIN, synth.NS_LFW, synth.NS_CFP, synth.NS_AGEDB, synth.NS_IJB, synth.NS_MF_PROBE,
               synth.NS_MF_DISTRACTOR):
        assert not val & keys(ns), ns
    # the pair plan is a stream of its own too: same counts, different identity draws than LFW's
    assert synth._pair_plan(0, synth.NS_VAL, 50, 40) != synth._pair_plan(0, synth.NS_LFW, 50, 40)


def test_cli_validation_pairs_option(tmp_path, capsys):
    from shrinkteanet.cli import main

    out, js = tmp_path / "out", tmp_path / "r.json"
    args = ["data", "synth", str(out), "--identities", "2", "--images-per-id", "1", "--test-identities", "3",
            "--pairs", "4", "--no-ijb", "--no-megaface", "--workers", "1"]
    assert main(args + ["--val-pairs", "6", "--json", str(js)]) == 0
    assert "val.bin" in capsys.readouterr().out
    assert json.loads(js.read_text())["val"]["pairs"] == 6 and (out / "val.bin").is_file()
    assert main(args + ["--val-pairs", "1", "--overwrite"]) == 2
    assert "--val-pairs" in capsys.readouterr().err
    assert main(args + ["--val-pairs", "6"]) == 2  # val.bin exists: --overwrite needed, as for every set file
