"""Issue 16, data and evaluation side: labels outside num_classes, loader workers that die with
their trainer, output paths that stay inside their folder, protocol-2 .bin files, the TAR
tie order."""
import json
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

from shrinkteanet.study.tiny import layout_images, train_overrides, write_tiny_set
from shrinkteanet.core.errors import InputError


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny_set(tmp_path_factory.mktemp("inputs") / "set", with_bin=False)


# --- defect 2 -------------------------------------------------------------------------------
@pytest.mark.parametrize("workers", [0, 1])
def test_labels_outside_num_classes_are_refused_naming_record_and_label(tmp_path, workers):
    from shrinkteanet.data.loader import FaceLoader
    from shrinkteanet.data.recordio import FaceRecordDataset, write_rec_set

    write_rec_set(tmp_path, layout_images(ids=8, per=2), image_size=(32, 32), workers=1, progress=False)
    (tmp_path / "property").write_text("3,32,32")  # labels 0..7 but property says 3 classes
    ds = FaceRecordDataset(str(tmp_path))
    first_bad = min(k for k in ds.all_record_ids if ds.label_of(k) >= 3)
    loader = FaceLoader(str(tmp_path), 16, workers=workers, mirror=False)
    try:
        with pytest.raises(InputError, match=r"train\.rec: record \d+ has label [3-7], outside 0\.\.2 "
                                             r"\(num_classes=3 from .*property\)"):
            for _ in loader.epoch(0):
                pass
    finally:
        loader.close()
    assert ds.label_of(first_bad) >= 3


# --- defect 3 -------------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_loader_workers_exit_when_the_trainer_dies(data, tmp_path, sig):
    """The old workers each held the write end of their own task pipe and blocked forever."""
    cmd = [sys.executable, "-m", "shrinkteanet", "train", "--config", "mfnr_self", "--out", str(tmp_path / "run"),
           *train_overrides(data, None, "max_batches=100000", "lr_schedule=constant"), "workers=2"]
    trainer = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers = []
    try:
        proc = psutil.Process(trainer.pid)
        deadline = time.time() + 90
        while len(proc.children()) < 2:
            assert time.time() < deadline and trainer.poll() is None, "the loader workers never started"
            time.sleep(0.2)
        time.sleep(1.0)  # let the workers block in recv() between batches
        workers = proc.children(recursive=True)
        trainer.send_signal(sig)
        trainer.wait(timeout=30)
        gone, alive = psutil.wait_procs(workers, timeout=5)
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not alive, f"still running 5 s after {sig.name}: {[p.pid for p in alive]}"
    finally:  # leave nothing behind even when the test fails (orphans are no longer our children)
        for p in workers + psutil.Process(os.getpid()).children(recursive=True):
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass


# --- defect 6 -------------------------------------------------------------------------------
def test_megaface_list_entries_cannot_write_outside_out(tmp_path):
    from shrinkteanet.eval import megaface as M
    from test_eval_megaface import _FakeEmbedder, _tree

    root = tmp_path / "mf"
    fs, ds = _tree(root)
    victim = tmp_path / "elsewhere"
    escape = "../../../../elsewhere/x.png"
    (root / "templatelists" / "megaface_features_list.json_10_1").write_text(json.dumps({"path": ds + [escape]}))
    out = tmp_path / "a" / "b" / "out"
    with pytest.raises(InputError, match=r"MegaFace list entry '\.\./\.\./\.\./\.\./elsewhere/x\.png'.*outside"):
        M.generate(_FakeEmbedder(), str(root), str(out), "x", image_size=16)
    assert not victim.exists() and not out.exists()  # refused before anything was written
    for bad in ("/tmp/abs.png", "g0/../../../x.png"):
        with pytest.raises(InputError, match="outside the output folder"):
            M.feature_path(str(out / "features" / "megaface"), bad, "x")
    assert M.feature_path(str(out), "g0/d0.png", "x") == os.path.join(str(out), "g0/d0.png_x.bin")


def test_path_inside_follows_symbolic_links(tmp_path):
    from shrinkteanet.core.utils import path_inside

    (tmp_path / "out").mkdir()
    os.symlink(str(tmp_path), str(tmp_path / "out" / "up"))
    with pytest.raises(InputError, match="entry 7: path 'up/x'"):
        path_inside(str(tmp_path / "out"), "up/x", "entry 7")
    assert path_inside(str(tmp_path / "out"), "a/../b", "e") == os.path.join(str(tmp_path / "out"), "a/../b")


# --- defect 8 -------------------------------------------------------------------------------
def _jpegs(n=4):
    from shrinkteanet.data.recordio import encode_image

    return [encode_image(img) for img, _ in layout_images(ids=n, per=1, size=32)]


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_bin_from_python3_reads_under_every_protocol(tmp_path, protocol):
    from shrinkteanet.data.binfile import load_bin, read_bin_raw

    jpegs, issame = _jpegs(), [True, False]
    path = tmp_path / f"p{protocol}.bin"
    path.write_bytes(pickle.dumps((jpegs, issame), protocol=protocol))
    got, same = read_bin_raw(str(path))
    assert got == jpegs and same.tolist() == issame
    images, _ = load_bin(str(path), image_size=(32, 32))
    assert images.shape == (4, 32, 32, 3)


def test_bin_python2_layout_still_reads(tmp_path):
    from shrinkteanet.data.binfile import read_bin_raw
    from test_data_bin import py2_pickle

    jpegs = _jpegs()
    (tmp_path / "py2.bin").write_bytes(py2_pickle(jpegs, [False, True]))
    got, same = read_bin_raw(str(tmp_path / "py2.bin"))
    assert got == jpegs and same.tolist() == [False, True]


def _reduce_pickle(module, name, args_ops):
    """A protocol-2 pickle ``([module.name(*args), ...], [True])`` built from opcodes."""
    return (b"\x80\x02]q\x00(c" + module + b"\n" + name + b"\n" + args_ops + b"R" + b"e]\x88a\x86.")


@pytest.mark.parametrize("call", [
    (b"_codecs", b"encode", b"X\x03\x00\x00\x00abcX\x05\x00\x00\x00utf-8\x86"),  # another codec
    (b"_codecs", b"encode", b"X\x03\x00\x00\x00abcX\x03\x00\x00\x00hex\x86"),
    (b"_codecs", b"encode", b"C\x03abcX\x06\x00\x00\x00latin1\x86"),  # bytes, not str
    (b"_codecs", b"encode", b"X\x03\x00\x00\x00abc\x85"),  # one argument
    (b"_codecs", b"decode", b"X\x03\x00\x00\x00abcX\x06\x00\x00\x00latin1\x86"),
    (b"codecs", b"encode", b"X\x03\x00\x00\x00abcX\x06\x00\x00\x00latin1\x86"),
    (b"builtins", b"bytes", b")"),
])
def test_bin_refuses_every_other_global_or_call(tmp_path, call):
    from shrinkteanet.data.binfile import read_bin_raw

    path = tmp_path / "evil.bin"
    path.write_bytes(_reduce_pickle(*call))
    with pytest.raises(InputError, match=r"evil\.bin: not a plain verification pickle \(refused"):
        read_bin_raw(str(path))


def test_bin_accepts_exactly_the_latin1_call(tmp_path):
    from shrinkteanet.data.binfile import read_bin_raw

    path = tmp_path / "ok.bin"
    call = b"c_codecs\nencode\nX\x02\x00\x00\x00\xc3\xbfX\x06\x00\x00\x00latin1\x86R"  # ('\xff', 'latin1')
    path.write_bytes(b"\x80\x02](" + call + call + b"e]\x88a\x86.")
    got, same = read_bin_raw(str(path))
    assert got == [b"\xff", b"\xff"] and same.tolist() == [True]


def test_empty_bin_is_one_line(tmp_path):
    from shrinkteanet.data.binfile import read_bin_raw

    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.bin: empty file"):
        read_bin_raw(str(tmp_path / "empty.bin"))
    (tmp_path / "nopairs.bin").write_bytes(pickle.dumps(([], []), protocol=4))
    with pytest.raises(InputError, match=r"nopairs\.bin: no pairs"):
        read_bin_raw(str(tmp_path / "nopairs.bin"))


# --- defect 9 -------------------------------------------------------------------------------
def _pairs_with_dist(d):
    d = np.asarray(d, float)
    ang = np.arccos(1 - d / 2)
    e = np.empty((2 * len(d), 2))
    e[0::2] = [1.0, 0.0]
    e[1::2] = np.stack([np.cos(ang), np.sin(ang)], 1)
    return e


def _separated_set():
    """600 pairs, positives at squared L2 0..2, negatives at 2.1..3.9: accuracy 1.0."""
    rs = np.random.RandomState(0)
    same = np.arange(600) % 2 == 0
    return _pairs_with_dist(np.where(same, rs.uniform(0, 2, 600), rs.uniform(2.1, 3.9, 600))), same


def test_tar_tie_order_legacy_and_stable():
    from shrinkteanet.eval import verification as V

    emb, same = _separated_set()
    legacy = V.evaluate(emb, same, tie_order="legacy")
    stable = V.evaluate(emb, same, tie_order="stable")
    assert legacy == V.evaluate(emb, same)  # the default is InsightFace's own era
    assert legacy["accuracy"] == stable["accuracy"] == 1.0
    assert stable["tar"] == 1.0 and legacy["tar"] == pytest.approx(0.5267, abs=5e-4)
    with pytest.raises(InputError, match="tie_order='scipy'"):
        V.evaluate(emb, same, tie_order="scipy")


def test_verification_report_says_which_tie_order(tmp_path, monkeypatch):
    from shrinkteanet.cli import eval as cli_eval
    from shrinkteanet.cli import main as cli_main
    from shrinkteanet.data.binfile import write_bin
    from shrinkteanet.eval import verification as V

    emb, same = _separated_set()

    class Fixed:
        image_size = 32

        def embed_parts(self, images):
            return emb[: len(images)], np.zeros_like(emb[: len(images)])

    write_bin(str(tmp_path / "lfw.bin"), _jpegs(2) * 600, same)
    monkeypatch.setattr(cli_eval, "_embedder", lambda args: Fixed())
    for name in ("m-symbol.json", "m-0001.params"):  # the report hashes the checkpoint it names (issue 21)
        (tmp_path / name).write_bytes(name.encode())
    for order, tar in (("stable", 1.0), ("legacy", V.evaluate(emb, same)["tar"])):
        js = tmp_path / f"{order}.json"
        assert cli_main(["eval", "verification", "--model", f"{tmp_path}/m,1", "--data-dir", str(tmp_path),
                         "--targets", "lfw",
                         "--tar-tie-order", order, "--out", str(tmp_path / order), "--json", str(js)]) == 0
        fields = json.loads(js.read_text())["lfw"]
        assert fields["tar_tie_order"] == order and fields["tar"] == tar
        assert f"tied FAR values in {order} order" in (tmp_path / order / "verification.md").read_text()
