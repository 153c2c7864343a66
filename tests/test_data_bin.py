"""Verification .bin: round trip, Python 2 pickles, and the restricted unpickler."""
import logging
import os
import pickle
import struct

import cv2
import numpy as np
import pytest
import simplejpeg

from shrinkteanet.data.binfile import load_bin, read_bin_raw, write_bin
from shrinkteanet.core.errors import InputError


def face(rng, size=112):
    small = rng.randint(0, 256, (5, 5, 3)).astype(np.uint8)
    return cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)


def jpeg(img):
    return simplejpeg.encode_jpeg(np.ascontiguousarray(img), quality=95, colorspace="RGB")


def py2_pickle(jpegs, issame):
    """What Python 2's pickle.dump((bins, issame), f, protocol=2) produces: str as
    BINSTRING/SHORT_BINSTRING, bools as NEWTRUE/NEWFALSE (here the issame list uses
    protocol-0 'I01'/'I00' bools, which Python 2 also wrote)."""
    out = [b"\x80\x02", b"]", b"("]
    for j in jpegs:
        out.append(b"U" + bytes([len(j)]) + j if len(j) < 256 else b"T" + struct.pack("<i", len(j)) + j)
    out += [b"e", b"(", b"l"]
    for i, v in enumerate(issame):
        out.append((b"\x88" if v else b"\x89") if i % 2 else (b"I01\na" if v else b"I00\na"))
        if i % 2:
            out.append(b"a")
    out += [b"\x86", b"."]
    return b"".join(out)


@pytest.fixture(scope="module")
def pairs():
    rng = np.random.RandomState(0)
    imgs = np.stack([face(rng) for _ in range(6)])
    return imgs, [True, False, True]


def test_write_load_round_trip(tmp_path, pairs):
    imgs, issame = pairs
    write_bin(tmp_path / "v.bin", imgs, issame, quality=100)
    raw = pickle.loads((tmp_path / "v.bin").read_bytes())  # plain containers only
    assert isinstance(raw, tuple) and all(isinstance(b, bytes) for b in raw[0]) and raw[1] == issame
    got, same = load_bin(tmp_path / "v.bin")
    assert got.dtype == np.uint8 and got.shape == (6, 112, 112, 3)
    assert same.dtype == bool and same.tolist() == issame
    assert np.abs(got.astype(int) - imgs).mean() < 2.0
    # JPEG bytes given as bytes are stored untouched
    write_bin(tmp_path / "w.bin", [jpeg(i) for i in imgs], issame)
    assert read_bin_raw(tmp_path / "w.bin")[0] == [jpeg(i) for i in imgs]


def test_python2_pickle_reads_with_bytes_and_latin1(tmp_path, pairs):
    imgs, issame = pairs
    jpegs = [jpeg(i) for i in imgs]
    (tmp_path / "py2.bin").write_bytes(py2_pickle(jpegs, issame))
    # the hand-made stream is what Python reads as a Python 2 pickle
    assert pickle.loads(py2_pickle(jpegs, issame), encoding="bytes") == (jpegs, issame)
    for enc in ("bytes", "latin1"):
        got, same = load_bin(tmp_path / "py2.bin", encoding=enc)
        assert same.tolist() == issame
        for g, j in zip(got, jpegs):
            np.testing.assert_array_equal(g, simplejpeg.decode_jpeg(j))


class _OpenFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


class _System:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_malicious_pickles_are_refused_and_nothing_runs(tmp_path, pairs):
    imgs, _ = pairs
    j = jpeg(imgs[0])
    marker = tmp_path / "pwned"
    evil = [
        pickle.dumps(([_OpenFile(str(marker)), j], [True]), protocol=2),
        pickle.dumps(([j, j], [_System(str(marker))]), protocol=4),
        pickle.dumps(_System(str(marker)), protocol=0),
        # protocol-0 INST opcode: builds an object through find_class as well
        b"(S'touch " + str(marker).encode() + b"'\nios\nsystem\n.",
        pickle.dumps(([j, j], np.array([True])), protocol=2),  # numpy arrays are not plain containers
    ]
    for n, data in enumerate(evil):
        p = tmp_path / f"evil{n}.bin"
        p.write_bytes(data)
        with pytest.raises(InputError, match=f"evil{n}.bin"):
            load_bin(p)
        assert not marker.exists()


def test_bad_structures(tmp_path, pairs):
    imgs, _ = pairs
    j = jpeg(imgs[0])
    cases = {
        "count": pickle.dumps(([j, j, j], [True]), protocol=4),
        "intflag": pickle.dumps(([j, j], [1]), protocol=4),
        "dict": pickle.dumps({"a": [j]}, protocol=4),
        "notjpeg": pickle.dumps(([j, b"garbage"], [False]), protocol=4),
        "trunc": pickle.dumps(([j, j], [False]), protocol=4)[:50],
    }
    msgs = {"count": "3 images for 1 pairs", "intflag": r"issame\[0\] is a int", "dict": "expected a pair",
            "notjpeg": "image 1 cannot be decoded", "trunc": "truncated"}
    for name, data in cases.items():
        (tmp_path / f"{name}.bin").write_bytes(data)
        with pytest.raises(InputError, match=msgs[name]):
            load_bin(tmp_path / f"{name}.bin")
    with pytest.raises(InputError, match="no-such.bin"):
        load_bin(tmp_path / "no-such.bin")


def test_other_sizes_are_resized_with_a_warning(tmp_path, pairs, caplog):
    imgs, _ = pairs
    big = cv2.resize(imgs[1], (120, 120))
    write_bin(tmp_path / "s.bin", [jpeg(imgs[0]), jpeg(big)], [True])
    with caplog.at_level(logging.WARNING, logger="shrinkteanet"):
        got, _ = load_bin(tmp_path / "s.bin")
    assert got.shape == (2, 112, 112, 3) and "1 images resized" in caplog.text
    ref = cv2.resize(simplejpeg.decode_jpeg(jpeg(big)), (112, 112), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(got[1], ref)
