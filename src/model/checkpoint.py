"""Checkpoint files: InsightFace's layout and the training state written beside it.

* ``load_checkpoint`` / ``save_checkpoint``: ``PREFIX-symbol.json`` +
  ``PREFIX-%04d.params`` exactly as ``mx.model.save_checkpoint`` writes them
  (keys ``arg:NAME`` / ``aux:NAME``), so InsightFace's scripts read ours and ours
  read theirs.  Loading cuts at ``fc1_output`` (``cut_at_embedding``) like
  InsightFace's evaluation code (``sym.get_internals()['fc1_output']``), which
  accepts both the embedding-only symbol (``ckpt_embedding``) and the training
  symbol with the ``fc7`` head.
* The training files of a run (``Checkpointer``): ``PREFIX-%04d.head.params`` (margin
  head, adapters), ``PREFIX-%04d.states`` (``gluon.Trainer.save_states``) and
  ``PREFIX-state.json`` (position, config, kept/best checkpoints); ``restore`` reads
  them back for ``--resume``.
* Every file is written to a temp file beside its final name, flushed to disk,
  renamed into place and the folder entry flushed too: a crash leaves the old file or
  the new one, never half of one (``stray_files`` names the temp files a kill leaves).
* ``PREFIX-manifest.json`` lists every file the run writes, each before it is written
  (``record_run_files``); pruning deletes only listed files and ``--overwrite`` removes
  exactly the listed ones (``training.run_folder``), never a file that merely looks like
  a checkpoint (``model-best-0001.params``, ``model-mkldnn-0001.params``).
"""
import contextlib
import json
import os
import re

from shrinkteanet.core.errors import InputError
from shrinkteanet.core.finite import nonfinite_names
from shrinkteanet.core.logutil import get_logger
from shrinkteanet.core.outputs import add_to_manifest, drop_from_manifest, read_manifest
from shrinkteanet.core.utils import atomic_open, atomic_path, mxnet_reason, write_json

log = get_logger(__name__)

EMBEDDING_OUTPUT = "fc1_output"
STATE_SUFFIX = "-state.json"
MANIFEST_SUFFIX = "-manifest.json"
LOG_SUFFIX = "-train.log"
#: ``written_by`` of a run's manifest
MANIFEST_WRITER = "shrinkteanet train"

_RUN_FILE = re.compile(r"-(\d{4}\.(params|head\.params|states)|state\.json|symbol\.json)$")
_NUMBERED = re.compile(r"-(\d{4})\.(params|head\.params|states)$")


# ------------------------------------------------------------------ names
def checkpoint_paths(prefix, epoch):
    """(``PREFIX-symbol.json``, ``PREFIX-%04d.params``) as ``mx.model`` names them."""
    return f"{prefix}-symbol.json", "%s-%04d.params" % (prefix, int(epoch))


def training_paths(prefix, number):
    """The three numbered files of one training checkpoint: ``.params``, ``.head.params``, ``.states``."""
    return ["%s-%04d.params" % (prefix, number), "%s-%04d.head.params" % (prefix, number),
            "%s-%04d.states" % (prefix, number)]


def run_files(prefix):
    """The files at ``prefix`` named exactly as a run names them: state, symbol and numbered
    checkpoints (``PREFIX-0001.params``; not ``PREFIX-best-0001.params``)."""
    import glob

    base = glob.escape(prefix)
    return sorted(p for p in glob.glob(base + "-*") if _RUN_FILE.fullmatch(p[len(prefix):]))


def stray_files(prefix, keep, listed=None):
    """Numbered checkpoint files of ``prefix`` whose number is not in ``keep`` (only those in
    ``listed``, the run's manifest, when given), and the temp files of its atomic writes
    (``.NAME.tmp``, ``.NAME.PID.tmp``, ``NAME.XXXX.tmp``)."""
    keep = {int(k) for k in keep}
    mine = None if listed is None else {os.path.abspath(p) for p in listed}
    folder, base = os.path.split(os.path.abspath(prefix))
    out = []
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if name.endswith(".tmp") and (name.startswith(base + "-") or name.startswith(f".{base}-")):
            out.append(path)
            continue
        if name.startswith(base + "-") and (mine is None or path in mine):
            m = _NUMBERED.fullmatch(name[len(base):])
            if m and int(m.group(1)) not in keep:
                out.append(path)
    return sorted(out)


# ------------------------------------------------------------------ the run's manifest
def manifest_path(prefix):
    return prefix + MANIFEST_SUFFIX


def listed_run_files(prefix):
    """The paths ``PREFIX-manifest.json`` lists, or None when the run has no manifest."""
    names = read_manifest(manifest_path(prefix))
    if names is None:
        return None
    folder = os.path.dirname(os.path.abspath(prefix))
    return [os.path.join(folder, n) for n in names]


def record_run_files(prefix, paths):
    """List ``paths`` in the run's manifest before they are written (atomic)."""
    add_to_manifest(manifest_path(prefix), paths, MANIFEST_WRITER)


def forget_run_files(prefix, paths):
    """Take deleted ``paths`` off the run's manifest."""
    drop_from_manifest(manifest_path(prefix), paths, MANIFEST_WRITER)


def state_named_files(prefix, state):
    """The exact files a run's ``state`` (``read_state``) says it wrote: symbol, state, log and
    the numbered files of each checkpoint it keeps (a run written before manifests existed)."""
    numbers = set(state.get("kept") or []) | {state.get("checkpoint") or 0}
    best = (state.get("best") or {}).get("checkpoint")
    numbers |= {best} if best else set()
    paths = [f"{prefix}-symbol.json", prefix + STATE_SUFFIX, prefix + LOG_SUFFIX]
    for n in sorted(int(k) for k in numbers if k):
        paths += training_paths(prefix, n)
    return paths


# ------------------------------------------------------------------ the one writer
def write_by_name(path, write):
    """Run ``write(temp_path)`` (a library call that wants a file name: ``mx.nd.save``,
    ``Trainer.save_states``) through ``core.utils.atomic_path``: temp file beside ``path``,
    fsync, rename, fsync of the folder; on failure the temp file is removed.

    Parameters
    ----------
    path : str
        Final file name.
    write : callable
        ``write(temp_path)`` writes the whole file.
    """
    with atomic_path(path) as tmp:
        write(tmp)


def save_nd(path, arrays):
    """``mx.nd.save`` of a dict of NDArrays (copied to the CPU) through ``write_by_name``."""
    import mxnet as mx

    blob = {k: v.as_in_context(mx.cpu()) for k, v in arrays.items()}
    write_by_name(path, lambda tmp: mx.nd.save(tmp, blob))


def save_checkpoint(prefix, epoch, sym, arg_params, aux_params):
    """Write an InsightFace-layout checkpoint (the arguments of ``mx.model.save_checkpoint``).

    The files are byte for byte those of ``mx.model.save_checkpoint``; each is written
    atomically (``core.utils.atomic_open`` for the symbol, ``write_by_name`` for the
    parameters).

    Parameters
    ----------
    prefix, epoch : str, int
        ``PREFIX-symbol.json`` and ``PREFIX-%04d.params``.
    sym : mx.sym.Symbol or None
        The symbol; None writes the parameters only.
    arg_params, aux_params : dict of NDArray
        Saved as ``arg:NAME`` / ``aux:NAME``.

    Returns
    -------
    (str, str)
        The symbol and parameter file paths.
    """
    sym_path, params_path = checkpoint_paths(prefix, epoch)
    if sym is not None:
        with atomic_open(sym_path, "w") as f:
            f.write(sym.tojson())
    blob = {f"arg:{k}": v for k, v in arg_params.items()}
    blob.update({f"aux:{k}": v for k, v in aux_params.items()})
    save_nd(params_path, blob)
    return sym_path, params_path


# ------------------------------------------------------------------ the one reader
def checkpoint_fingerprint(prefix, epoch):
    """What identifies a checkpoint's content, not its path (issue 21: a teacher retrained into
    the same folder is another teacher): ``{"symbol_sha1", "params_sha1"}``, the sha1 of the
    two files' bytes.  A missing file is one ``InputError`` naming it."""
    from shrinkteanet.core.utils import file_sha1

    out = {}
    for key, path in zip(("symbol_sha1", "params_sha1"), checkpoint_paths(prefix, epoch)):
        try:
            out[key] = file_sha1(path)
        except OSError as e:
            raise InputError(f"{path}: cannot read the checkpoint ({e.strerror})") from None
    return out


def cut_at_embedding(sym, path="symbol"):
    """``sym`` itself when its only output is ``fc1``, else ``get_internals()['fc1_output']``
    (InsightFace's evaluation cut, which drops a training symbol's ``fc7`` head)."""
    if sym.list_outputs() == [EMBEDDING_OUTPUT]:
        return sym
    internals = sym.get_internals()
    if EMBEDDING_OUTPUT not in internals.list_outputs():
        raise InputError(f"{path}: no '{EMBEDDING_OUTPUT}' node (not an InsightFace-style embedding network)")
    return internals[EMBEDDING_OUTPUT]


def load_checkpoint(prefix, epoch, keep_extra=False):
    """Read an InsightFace-layout checkpoint, cut at ``fc1_output``.

    The symbol is made safe for MKLDNN (``rewrites.mkldnn_safe``).

    Parameters
    ----------
    prefix, epoch : str, int
        ``--model PREFIX,EPOCH``.
    keep_extra : bool
        Keep parameters the cut symbol does not use (``fc7_weight`` of the margin head).

    Returns
    -------
    (mx.sym.Symbol, dict, dict)
        ``(sym_fc1, arg_params, aux_params)``.
    """
    from shrinkteanet.model.rewrites import mkldnn_safe

    sym_path, params_path = checkpoint_paths(prefix, epoch)
    for path in (sym_path, params_path):
        if not os.path.isfile(path):
            raise InputError(f"{path}: checkpoint file not found (--model PREFIX,EPOCH)")
    sym = mkldnn_safe(cut_at_embedding(_read_symbol(sym_path), sym_path))
    arg_params, aux_params = _read_arg_aux(params_path)
    if not keep_extra:
        arg_params, aux_params = _used_by(sym, arg_params, aux_params, params_path)
    missing = [k for k in sym.list_arguments() if k != "data" and k not in arg_params]
    missing += [k for k in sym.list_auxiliary_states() if k not in aux_params]
    if missing:
        raise InputError(f"{params_path}: {len(missing)} parameters of the symbol are missing, e.g. {missing[0]!r}")
    return sym, arg_params, aux_params


def read_raw_checkpoint(prefix, epoch):
    """The symbol file parsed as JSON (a dict), ``arg_params`` and ``aux_params`` of a checkpoint,
    nothing cut or dropped: what a teacher's network is read from (``symbols.infer``) and checked
    against.  A missing or unreadable file is a one-line ``InputError`` naming it."""
    sym_path, params_path = checkpoint_paths(prefix, epoch)
    for path in (sym_path, params_path):
        if not os.path.isfile(path):
            raise InputError(f"{path}: checkpoint file not found (PREFIX,EPOCH)")
    try:
        with open(sym_path, "rb") as f:
            graph = json.loads(f.read().decode("utf-8"))
        if not isinstance(graph, dict) or not isinstance(graph.get("nodes"), list):
            raise ValueError("no node list")
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{sym_path}: not an MXNet symbol file ({e})") from None
    arg_params, aux_params = _read_arg_aux(params_path)
    return graph, arg_params, aux_params


def _read_symbol(path):
    import mxnet as mx

    try:
        return mx.sym.load(path)
    except (mx.base.MXNetError, ValueError) as e:  # a truncated file can fail to decode as UTF-8
        raise InputError(f"{path}: not an MXNet symbol file ({mxnet_reason(e)})") from None


def _read_arg_aux(path):
    """``arg:``/``aux:`` keys of a ``.params`` file split into two dicts."""
    import mxnet as mx

    try:
        saved = mx.nd.load(path)
    except (mx.base.MXNetError, ValueError) as e:
        raise InputError(f"{path}: not an MXNet parameter file ({mxnet_reason(e)})") from None
    if not isinstance(saved, dict):
        raise InputError(f"{path}: parameters are not saved by name (arg:/aux: keys expected)")
    arg_params, aux_params = {}, {}
    for key, value in saved.items():
        kind, _, name = key.partition(":")
        if kind == "arg":
            arg_params[name] = value
        elif kind == "aux":
            aux_params[name] = value
        else:
            raise InputError(f"{path}: key {key!r} is neither arg:NAME nor aux:NAME")
    return arg_params, aux_params


def _used_by(sym, arg_params, aux_params, path):
    """The parameters ``sym`` uses (the cut drops the head's ``fc7_weight``)."""
    args, auxs = set(sym.list_arguments()), set(sym.list_auxiliary_states())
    dropped = sorted(k for k in arg_params if k not in args) + sorted(k for k in aux_params if k not in auxs)
    if dropped:
        log.debug("%s: dropped %d parameters outside fc1: %s", path, len(dropped), ", ".join(dropped[:5]))
    return ({k: v for k, v in arg_params.items() if k in args},
            {k: v for k, v in aux_params.items() if k in auxs})


# ------------------------------------------------------------------ run state (resume)
def read_state(prefix):
    """The ``PREFIX-state.json`` of a run, or None."""
    path = prefix + STATE_SUFFIX
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: unreadable training state ({e})") from None


def write_state(prefix, state):
    """``PREFIX-state.json``, atomically (``core.utils.write_json``)."""
    write_json(prefix + STATE_SUFFIX, state)


# ------------------------------------------------------------------ finite checks
#: Name endings of BatchNorm running statistics (MXNet symbols: ``moving_*``; Gluon: ``running_*``).
RUNNING_STAT_SUFFIXES = ("_moving_mean", "_moving_var", "_running_mean", "_running_var")


def is_running_stat(name):
    """True for a BatchNorm running statistic (moved by the forward pass, not by the optimiser)."""
    return name.endswith(RUNNING_STAT_SUFFIXES)


def replica_mean(param):
    """The mean of ``param``'s copies over its devices, on the CPU (float32 sums).

    InsightFace's ``Module`` writes checkpoints through ``DataParallelExecutorGroup.get_params``,
    which averages every array over the devices; BatchNorm statistics are the ones that differ
    (each device sees its own part of the batch)."""
    import mxnet as mx

    copies = [a.as_in_context(mx.cpu()) for a in param.list_data()]
    if len(copies) == 1:
        return copies[0].copy()
    return mx.nd.add_n(*[c.astype("float32") for c in copies]) / len(copies)


def _states_on_cpu(states):
    """Optimizer states (NDArray, tuple/list of them, or None) copied to the CPU."""
    import mxnet as mx

    if isinstance(states, mx.nd.NDArray):
        return states.as_in_context(mx.cpu())
    if isinstance(states, (list, tuple)):
        return type(states)(_states_on_cpu(s) for s in states)
    return states


def write_trainer_states(path, trainer):
    """``Trainer.save_states``'s file (the pickle of ``(states, optimizer)`` of updater 0), with
    every state array on the CPU.  Gluon pickles updater 0's momentum on its own device, and an
    NDArray loads back onto the device it was saved from, so a ``.states`` written on
    ``gpu(k)`` could not be resumed once ``gpu(k)`` was gone; ``Trainer.load_states`` moves each
    state to its weight's device anyway.  A trainer that updates on the kvstore saves through it."""
    import pickle

    if trainer._update_on_kvstore or not trainer._updaters:
        write_by_name(path, trainer.save_states)
        return
    updater = trainer._updaters[0]
    states = {k: _states_on_cpu(v) for k, v in updater.states.items()}
    with atomic_open(path, "wb") as f:
        f.write(pickle.dumps((states, updater.optimizer)))


def checkpoint_is_finite(arg, aux, head, state):
    """A checkpoint with any NaN/inf parameter or running statistic is never written (so it
    can neither be counted as good nor push the last clean one out of ``keep_last``)."""
    bad = nonfinite_names({**arg, **{f"aux:{k}": v for k, v in aux.items()}, **head})
    if not bad:
        return True
    last = state["checkpoint"]
    log.warning("step %d: checkpoint not written, non-finite %s%s; the last clean checkpoint is %s",
                state["step"], ", ".join(bad[:3]), " ..." if len(bad) > 3 else "",
                "%04d" % last if last else "none")
    return False


# ------------------------------------------------------------------ what a checkpoint holds
def _symbol_names(sym):
    return set(sym.list_arguments()), set(sym.list_auxiliary_states())


def _saved_value(name, p):
    """What a checkpoint holds of ``p``: BatchNorm running statistics averaged over the devices
    (InsightFace's ``Module``, ``checkpoint.replica_mean``), trained weights from the first
    device (the replicas are equal bit for bit; a mean of three equal floats need not be)."""
    if is_running_stat(name) and len(p.list_ctx()) > 1:
        return replica_mean(p)
    return p.data(p.list_ctx()[0]).copy()


def student_params(student, sym):
    """(arg, aux) of the embedding network ``student`` by the names of its symbol ``sym``: what
    ``save_checkpoint`` writes and the verifier evaluates (empty without a student)."""
    if student is None or sym is None:
        return {}, {}
    args, auxs = _symbol_names(sym)
    arg, aux = {}, {}
    for name, p in student.collect_params().items():
        if name in args:
            arg[name] = _saved_value(name, p)
        elif name in auxs:
            aux[name] = _saved_value(name, p)
    return arg, aux


def checkpoint_params(method, student, sym):
    """(arg, aux, rest): the embedding network's parameters plus the classifier ``fc7*``
    (InsightFace keeps it beside ``fc1`` in training checkpoints; MarginDistillation and KD
    read the teacher's class centres from there), and everything else that is trained
    (adapters H_i) for the ``.head.params`` file: the split of ``fc7*`` between the two files is
    decided here, with the files themselves."""
    arg, aux = student_params(student, sym)
    own = set(student.collect_params().keys()) if student is not None else set()
    rest = {}
    for name, p in method.collect_params().items():
        if name in own:
            continue
        value = _saved_value(name, p)
        if name.startswith("fc7"):
            arg[name] = value
        else:
            rest[name] = value
    return arg, aux, rest


# ------------------------------------------------------------------ training checkpoints
class Checkpointer:
    """Writes and prunes numbered checkpoints; keeps the last ``keep_last`` and the best."""

    def __init__(self, prefix, keep_last=3):
        self.prefix = prefix
        self.keep_last = max(int(keep_last), 1)

    def paths(self, number):
        return training_paths(self.prefix, number)

    def save(self, *, method, student, symbol, trainer, state):
        """The next checkpoint of a run: what ``checkpoint_params`` takes of ``method`` and its
        embedding network ``student`` (cut by ``symbol``), written as ``write`` does unless a value
        is NaN/inf (``checkpoint_is_finite``: nothing is written).  Returns True when written."""
        arg, aux, head = checkpoint_params(method, student, symbol)
        if not checkpoint_is_finite(arg, aux, head, state):
            return False
        self.write(state["checkpoint"] + 1, symbol=symbol, arg_params=arg, aux_params=aux, head_params=head,
                   trainer=trainer, state=state)
        return True

    def write(self, number, *, symbol, arg_params, aux_params, head_params, trainer, state):
        """Write checkpoint ``number`` (InsightFace files, head, optimizer states), then move
        ``state`` on to it (``kept``, ``checkpoint``), write the state and prune.

        Parameters
        ----------
        number : int
            The ``%04d`` of the files.
        symbol, arg_params, aux_params
            The embedding network (``save_checkpoint``).
        head_params : dict of NDArray
            Everything else that is trained (margin head, adapters).
        trainer : gluon.Trainer
            Its ``save_states`` goes to ``.states``.
        state : dict
            The run state; updated in place and written to ``PREFIX-state.json``.
        """
        params_file, head_file, states_file = self.paths(number)
        symbol_file = checkpoint_paths(self.prefix, number)[0]
        record_run_files(self.prefix, [symbol_file, params_file, head_file, states_file, self.prefix + STATE_SUFFIX])
        save_checkpoint(self.prefix, number, symbol, arg_params, aux_params)
        save_nd(head_file, head_params)
        write_trainer_states(states_file, trainer)
        self._keep(number, state)
        # the state moves on first: a crash while pruning leaves files too many, never a state
        # that names a checkpoint already deleted
        write_state(self.prefix, state)
        self.prune(state["kept"])
        log.info("checkpoint %s-%04d (epoch %d, batch %d)", self.prefix, number, state["epoch"], state["batch"])

    def _keep(self, number, state):
        """``state['kept']``: the last ``keep_last`` numbers plus the best one."""
        kept = [k for k in state["kept"] if k != number] + [number]
        drop = kept[:-self.keep_last]
        best = state.get("best", {}).get("checkpoint")
        drop = [k for k in drop if k != best]
        state["kept"] = [k for k in kept if k not in drop]
        state["checkpoint"] = number

    def prune(self, keep):
        """Delete every checkpoint file of the run (its manifest lists it) whose number ``keep``
        does not list, and temp files: those pruned now and any an earlier crash left (called
        once the state names ``keep``; the run lock guarantees no other writer)."""
        gone = []
        for path in stray_files(self.prefix, keep, listed_run_files(self.prefix)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            gone.append(path)
        forget_run_files(self.prefix, gone)


def restore(saved_state, prefix, method, trainer):
    """Load checkpoint ``saved_state['checkpoint']`` of ``prefix`` into ``method`` (every
    parameter, from ``.params`` and ``.head.params``) and ``trainer`` (``.states``).

    Parameters
    ----------
    saved_state : dict
        ``read_state(prefix)``.
    prefix : str
        The run's ``--out`` prefix.
    method : gluon.Block
        Its ``collect_params()`` are set by name; shapes must match.
    trainer : gluon.Trainer
        Gets the optimizer state (momentum).
    """
    pfile, hfile, sfile = training_paths(prefix, saved_state["checkpoint"])
    for f in (pfile, hfile, sfile):
        if not os.path.exists(f):
            raise InputError(f"--resume: checkpoint file {f} is missing")
    blob = _load_nd(pfile)
    if not isinstance(blob, dict):
        raise InputError(f"--resume: {pfile} holds no named parameters")
    flat = {k.split(":", 1)[-1]: v for k, v in blob.items()}
    head = _load_nd(hfile)
    flat.update(head if isinstance(head, dict) else {})  # mx.nd.load gives [] for an empty dict
    for name, p in method.collect_params().items():
        if name not in flat:
            raise InputError(f"{pfile}: parameter {name} is missing")
        if tuple(flat[name].shape) != tuple(p.shape):
            raise InputError(f"--resume: {pfile}: parameter {name} is {flat[name].shape}, the network wants {p.shape}")
        p.set_data(flat[name])
    try:
        trainer.load_states(sfile)
    except Exception as e:  # truncated or foreign: pickle, EOF or MXNet errors
        raise InputError(f"--resume: {sfile}: unreadable optimizer state ({mxnet_reason(e)})") from None


def _load_nd(path):
    """``mx.nd.load`` with a one-line ``InputError`` naming the file (truncated, not MXNet)."""
    import mxnet as mx

    try:
        return mx.nd.load(path)
    except (mx.base.MXNetError, ValueError) as e:
        raise InputError(f"--resume: {path}: unreadable checkpoint file ({mxnet_reason(e)})") from None
