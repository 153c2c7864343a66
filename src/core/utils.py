"""Small shared helpers: atomic writes, JSON reports, model/context arguments."""
import contextlib
import errno
import json
import os
import secrets

from shrinkteanet.core.errors import InputError
from shrinkteanet.core.logutil import get_logger

log = get_logger(__name__)


@contextlib.contextmanager
def atomic_path(path, *, durable=True):
    """A temp path beside ``path`` to write; renamed onto ``path`` on success.

    The one atomic writer of the package (CONTRACTS "written atomically (temp file +
    rename)"): a crash or an exception never leaves a half-written file under the final
    name, and an old file there stays intact until the new one is complete.  The temp
    file is created empty in ``path``'s folder (a rename across file systems would not be
    atomic) with the mode a plain ``open()`` gives, for writers that want a file name
    (``mx.nd.save``, ``np.save``).

    Parameters
    ----------
    path : str or os.PathLike
        Final name; its folder is created when missing.
    durable : bool
        fsync the file before the rename and the folder after it, so that the new
        contents (not just the rename) survive a power cut.  ``False`` for writers of
        very many small files (MegaFace features), where a crash may leave a stray
        ``.tmp`` but still never a short file under the name.

    Yields
    ------
    str
        The temp path, ``NAME.XXXXXXXX.tmp`` (the pattern ``run_folder`` sweeps).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = _new_temp_file(path)
    try:
        yield tmp
        if durable:
            _fsync(tmp, os.O_RDONLY)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        _fsync(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


#: The longest file name (bytes) most file systems take (ext4, xfs, btrfs, tmpfs); ``name_max``
#: asks the file system itself.
NAME_MAX = 255


def name_max(folder):
    """The longest file name (bytes) allowed in ``folder`` (its nearest existing ancestor)."""
    folder = os.path.abspath(folder)
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return NAME_MAX


def temp_name_beside(path, tag):
    """``PATH<tag>.tmp``, its file name cut so that it fits the folder's ``name_max``: a final
    name of 250 bytes must still get a temp name (issue 21).  The cut keeps the start of the
    name, which the sweeps of stray temp files (``model.checkpoint.stray_files``) match on."""
    path = os.path.abspath(path)
    folder, name = os.path.split(path)
    tail = os.fsencode(f"{tag}.tmp")
    room = name_max(folder) - len(tail)
    raw = os.fsencode(name)
    if len(raw) > room:
        raw = _cut_at_character(raw, max(room, 1))
    return os.path.join(folder, os.fsdecode(raw + tail))


def _cut_at_character(raw, size):
    """The first ``size`` bytes of a file name, less the bytes of a UTF-8 character cut in two."""
    cut = raw[:size]
    for drop in range(4):
        try:
            (cut[:len(cut) - drop] if drop else cut).decode("utf-8")
            return cut[:len(cut) - drop] if drop else cut
        except UnicodeDecodeError:
            continue
    return cut  # not UTF-8 at all: bytes are bytes


def _new_temp_file(path):
    """Create ``PATH.<random>.tmp`` (``temp_name_beside``) exclusively with mode 0o666 less the
    umask (what ``open()`` gives; ``mkstemp``'s 0600 would hide checkpoints and caches from
    other users)."""
    for _ in range(100):
        tmp = temp_name_beside(path, f".{secrets.token_hex(4)}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{path}: no free temp name beside it")


def _fsync(path, flags):
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError as e:
        # some file systems (and folders on a few of them) cannot be synced; the rename is still atomic
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path, mode="wb", *, durable=True):
    """``open(path, mode)`` through ``atomic_path``: the file appears under ``path``
    only when the ``with`` block completes.

    Parameters
    ----------
    path : str or os.PathLike
        Final name.
    mode : str
        A write mode, ``"wb"`` or ``"w"``.
    durable : bool
        See ``atomic_path``.

    Yields
    ------
    file object
    """
    with atomic_path(path, durable=durable) as tmp, open(tmp, mode) as f:
        yield f


def path_inside(folder, rel, what):
    """``folder/rel``, refused unless it resolves (``..``, absolute paths and symbolic links
    followed) inside ``folder``: an output path taken from a list never escapes its output
    folder.  ``what`` names the list entry in the ``InputError``."""
    root = os.path.realpath(folder)
    path = os.path.join(folder, rel)
    real = os.path.realpath(path)
    if os.path.isabs(rel) or os.path.commonpath([root, real]) != root:
        raise InputError(f"{what}: path {rel!r} leads outside the output folder {folder}")
    return path


def text_lines(path):
    """``(line number, line)`` of a UTF-8 text file; another encoding is an ``InputError``
    naming the file, line and byte (lists written by hand or by other tools)."""
    with open(path, "rb") as f:
        for no, raw in enumerate(f, 1):
            try:
                yield no, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"{path}:{no}: not UTF-8 text (byte {raw[e.start]:#04x} at column {e.start + 1})") \
                    from None


def atomic_write_bytes(path, data):
    """``data`` (bytes) to ``path`` through ``atomic_path``."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_json(path, obj):
    """JSON report, atomically; figures are written unrounded."""
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=_json_default)
        f.write("\n")


def _json_default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def file_sha1(path, *, chunk=1 << 20):
    """sha1 hex digest of the bytes of ``path``, read in ``chunk``-byte pieces (a 250 MB
    teacher's params in well under a second, never whole in memory)."""
    import hashlib

    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(chunk), b""):
            digest.update(piece)
    return digest.hexdigest()


def parse_model_arg(text):
    """``PREFIX,EPOCH`` -> (prefix, epoch), as on every command line (CONTRACTS.md)."""
    prefix, sep, epoch = str(text).rpartition(",")
    if not sep or not prefix or not epoch.strip().isdigit():
        raise InputError(f"--model must be PREFIX,EPOCH (e.g. models/r90/model,1), got {text!r}")
    return prefix, int(epoch)


def parse_gpus(text):
    """``'0,1,2'`` -> [0, 1, 2]; empty/None/``cpu``/``-1`` -> [] (CPU)."""
    if text is None or str(text).strip() in ("", "-1", "cpu"):
        return []
    try:
        return [int(x) for x in str(text).split(",") if x.strip() != ""]
    except ValueError:
        raise InputError(f"--gpus must be a comma-separated list of device ids, got {text!r}") from None


def visible_gpus():
    """GPUs this process may use: ``mx.context.num_gpus()`` on a CUDA build, 0 on a CPU build
    or when the CUDA driver cannot be queried."""
    import mxnet as mx

    if not mx.runtime.Features().is_enabled("CUDA"):
        return 0
    try:
        return int(mx.context.num_gpus())
    except mx.base.MXNetError:
        return 0


def choose_gpus(gpus, *, one=False):
    """The GPU ids of a command: ``--gpus`` as given (``''``/``cpu`` force the CPU), or, when it
    is absent (``None``), every visible GPU of a CUDA build (the first one only when ``one``).
    The automatic choice is said in one log line (a CUDA build's CPU fallback too): the CPU is
    never picked silently on a GPU machine."""
    if gpus is not None:
        return parse_gpus(gpus) if not isinstance(gpus, (list, tuple)) else list(gpus)
    count = visible_gpus()
    if count == 0:
        import mxnet as mx

        if mx.runtime.Features().is_enabled("CUDA"):
            log.info("--gpus not given and no GPU visible: running on the CPU")
        return []
    ids = [0] if one else list(range(count))
    log.info("--gpus not given: using %s (%d visible; --gpus '' for the CPU)",
                ",".join(f"gpu({i})" for i in ids), count)
    return ids


def get_contexts(gpus=None, *, one=False):
    """MXNet contexts for ``--gpus`` (``choose_gpus``: absent -> every visible GPU, ``''`` -> the
    CPU).  A GPU id this MXNet build or machine does not have is an ``InputError`` (MXNet itself
    fails later, deep inside)."""
    import mxnet as mx

    ids = choose_gpus(gpus, one=one)
    if ids:
        check_gpus(ids)
    return [mx.gpu(i) for i in ids] if ids else [mx.cpu()]


def check_gpus(ids):
    """``--gpus`` must name GPUs that exist and an MXNet built with CUDA."""
    import mxnet as mx

    if not mx.runtime.Features().is_enabled("CUDA"):
        raise InputError(f"--gpus {','.join(map(str, ids))}: this MXNet is a CPU build (install .[cu112] for GPUs, "
                         "or leave --gpus out)")
    try:
        count = mx.context.num_gpus()
    except mx.base.MXNetError as e:
        raise InputError(f"--gpus: no usable GPU ({mxnet_reason(e)})") from None
    bad = [i for i in ids if not 0 <= i < count]
    if bad:
        raise InputError(f"--gpus {','.join(map(str, ids))}: GPU {bad[0]} does not exist ({count} visible)")


def mxnet_reason(exc):
    """The line of an ``MXNetError`` that says what went wrong (MXNet often starts its message
    with a C++ stack trace, so the first line is "Traceback (most recent call last):")."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    skip = ("Traceback", "File ", "[bt]", "Stack trace", "Error in operator")
    useful = [ln for ln in lines if not ln.startswith(skip) and not ln[:1].isdigit()]
    text = (useful[-1] if useful else (lines[-1] if lines else type(exc).__name__))
    for prefix in ("mxnet.base.MXNetError: ", "MXNetError: "):
        if text.startswith(prefix):
            text = text[len(prefix):]
    return text[:300]


def process_pool(workers, initializer=None):
    """A ``multiprocessing.Pool`` whose workers start from a clean process.

    ``fork`` copies the parent's thread pools (OpenCV's, OpenMP's) in whatever
    state they are in; a child that then touches them can wait forever on a lock
    held by a thread that does not exist in the child.  ``forkserver`` forks
    from a fresh single-threaded server instead, so pools created after
    OpenCV/MXNet work (as in the test suite, or after training) do not hang.
    """
    import multiprocessing

    return multiprocessing.get_context("forkserver").Pool(workers, initializer=initializer)
