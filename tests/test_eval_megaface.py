"""MegaFace: devkit feature byte layout, lists, noise cleaning, identification vs brute force."""
import json
import os
import struct

import numpy as np
import pytest

from shrinkteanet.core.errors import InputError
from shrinkteanet.eval import megaface as M


def _norm(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_feature_file_byte_layout(tmp_path):
    v = np.array([0.5, -1.25, 3.0], np.float32)
    p = tmp_path / "a" / "img.jpg_algo.bin"
    M.write_feature(p, v)
    raw = p.read_bytes()
    assert raw[:16] == struct.pack("<4i", 3, 1, 4, 5)
    assert raw[16:] == struct.pack("<3f", 0.5, -1.25, 3.0)
    assert len(raw) == 16 + 12
    np.testing.assert_array_equal(M.read_feature(p), v)
    (tmp_path / "short.bin").write_bytes(raw[:20])
    with pytest.raises(InputError, match="short.bin"):
        M.read_feature(tmp_path / "short.bin")


def _brute(probes, ids, dist):
    p = probes.astype(np.float64)
    s = p @ dist.astype(np.float64).T
    g = p @ p.T
    hits = trials = 0
    for i in range(len(p)):
        for j in range(len(p)):
            if i != j and ids[i] == ids[j]:
                trials += 1
                hits += all(g[i, j] > s[i])
    return hits / trials


def test_rank1_against_brute_force():
    rs = np.random.RandomState(1)
    ids = np.repeat(np.arange(10), 4)
    centres = rs.randn(10, 24)
    probes = _norm(centres[ids] + rs.randn(len(ids), 24) * 1.1)
    dist = _norm(rs.randn(3000, 24))
    for n in (10, 300, 3000):
        assert M.rank1_identification(probes, ids, dist[:n]) == pytest.approx(_brute(probes, ids, dist[:n]), abs=0)
    # sizes as prefixes, blocks smaller than the sizes, CMC rank 1 == rank-1 of the largest set
    r = M.identification(probes, ids, dist, [10, 300, 3000], far=1e-3, block=128, progress=False)
    assert r["rank1"] == {n: _brute(probes, ids, dist[:n]) for n in (10, 300, 3000)}
    assert r["cmc"][0] == r["rank1"][3000] and r["cmc"] == sorted(r["cmc"])
    # TAR@FAR: threshold = the (floor(far*P*N)+1)-th largest impostor score
    s = probes @ dist.T
    k = int(np.floor(1e-3 * s.size)) + 1
    assert r["threshold"] == pytest.approx(float(np.sort(s.ravel())[-k]), rel=1e-6)


def test_strictly_greater_tie_is_a_miss():
    probes = _norm(np.array([[1.0, 0.0], [1.0, 0.0]]))
    assert M.rank1_identification(probes, [7, 7], _norm(np.array([[1.0, 0.0]]))) == 0.0
    assert M.rank1_identification(probes, [7, 7], _norm(np.array([[0.0, 1.0]]))) == 1.0


def test_noise_cleaning_and_excluded_distractors():
    rs = np.random.RandomState(0)
    f = _norm(rs.randn(6, 8))
    ids = np.array(["a", "a", "a", "b", "b", "b"])
    noisy = np.array([0, 0, 1, 0, 0, 0], bool)
    c = M.clean_probes(f, ids, noisy, seed=0)
    centre = f[0] + f[1]
    assert np.dot(c[2], centre / np.linalg.norm(centre)) > 0.999999
    np.testing.assert_array_equal(c[~noisy], f[~noisy])
    with pytest.raises(InputError):
        M.clean_probes(f, ids, np.array([1, 1, 1, 0, 0, 0], bool))
    # a distractor on the noise list never wins
    probes = _norm(np.array([[1.0, 0.0], [0.9, 0.1]]))
    d = _norm(np.array([[1.0, 0.0], [0.0, 1.0]]))
    r = M.identification(probes, [1, 1], d, exclude=np.array([True, False]), progress=False)
    assert r["rank1"][2] == 1.0


def test_nested_lists_become_prefixes():
    lists = {10: ["a", "b"], 100: ["c", "a", "b", "d"]}
    order, sets = M.plan_distractors(lists)
    assert order[:2] == ["a", "b"] and sets == {10: 2, 100: 4}
    order, sets = M.plan_distractors({10: ["x"], 100: ["a", "b"]})
    assert isinstance(sets[10], np.ndarray)


class _FakeEmbedder:
    image_size = 16

    def embed(self, images, flip=True):
        x = images.reshape(len(images), -1).astype(np.float32)
        return x[:, :8] + x[:, -8:] + 1.0


def _tree(root, n_id=3, per_id=3, n_dist=6):
    import cv2

    rs = np.random.RandomState(0)
    fs, ids = [], []
    for i in range(n_id):
        for k in range(per_id):
            rel = f"id{i}/id{i}_{k}.png"
            os.makedirs(root / "facescrub_images" / f"id{i}", exist_ok=True)
            cv2.imwrite(str(root / "facescrub_images" / rel), rs.randint(0, 255, (16, 16, 3)).astype(np.uint8))
            fs.append(rel)
            ids.append(f"id{i}")
    ds = []
    for k in range(n_dist):
        rel = f"g0/d{k}.png"
        os.makedirs(root / "megaface_images" / "g0", exist_ok=True)
        cv2.imwrite(str(root / "megaface_images" / rel), rs.randint(0, 255, (16, 16, 3)).astype(np.uint8))
        ds.append(rel)
    tl = root / "templatelists"
    tl.mkdir()
    (tl / "facescrub_features_list.json").write_text(json.dumps({"path": fs, "id": ids}))
    (tl / "megaface_features_list.json_10_1").write_text(json.dumps({"path": ds}))
    return fs, ds


def test_generate_writes_devkit_tree_and_stops_on_missing(tmp_path):
    root = tmp_path / "mf"
    fs, ds = _tree(root)
    (root / "mn.txt").write_text("# comment\n0\tg0/d1.png\n")
    out = tmp_path / "out"
    gen = M.generate(_FakeEmbedder(), str(root), str(out), "x", megaface_noises=str(root / "mn.txt"), image_size=16)
    f = M.read_feature(out / "features" / "facescrub" / (fs[0] + "_x.bin"))
    assert f.shape == (8,) and abs(np.linalg.norm(f) - 1) < 1e-5
    clean = M.read_feature(out / "features_clean" / "megaface" / (ds[1] + "_x.bin"))
    assert clean.shape == (9,) and clean[-1] == 100.0
    assert M.read_feature(out / "features_clean" / "megaface" / (ds[0] + "_x.bin"))[-1] == 0.0
    fields, curves = M.evaluate_generated(gen, progress=False)
    assert fields["num_distractors"] == 10 and fields["num_probes"] == 9
    assert fields["rank1"]["1000000"] is None and 0.0 <= fields["rank1"]["10"] <= 1.0
    os.remove(root / "facescrub_images" / fs[4])
    with pytest.raises(InputError, match="1 image"):
        M.generate(_FakeEmbedder(), str(root), str(tmp_path / "o2"), "x", image_size=16)
    gen = M.generate(_FakeEmbedder(), str(root), str(tmp_path / "o3"), "x", allow_missing=True, image_size=16)
    assert gen["num_missing"] == 1 and len(gen["probe_feats"]) == 8


def test_malformed_list_names_file(tmp_path):
    p = tmp_path / "facescrub_features_list.json"
    p.write_text('{"path": ["a"],\n "id": [}')
    with pytest.raises(InputError, match=r"facescrub_features_list.json:2"):
        M.read_facescrub_list(str(p))
