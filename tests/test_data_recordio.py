"""RecordIO sets: byte compatibility with mx.recordio, InsightFace header semantics,
pack/info CLI round trips and bad-input behaviour."""
import json
import logging
import os
import struct
import subprocess
import sys

import cv2
import mxnet as mx
import numpy as np
import pytest
import simplejpeg

from shrinkteanet.cli import main as cli_main
from shrinkteanet.data import FaceRecordDataset
from shrinkteanet.data.recordio import MAGIC, RecordReader, frame, pack, unpack, write_rec_set
from shrinkteanet.core.errors import InputError


def smooth_face(rng, size=112):
    """Smooth random image (JPEG-friendly, so q=100 round trips within a few levels)."""
    small = rng.randint(0, 256, (6, 6, 3)).astype(np.uint8)
    return cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)


def jpeg(img, q=95):
    return simplejpeg.encode_jpeg(np.ascontiguousarray(img), quality=q, colorspace="RGB")


def build_by_hand(d, labels, images, vector_labels=False, header=True, property_=True, size=112):
    """A set written the face2rec2 way, directly with mx.recordio."""
    os.makedirs(d, exist_ok=True)
    w = mx.recordio.MXIndexedRecordIO(os.path.join(d, "train.idx"), os.path.join(d, "train.rec"), "w")
    n = len(labels)
    ranges = []
    for i, (lab, img) in enumerate(zip(labels, images)):
        key = i + 1
        if not ranges or ranges[-1][0] != lab:
            ranges.append([lab, key, key])
        ranges[-1][2] = key + 1
        lab_h = [float(lab), 1.0] if vector_labels else float(lab)
        w.write_idx(key, mx.recordio.pack(mx.recordio.IRHeader(0, lab_h, key, 0), img))
    if header:
        w.write_idx(0, mx.recordio.pack(mx.recordio.IRHeader(0, [n + 1.0, n + 1.0 + len(ranges)], 0, 0), b""))
        for j, (_, a, b) in enumerate(ranges):
            key = n + 1 + j
            w.write_idx(key, mx.recordio.pack(mx.recordio.IRHeader(0, [float(a), float(b)], key, 0), b""))
    w.close()
    if property_:
        with open(os.path.join(d, "property"), "w") as f:
            f.write(f"{max(labels) + 1},{size},{size}")
    return ranges


@pytest.fixture(scope="session")
def images():
    rng = np.random.RandomState(5)
    return [smooth_face(rng) for _ in range(9)]


@pytest.fixture(scope="session")
def written(tmp_path_factory, images):
    d = tmp_path_factory.mktemp("written")
    labels = [0, 0, 1, 1, 1, 2, 4, 4, 4]
    samples = [(img, lab) for img, lab in zip(images[:-1], labels[:-1])]
    samples.append((jpeg(images[-1]), labels[-1], [1.0]))  # JPEG bytes + face2rec2-style extra
    res = write_rec_set(d, samples, quality=100, workers=2, progress=False)
    return d, labels, res


def test_pack_unpack_byte_identical_to_mxnet():
    for label in (3, 7.5, [2.0, 1.0], np.arange(4, dtype=np.float32)):
        ours = pack(label, b"\xff\xd8payload", key=11, id2=4)
        ref = mx.recordio.pack(mx.recordio.IRHeader(0, label, 11, 4), b"\xff\xd8payload")
        assert ours == ref
        h, s = unpack(ref)
        rh, rs = mx.recordio.unpack(ref)
        assert (h.flag, h.id, h.id2, s) == (rh.flag, rh.id, rh.id2, rs)
        np.testing.assert_array_equal(np.asarray(h.label), np.asarray(rh.label))


def test_framing_with_magic_inside_payload_matches_dmlc(tmp_path):
    m = struct.pack("<I", MAGIC)
    bodies = [b"abc", b"", m + b"xy", b"12345678" + m + b"zzzz" + m + m + b"q", b"1" + m + b"tail", b"x" * 4 + m]
    w = mx.recordio.MXIndexedRecordIO(str(tmp_path / "m.idx"), str(tmp_path / "m.rec"), "w")
    for k, b in enumerate(bodies):
        w.write_idx(k, b)
    w.close()
    assert (tmp_path / "m.rec").read_bytes() == b"".join(frame(b) for b in bodies)
    r = RecordReader(tmp_path / "m.rec")
    assert [r.read(k) for k in range(len(bodies))] == bodies


def test_written_set_reads_in_faceimageiter_logic(written, images):
    """InsightFace FaceImageIter.__init__/next_sample, replayed with mx.recordio."""
    d, labels, res = written
    n, k = len(labels), len(set(labels))
    assert (res["num_images"], res["num_ids"], res["num_classes"]) == (n, k, 5)
    assert open(os.path.join(d, "property")).read().strip() == "5,112,112"
    rec = mx.recordio.MXIndexedRecordIO(str(d / "train.idx"), str(d / "train.rec"), "r")
    header, _ = mx.recordio.unpack(rec.read_idx(0))
    assert header.flag > 0
    assert (int(header.label[0]), int(header.label[1])) == (n + 1, n + 1 + k)
    assert list(range(1, int(header.label[0]))) == list(range(1, n + 1))
    imgidx, id2range = [], {}
    for identity in range(int(header.label[0]), int(header.label[1])):
        h, _ = mx.recordio.unpack(rec.read_idx(identity))
        id2range[identity] = (int(h.label[0]), int(h.label[1]))
        imgidx += range(int(h.label[0]), int(h.label[1]))
    assert imgidx == list(range(1, n + 1))
    # identity ranges = the runs of equal labels
    assert list(id2range.values()) == [(1, 3), (3, 6), (6, 7), (7, 10)]
    for key in imgidx:
        h, s = mx.recordio.unpack(rec.read_idx(key))
        label = h.label if isinstance(h.label, float) else h.label[0]
        assert int(label) == labels[key - 1]
        img = mx.image.imdecode(s).asnumpy()  # InsightFace's decode path (RGB)
        assert np.abs(img.astype(int) - images[key - 1]).mean() < 2.0
    h, _ = mx.recordio.unpack(rec.read_idx(n))
    np.testing.assert_array_equal(h.label, [4.0, 1.0])  # vector label [class, extra]


def test_dataset_on_written_set(written, images):
    d, labels, _ = written
    ds = FaceRecordDataset(str(d))
    assert len(ds) == len(labels) and ds.num_classes == 5 and ds.image_size == (112, 112)
    assert ds.identity_ranges == [(1, 3), (3, 6), (6, 7), (7, 10)]
    np.testing.assert_array_equal(ds.record_ids, np.arange(1, 10))
    for i in range(len(ds)):
        img, lab = ds[i]
        assert img.dtype == np.uint8 and img.shape == (112, 112, 3)
        assert lab == labels[i]
        assert np.abs(img.astype(int) - images[i]).mean() < 2.0
    # the JPEG given as bytes is stored untouched
    rec = mx.recordio.MXIndexedRecordIO(str(d / "train.idx"), str(d / "train.rec"), "r")
    assert mx.recordio.unpack(rec.read_idx(9))[1] == jpeg(images[-1])
    # same dataset through the .rec path and the prefix
    assert len(FaceRecordDataset(str(d / "train.rec"))) == len(FaceRecordDataset(str(d / "train"))) == 9


def test_sharding_partitions_the_images(written):
    d, labels, _ = written
    parts = [FaceRecordDataset(str(d), part_index=i, num_parts=3).record_ids for i in range(3)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(1, 10))
    assert all(len(p) == 3 for p in parts)
    with pytest.raises(InputError):
        FaceRecordDataset(str(d), part_index=3, num_parts=3)


def test_hand_built_set_with_vector_labels_and_no_property(tmp_path, images, caplog):
    labels = [0, 0, 0, 1, 2, 2]
    ranges = build_by_hand(tmp_path, labels, [jpeg(i) for i in images[:6]], vector_labels=True, property_=False)
    with caplog.at_level(logging.WARNING, logger="shrinkteanet"):
        ds = FaceRecordDataset(str(tmp_path))
    assert "no property" in caplog.text
    assert ds.num_classes == 3
    assert ds.identity_ranges == [(a, b) for _, a, b in ranges]
    assert [ds[i][1] for i in range(6)] == labels
    np.testing.assert_array_equal(ds[4][0], simplejpeg.decode_jpeg(jpeg(images[4])))


def _error(path):
    with pytest.raises(InputError) as e:
        FaceRecordDataset(str(path))
    assert "\n" not in str(e.value)
    return str(e.value)


def test_folder_errors_name_the_folder_and_what_is_missing_in_it(tmp_path, images, monkeypatch):
    d = tmp_path / "faces_emore"
    assert _error(d) == f"{d}/: no such folder (a RecordIO set: train.rec, train.idx, property)"
    d.mkdir()
    (d / "lfw.bin").write_bytes(b"")
    assert _error(d) == f"{d}/: no train.rec"
    assert _error(str(d) + "/") == f"{d}/: no train.rec"
    build_by_hand(tmp_path / "other", [0, 1], [jpeg(i) for i in images[:2]])
    os.replace(tmp_path / "other" / "train.rec", d / "ms1m.rec")
    assert _error(d) == f"{d}/: no train.rec; it holds ms1m.rec"  # a set under another name
    assert _error(d / "ms1m.rec") == f"{d}/: no ms1m.idx (the index of ms1m.rec)"
    os.replace(d / "ms1m.rec", d / "train.rec")
    assert _error(d) == f"{d}/: no train.idx (the index of train.rec)"
    assert _error(d / "train") == f"{d}/: no train.idx (the index of train.rec)"  # the prefix form
    assert _error(tmp_path / "gone" / "train.rec") == f"{tmp_path}/gone/: no such folder (for train.rec)"
    assert _error(d / "lfw.bin") == f"{d}/lfw.bin: not a RecordIO .rec (give the set's folder or its .rec file)"
    monkeypatch.chdir(d)
    assert _error("val.rec") == "./: no val.rec; it holds train.rec"
    os.replace(tmp_path / "other" / "train.idx", d / "train.idx")
    assert len(FaceRecordDataset(str(d))) == 2  # complete (no property: derived, a warning)


def test_train_on_a_missing_folder_says_so_in_one_line(tmp_path):
    missing = tmp_path / "datasets" / "faces_emore"
    r = subprocess.run([sys.executable, "-m", "shrinkteanet", "train", "--config", "mfn_self", "--data", str(missing),
                        "workers=0"], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (f"shrinkteanet: error: {missing}/: no such folder "
                                                 "(a RecordIO set: train.rec, train.idx, property)")


def test_headerless_set_uses_every_key(tmp_path, images):
    """im2rec-style .rec without record 0 meta (FaceImageIter: imgidx = keys)."""
    w = mx.recordio.MXIndexedRecordIO(str(tmp_path / "train.idx"), str(tmp_path / "train.rec"), "w")
    for key, lab in zip((3, 5, 8), (1, 0, 1)):
        w.write_idx(key, mx.recordio.pack(mx.recordio.IRHeader(0, float(lab), key, 0), jpeg(images[key])))
    w.close()
    ds = FaceRecordDataset(str(tmp_path))
    assert ds.header0 is None and ds.record_ids.tolist() == [3, 5, 8] and ds.num_classes == 2
    assert [ds[i][1] for i in range(3)] == [1, 0, 1]


def test_corrupt_jpeg_is_skipped_and_counted(tmp_path, images, caplog):
    bad = jpeg(images[1])[:200] + b"\x00" * 50
    build_by_hand(tmp_path, [0, 0, 1], [jpeg(images[0]), bad, jpeg(images[2])])
    ds = FaceRecordDataset(str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="shrinkteanet"):
        img, lab = ds[1]
    assert "record 2" in caplog.text
    assert ds.num_corrupt == 1 and ds.corrupt_keys == {2}
    assert lab == 1  # replaced by the next readable image of the shard
    np.testing.assert_array_equal(img, simplejpeg.decode_jpeg(jpeg(images[2])))


def test_mismatched_idx_fails_clearly(tmp_path, images):
    a, b = tmp_path / "a", tmp_path / "b"
    build_by_hand(a, [0, 1, 1, 2], [jpeg(i) for i in images[:4]])
    build_by_hand(b, [0, 0, 1, 2, 2], [jpeg(i) for i in images[4:9]])
    os.replace(b / "train.idx", a / "train.idx")
    with pytest.raises(InputError, match="does not match"):
        FaceRecordDataset(str(a))
    (a / "train.idx").write_text("0\t99999999\n")
    with pytest.raises(InputError, match="past the end"):
        FaceRecordDataset(str(a))


def test_wrong_image_size_names_the_record(tmp_path, images):
    small = cv2.resize(images[1], (96, 96))
    build_by_hand(tmp_path, [0, 0, 1], [jpeg(images[0]), jpeg(small), jpeg(images[2])])
    ds = FaceRecordDataset(str(tmp_path))
    with pytest.raises(InputError, match=r"record 2 is 96x96"):
        ds[1]


def test_writer_refuses_bad_samples_and_leaves_nothing(tmp_path, images):
    with pytest.raises(InputError, match="sorted"):
        write_rec_set(tmp_path, [(images[0], 1), (images[1], 0)], workers=1, progress=False)
    with pytest.raises(InputError, match="96x96"):
        write_rec_set(tmp_path, [(images[0], 0), (cv2.resize(images[1], (96, 96)), 0)], workers=1, progress=False)
    with pytest.raises(InputError, match="num_classes"):
        write_rec_set(tmp_path, [(images[0], 3)], num_classes=2, workers=1, progress=False)
    assert os.listdir(tmp_path) == []


def write_png(path, img):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(str(path), img[:, :, ::-1])


def test_cli_pack_image_folder_round_trip_and_info(tmp_path, images, capsys):
    names = ["bob", "alice", "carol"]  # sorted: alice=0, bob=1, carol=2
    counts = {"alice": 2, "bob": 3, "carol": 1}
    expected, i = [], 0
    for name in sorted(names):
        for j in range(counts[name]):
            write_png(tmp_path / "faces" / name / f"{j:02d}.png", images[i])
            expected.append((images[i], sorted(names).index(name)))
            i += 1
    # an already-encoded 112x112 JPEG is stored byte for byte
    (tmp_path / "faces" / "carol" / "zz.jpg").write_bytes(jpeg(images[7]))
    expected.append((images[7], 2))
    rc = cli_main(["data", "pack", "--image-folder", str(tmp_path / "faces"), "--prefix", str(tmp_path / "out" / "train"),
                   "--quality", "100", "--workers", "2", "--json", str(tmp_path / "pack.json")])
    assert rc == 0
    rep = json.loads((tmp_path / "pack.json").read_text())
    assert (rep["num_images"], rep["num_ids"], rep["num_classes"]) == (7, 3, 3)
    ds = FaceRecordDataset(str(tmp_path / "out"))
    assert [ds[i][1] for i in range(len(ds))] == [lab for _, lab in expected]
    for i, (img, _) in enumerate(expected[:-1]):
        assert np.abs(ds[i][0].astype(int) - img).mean() < 2.0
    np.testing.assert_array_equal(ds[6][0], simplejpeg.decode_jpeg(jpeg(images[7])))
    capsys.readouterr()
    assert cli_main(["data", "info", str(tmp_path / "out"), "--verify", "--json", str(tmp_path / "info.json")]) == 0
    out = capsys.readouterr().out
    assert "images 7" in out and "identities 3" in out
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["images_per_id"] == {"min": 2, "median": 2.0, "mean": 7 / 3, "max": 3}
    assert info["images_per_id_histogram"]["1"] == 0 and info["images_per_id_histogram"]["2-5"] == 3
    assert info["num_corrupt"] == 0


def test_cli_pack_from_lst_aligns_unaligned_lines(tmp_path, images):
    from shrinkteanet.core.constants import ARCFACE_TEMPLATE

    # an unaligned 200x160 photo whose landmarks are the template shifted by (30, 40) and scaled 1.25
    big = cv2.resize(images[3], (160, 200))
    write_png(tmp_path / "raw" / "p.png", big)
    lm = ARCFACE_TEMPLATE * 1.25 + [30, 40]
    write_png(tmp_path / "raw" / "a.png", images[0])
    lines = [
        "1\traw/a.png\t1",
        "0\traw/p.png\t0\t20\t30\t170\t190\t" + "\t".join(f"{v:.4f}" for v in list(lm[:, 0]) + list(lm[:, 1])),
    ]
    (tmp_path / "in.lst").write_text("\n".join(lines) + "\n")
    rc = cli_main(["data", "pack", "--lst", str(tmp_path / "in.lst"), "--prefix", str(tmp_path / "o" / "train"),
                   "--quality", "100", "--workers", "1"])
    assert rc == 0
    ds = FaceRecordDataset(str(tmp_path / "o"))
    assert [ds[0][1], ds[1][1]] == [0, 1]  # sorted by label
    # the aligned crop is the inverse warp: (x - 30)/1.25 etc.
    inv = np.float32([[1.25, 0, 30], [0, 1.25, 40]])
    ref = cv2.warpAffine(big, inv, (112, 112), flags=cv2.WARP_INVERSE_MAP)
    assert np.abs(ds[0][0][8:-8, 8:-8].astype(int) - ref[8:-8, 8:-8]).mean() < 3.0
    assert np.abs(ds[1][0].astype(int) - images[0]).mean() < 2.0


def test_cli_pack_reports_bad_input(tmp_path, capsys):
    (tmp_path / "bad.lst").write_text("1\tmissing.jpg\n")
    assert cli_main(["data", "pack", "--lst", str(tmp_path / "bad.lst"), "--prefix", str(tmp_path / "o/train")]) == 2
    assert "bad.lst:1" in capsys.readouterr().err


def test_index_parsing_errors(tmp_path, images):
    build_by_hand(tmp_path, [0, 1], [jpeg(images[0]), jpeg(images[1])])
    good = (tmp_path / "train.idx").read_text()
    r = RecordReader(tmp_path / "train.rec")
    assert r.keys.tolist() == [0, 1, 2, 3, 4] and 4 in r and 5 not in r
    (tmp_path / "train.idx").write_text(good + "7\tabc\n")
    with pytest.raises(InputError, match="line 6 is not"):
        RecordReader(tmp_path / "train.rec")
    (tmp_path / "train.idx").write_text(good + "7\n")
    with pytest.raises(InputError, match="line 6 is not"):
        RecordReader(tmp_path / "train.rec")
    (tmp_path / "train.idx").write_text("")
    with pytest.raises(InputError, match="empty index"):
        RecordReader(tmp_path / "train.rec")
    with pytest.raises(InputError, match="no record with key 9"):
        r.read(9)


def test_gluon_dataloader_over_the_dataset(written, images):
    """The dataset feeds Gluon's own DataLoader, also from forked workers (each
    reopens the .rec after fork)."""
    d, labels, _ = written
    ds = FaceRecordDataset(str(d))
    ds[0]  # opens the file in this process first
    for workers in (0, 2):
        loader = mx.gluon.data.DataLoader(ds, batch_size=3, shuffle=False, num_workers=workers)
        got = [(x.asnumpy(), y.asnumpy()) for x, y in loader]
        assert np.concatenate([y for _, y in got]).tolist() == labels
        x = np.concatenate([x for x, _ in got])
        assert x.shape == (9, 112, 112, 3)
        assert np.abs(x.astype(int) - np.stack(images)).mean() < 2.0
