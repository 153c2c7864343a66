"""A command's outputs, checked before its first expensive step (issue 21, docs/reliability.md "Writers").

Every command declares what it will write (``Output``) and what it reads (``Input``), and
``check_outputs`` refuses, with one ``InputError`` line, before anything is computed:

* an output that is one of the inputs (``export --model P,E --mkldnn P`` would write over the
  checkpoint it reads), or two outputs that are one file;
* a file where a folder is needed (anywhere up the path) and a folder where a file is needed;
* a folder that cannot be written or created: tried with a probe file, since ``os.access``
  says yes to root on ``/proc`` or ``/sys``;
* less free space than the declared estimate (summed per file system);
* a file name longer than the file system allows (the atomic writer cuts its temp names to
  fit, ``utils.temp_name_beside``, so the final name is what counts);
* an existing file that a data writer replaces only with ``--overwrite``.

``check_outputs`` returns the folders the command is about to create; ``remove_created_folders``
takes them away again (the empty ones) when the command fails, so that a failure leaves no
empty folder behind.

A manifest (``read_manifest``, ``add_to_manifest``, ``drop_from_manifest``) is the list of the
files a command wrote into a folder, so that a later ``--overwrite`` removes exactly those
(``training.run_folder``).
"""
import dataclasses
import errno
import json
import os
import secrets

from shrinkteanet.core.errors import InputError
from shrinkteanet.core.utils import atomic_open, name_max, path_inside

#: Free space every writer wants at least: a report, a log, a small model.
MIN_FREE = 1 << 20
#: Longest path the kernel takes (Linux ``PATH_MAX``), where ``pathconf`` cannot say.
PATH_MAX = 4096
MANIFEST_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Output:
    """One thing a command writes.

    Attributes
    ----------
    label : str
        How the user named it, for messages: ``"--json out/r.json"``, ``"--mkldnn m/p"``.
    path : str
        The file, or the folder.
    kind : str
        ``"file"`` or ``"folder"``.
    names : tuple of str
        Files written inside a folder (their names are checked, and compared with the inputs).
    need : int
        Bytes of free space it needs (an estimate, or ``MIN_FREE``).
    replace : bool
        False: an existing file (or folder) at ``path`` or among ``names`` is refused with
        ``hint``; data sets are replaced only with ``--overwrite``.
    hint : str
        What to do instead, for that refusal.
    """

    label: str
    path: str
    kind: str = "file"
    names: tuple = ()
    need: int = MIN_FREE
    replace: bool = True
    hint: str = "pass --overwrite to replace it"

    def files(self):
        """The file paths this output writes (for a folder: its ``names``)."""
        if self.kind == "folder":
            return [os.path.join(self.path, n) for n in self.names]
        return [self.path]


@dataclasses.dataclass(frozen=True)
class Input:
    """One file (or folder, or checkpoint prefix) a command reads; ``label`` names it for messages."""

    label: str
    path: str


def file_output(option, path, **kw):
    """``Output`` of a file named by ``option`` (``--json FILE``); None when ``path`` is unset."""
    return Output(f"{option} {path}", os.fspath(path), **kw) if path else None


def folder_output(option, path, **kw):
    """``Output`` of a folder named by ``option``; None when ``path`` is unset."""
    return Output(f"{option} {path}", os.fspath(path), kind="folder", **kw) if path else None


def check_outputs(outputs, inputs=()):
    """Refuse (``InputError``, one line) the first output that cannot or may not be written.

    Parameters
    ----------
    outputs : iterable of Output or None
        What the command writes (None entries, options left unset, are skipped).
    inputs : iterable of Input or None
        What it reads; no output may be one of them.

    Returns
    -------
    list of str
        The folders that do not exist yet and that writing the outputs creates, deepest
        first (``remove_created_folders`` after a failure).
    """
    outputs = [o for o in outputs if o is not None and o.path]
    inputs = [i for i in inputs if i is not None and i.path]
    for o in outputs:
        _check_kinds(o)
        _check_name_lengths(o)
        _check_replace(o)
    _check_distinct(outputs)
    _check_not_inputs(outputs, inputs)
    _check_writable(outputs)
    _check_free_space(outputs)
    return missing_folders(_folder_of(o) for o in outputs)


def _folder_of(output):
    return output.path if output.kind == "folder" else os.path.dirname(os.path.abspath(output.path))


def _ancestors(path):
    """``path``'s folders from the root down, ``path`` excluded."""
    parts = []
    p = os.path.dirname(os.path.abspath(path))
    while True:
        parts.append(p)
        if os.path.dirname(p) == p:
            return parts[::-1]
        p = os.path.dirname(p)


def _check_kinds(o):
    """No file up the path; a folder where a file goes, or a file where a folder goes, is refused."""
    for a in _ancestors(o.path):
        if os.path.exists(a) and not os.path.isdir(a):
            raise InputError(f"{o.label}: {a} is a file, not a folder")
    if o.kind == "folder" and os.path.exists(o.path) and not os.path.isdir(o.path):
        raise InputError(f"{o.label}: exists and is not a directory")
    for f in o.files():
        parent = os.path.dirname(f)  # a sub-folder of a folder output (``IJBC/meta``) may be a file
        if os.path.exists(parent) and not os.path.isdir(parent):
            raise InputError(f"{o.label}: {parent} is a file, not a folder")
        if os.path.isdir(f):
            raise InputError(f"{o.label}: {f} is a folder, not a file" if f != o.path else
                             f"{o.label}: is a folder, not a file")


def _check_name_lengths(o):
    """Each name of the path within the file system's limit (bytes), the path within ``PATH_MAX``."""
    for p in [o.path] + o.files():
        full = os.path.abspath(p)
        limit = name_max(os.path.dirname(full))
        for part in full.split(os.sep):
            size = len(os.fsencode(part))
            if size > limit:
                shown = part if len(part) <= 40 else part[:37] + "..."
                raise InputError(f"{o.label}: the name {shown!r} is {size} bytes long; this file system allows "
                                 f"{limit}")
        if len(os.fsencode(full)) >= PATH_MAX:
            raise InputError(f"{o.label}: the path is {len(os.fsencode(full))} bytes long; the limit is {PATH_MAX}")


def _check_replace(o):
    if o.replace:
        return
    for p in ([o.path] if o.kind == "folder" else []) + o.files():
        if os.path.lexists(p):
            raise InputError(f"{o.label}: {p} exists; {o.hint}")


def _key(path):
    return os.path.realpath(os.fspath(path))


def _check_distinct(outputs):
    """Two outputs that are one file would overwrite each other."""
    seen = {}
    for o in outputs:
        for f in o.files():
            other = seen.setdefault(_key(f), o)
            if other is not o:
                raise InputError(f"{o.label}: the same file as {other.label} ({f}); choose another name")


def _same_file(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _check_not_inputs(outputs, inputs):
    """No output is an input: same path (symbolic links followed), or the same file (hard links)."""
    keys = {}
    for i in inputs:
        keys.setdefault(_key(i.path), i)
    for o in outputs:
        for p in ([o.path] if o.kind == "folder" else []) + o.files():
            hit = keys.get(_key(p))
            if hit is None and os.path.isfile(p):
                hit = next((i for i in inputs if os.path.isfile(i.path) and _same_file(p, i.path)), None)
            if hit is not None:
                where = "" if p in o.label else f" ({p})"
                raise InputError(f"{o.label}: would write over the input {hit.label}{where}; choose another name")


def nearest_existing(path):
    """``path`` or its nearest ancestor that exists."""
    p = os.path.abspath(path)
    while not os.path.exists(p) and os.path.dirname(p) != p:
        p = os.path.dirname(p)
    return p


def _check_writable(outputs):
    """A probe file created and removed in the folder of each output (or the nearest existing
    ancestor of a folder still to be created)."""
    tried = {}
    for o in outputs:
        folder = _folder_of(o)
        base = nearest_existing(folder)
        if base not in tried:
            tried[base] = _probe(base)
        reason = tried[base]
        if reason is None:
            continue
        if os.path.isdir(folder):
            raise InputError(f"{o.label}: cannot write in {folder} ({reason})")
        raise InputError(f"{o.label}: cannot create the folder ({reason} in {base})")


def _probe(folder):
    """None when a file can be created in ``folder``, else the reason."""
    path = os.path.join(folder, f".shrinkteanet-probe-{secrets.token_hex(4)}")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        return e.strerror or errno.errorcode.get(e.errno, "error")
    os.close(fd)
    os.unlink(path)
    return None


def free_bytes(folder):
    """Bytes an unprivileged writer may still use on ``folder``'s file system."""
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def _check_free_space(outputs):
    """The outputs' estimates, summed per file system, must fit its free space."""
    by_device = {}
    for o in outputs:
        base = nearest_existing(_folder_of(o))
        dev = os.stat(base).st_dev
        entry = by_device.setdefault(dev, [base, 0, o])
        entry[1] += int(o.need)
    for base, need, first in by_device.values():
        free = free_bytes(base)
        if free < need:
            raise InputError(f"{first.label}: {mib_text(free)} free in {base}, but about {mib_text(need)} is needed; free "
                             f"space or choose another place")


def mib_text(n):
    """A byte count as the free-space messages give it (``12.3 MiB``)."""
    return f"{n / 2 ** 20:.1f} MiB"


# ------------------------------------------------------------------ folders a command creates
def missing_folders(folders):
    """Every folder (and missing parent) of ``folders`` that does not exist yet, deepest first."""
    out = set()
    for f in folders:
        p = os.path.abspath(f)
        while not os.path.exists(p) and os.path.dirname(p) != p:
            out.add(p)
            p = os.path.dirname(p)
    return sorted(out, key=lambda p: (-p.count(os.sep), p))


def remove_created_folders(folders):
    """``rmdir`` each of ``folders`` (deepest first) that is empty; others stay as they are."""
    for f in sorted(folders, key=lambda p: (-p.count(os.sep), p)):
        try:
            os.rmdir(f)
        except OSError:
            continue


# ------------------------------------------------------------------ manifests
def read_manifest(path):
    """The file names listed in the manifest ``path`` (relative to its folder); ``None`` when
    there is none.  An entry leading out of the folder is refused (a hand-edited manifest
    must not make ``--overwrite`` delete elsewhere)."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: unreadable manifest ({e})") from None
    names = doc.get("files") if isinstance(doc, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise InputError(f"{path}: not a manifest (no list of file names under 'files')")
    folder = os.path.dirname(os.path.abspath(path))
    for n in names:
        path_inside(folder, n, f"{path}: entry {n!r}")
    return names


def _write_manifest(path, names, written_by):
    with atomic_open(path, "w") as f:
        json.dump({"version": MANIFEST_VERSION, "written_by": written_by, "files": names}, f, indent=1)
        f.write("\n")


def _names_in(path, files):
    folder = os.path.dirname(os.path.abspath(path))
    return [os.path.relpath(os.path.abspath(f), folder) for f in files]


def add_to_manifest(path, files, written_by):
    """List ``files`` (paths inside the manifest's folder) in the manifest ``path``, before
    they are written; atomic.  Files outside the folder are not listed (never removed)."""
    names = read_manifest(path) or []
    new = [n for n in _names_in(path, files) if not n.startswith(os.pardir + os.sep) and n not in names]
    if new or not os.path.exists(path):
        _write_manifest(path, names + new, written_by)


def drop_from_manifest(path, files, written_by):
    """Remove ``files`` from the manifest ``path`` (once they are deleted)."""
    names = read_manifest(path)
    if names is None:
        return
    gone = set(_names_in(path, files))
    if gone & set(names):
        _write_manifest(path, [n for n in names if n not in gone], written_by)
