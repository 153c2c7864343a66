"""The one I/O layer: ``core.utils.atomic_path`` (and the writers built on it) and
``data.images`` (the one decoder/reader/encoder), plus the ``data`` CLI's worker pool."""
import os
import stat
import struct

import cv2
import mxnet as mx
import numpy as np
import pytest
import simplejpeg

from shrinkteanet.cli import main as cli_main
from shrinkteanet.core import utils
from shrinkteanet.core.errors import InputError
from shrinkteanet.data import images


def leftovers(folder):
    return sorted(n for n in os.listdir(folder) if n.endswith(".tmp"))


# ----------------------------------------------------------------------------- atomic writes


class Boom(RuntimeError):
    pass


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "report.json"
    utils.write_json(target, {"old": 1})
    before = target.read_bytes()
    with pytest.raises(Boom):
        with utils.atomic_open(target, "w") as f:
            f.write('{"new": ')  # half a file, then the writer dies
            raise Boom
    assert target.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_failed_writer_by_name_leaves_no_temp(tmp_path):
    """``atomic_path`` for writers that want a file name (``mx.nd.save``)."""
    target = tmp_path / "model-0001.params"
    target.write_bytes(b"old")
    with pytest.raises(Boom):
        with utils.atomic_path(target) as tmp:
            assert os.path.dirname(tmp) == str(tmp_path) and tmp.endswith(".tmp")
            mx.nd.save(tmp, {"arg:w": mx.nd.ones((2,))})
            raise Boom
    assert target.read_bytes() == b"old"
    assert leftovers(tmp_path) == []
    with utils.atomic_path(target) as tmp:
        mx.nd.save(tmp, {"arg:w": mx.nd.ones((2,))})
    assert mx.nd.load(str(target))["arg:w"].asnumpy().tolist() == [1.0, 1.0]
    assert leftovers(tmp_path) == []


def test_fsyncs_file_before_rename_and_folder_after(tmp_path, monkeypatch):
    target = tmp_path / "sub" / "x.bin"
    seen = []
    real_fsync = os.fsync

    def counting_fsync(fd):
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        seen.append((kind, target.exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    utils.atomic_write_bytes(target, b"payload")
    assert seen == [("file", False), ("dir", True)]  # contents durable before the name, the name after
    assert target.read_bytes() == b"payload"

    seen.clear()
    with utils.atomic_open(tmp_path / "feature.bin", "wb", durable=False) as f:
        f.write(b"1234")
    assert seen == []  # MegaFace's million feature files skip both
    assert (tmp_path / "feature.bin").read_bytes() == b"1234"


def test_written_file_has_plain_open_mode(tmp_path):
    old = os.umask(0o022)
    try:
        utils.atomic_write_bytes(tmp_path / "a", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o644  # not mkstemp's 0600


# ----------------------------------------------------------------------------- images


def picture(h=48, w=64, seed=0):
    rng = np.random.RandomState(seed)
    img = (rng.rand(h, w, 3) * 255).astype(np.uint8)
    img[: h // 3, : w // 4] = (250, 20, 10)  # a red corner: RGB order shows
    return cv2.GaussianBlur(img, (5, 5), 1.5)


def test_jpeg_decodes_as_insightface(tmp_path):
    rgb = picture()
    jpg = images.encode_image(rgb, quality=90)
    got = images.decode_image(jpg)
    # InsightFace's decode paths: mx.image.imdecode (RGB) and cv2.imdecode (BGR)
    np.testing.assert_array_equal(got, mx.image.imdecode(jpg).asnumpy())
    np.testing.assert_array_equal(got, cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1])
    assert got.dtype == np.uint8 and got.shape == (48, 64, 3) and got[2, 2, 0] > 200 > got[2, 2, 2]
    path = tmp_path / "a.jpg"
    path.write_bytes(jpg)
    np.testing.assert_array_equal(images.read_image(path), got)
    np.testing.assert_array_equal(images.read_image(path, photo=True), cv2.imread(str(path))[:, :, ::-1])


def test_png_decodes_losslessly(tmp_path):
    rgb = picture(seed=1)
    path = tmp_path / "a.png"
    cv2.imwrite(str(path), rgb[:, :, ::-1])
    np.testing.assert_array_equal(images.read_image(path), rgb)
    np.testing.assert_array_equal(images.decode_image(path.read_bytes(), photo=True), rgb)
    gray = tmp_path / "g.png"
    cv2.imwrite(str(gray), rgb[:, :, 0])
    assert images.read_image(gray).shape == (48, 64, 3)  # three channels whatever the file holds


def with_exif_orientation(jpg, orientation):
    """``jpg`` with an APP1 EXIF segment holding one Orientation tag (big-endian TIFF)."""
    tiff = b"MM\x00\x2a" + struct.pack(">IH", 8, 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0)
    body = b"Exif\x00\x00" + tiff + struct.pack(">I", 0)
    return jpg[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + jpg[2:]


def test_photo_reading_applies_exif_orientation_crops_do_not(tmp_path):
    rgb = picture(40, 60)
    path = tmp_path / "camera.jpg"
    path.write_bytes(with_exif_orientation(images.encode_image(rgb), 6))  # 6 = rotate 90 degrees clockwise
    crop, photo = images.read_image(path), images.read_image(path, photo=True)
    assert crop.shape == (40, 60, 3) and photo.shape == (60, 40, 3)
    np.testing.assert_array_equal(photo, cv2.imread(str(path))[:, :, ::-1])  # as data align/detect read before
    np.testing.assert_array_equal(crop, simplejpeg.decode_jpeg(path.read_bytes()))  # as evaluation read before


@pytest.mark.parametrize("content,reason", [(b"\xff\xd8 not really a jpeg", "not a readable image"),
                                            (b"hello", "not a readable image"),
                                            (b"", "not a readable image"),
                                            (None, "no such file")])
def test_bad_file_is_one_line_naming_it(tmp_path, content, reason):
    path = tmp_path / "bad.jpg"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError) as e:
        images.read_image(path)
    assert str(e.value) == f"{path}: {reason}"
    assert images.read_image_or_none(path) is None
    with pytest.raises(ValueError):
        images.decode_image(content or b"")


def test_encode_subsampling_and_header_size():
    rgb = picture()
    assert images.encode_image(rgb, 80, subsampling="444") == simplejpeg.encode_jpeg(rgb, quality=80, colorspace="RGB")
    jpg = images.encode_image(rgb, 80)
    assert simplejpeg.decode_jpeg_header(jpg)[3] == "420"  # what OpenCV's imencode writes
    assert images.jpeg_size(jpg) == (48, 64)
    assert images.jpeg_size(b"\x89PNG....") is None
    assert images.encode_image(jpg) == jpg
    with pytest.raises(InputError, match="expected 112x112"):
        images.encode_image(rgb, image_size=(112, 112))


# ----------------------------------------------------------------------------- data CLI pool


def test_pack_and_align_give_the_same_bytes_with_worker_processes(tmp_path):
    """``data pack`` / ``data align`` with ``--workers 2`` (``core.utils.process_pool``) write
    exactly what one process writes."""
    for folder, (h, w) in (("faces", (112, 112)), ("photos", (120, 100))):
        for ident in range(2):
            os.makedirs(tmp_path / folder / f"id{ident}")
            for k in range(3):
                cv2.imwrite(str(tmp_path / folder / f"id{ident}" / f"{k}.png"), picture(h, w, seed=10 * ident + k))
    lst = "".join(f"0\tphotos/id{i}/{k}.png\t{i}\n" for i in range(2) for k in range(3))
    (tmp_path / "in.lst").write_text(lst)
    for w in ("1", "2"):
        assert cli_main(["data", "pack", "--image-folder", str(tmp_path / "faces"), "--prefix",
                         str(tmp_path / f"w{w}" / "train"), "--workers", w]) == 0
        assert cli_main(["data", "align", "--lst", str(tmp_path / "in.lst"), "--out-dir", str(tmp_path / f"al{w}"),
                         "--workers", w]) == 0
    assert (tmp_path / "w1" / "train.rec").read_bytes() == (tmp_path / "w2" / "train.rec").read_bytes()
    for i in range(2):
        for k in range(3):
            rel = os.path.join("photos", f"id{i}", f"{k}.jpg")
            assert (tmp_path / "al1" / rel).read_bytes() == (tmp_path / "al2" / rel).read_bytes()
    assert leftovers(tmp_path / "w2") == []
