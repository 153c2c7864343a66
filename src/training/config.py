"""Training configuration: easydict presets merged by one function.

Four tables, as InsightFace's ``config.py`` does for network x dataset x loss,
plus a fourth for the distillation method of ShrinkTeaNet and its relatives:

* ``NETWORKS``  - which symbol and its options (``symbols.get_symbol``)
* ``DATASETS``  - where the RecordIO set and the ``.bin`` targets are
* ``LOSSES``    - the margin head (softmax, ArcFace, CosFace, combined)
* ``distill_table()`` - the method variants (none / stn / stn_final / l2 / l2_final / kd / hint / margin /
  lowres_kt / lowres_kd / lowres_ktkd), derived from the method registry
  (``shrinkteanet.methods.base.registry``: one module per method)

``generate_config(network, dataset, loss, distill, overrides)`` returns a fresh
``EasyDict`` (no global mutable state); ``apply_overrides`` takes ``key=value``
strings from the command line and type-checks each against the preset value.
Named configs (``named_configs()``, also derived) pick one row of each table, e.g. ``mfnr_stn``.
"""
import ast
import copy
import difflib

from easydict import EasyDict as edict

from shrinkteanet.core.errors import InputError
from shrinkteanet.core.logutil import get_logger
from shrinkteanet.symbols import registry as network_registry
from shrinkteanet.methods.base import registry as method_registry

log = get_logger(__name__)

#: Keys every config has, whatever the tables add.  From the ShrinkTeaNet paper (Sec. 4.2): batch
#: 512 over 4 GPUs, lr 0.1, momentum 0.9, lambda_n = 1 (angular) / 0.001 (l2), lambda_i =
#: lambda_{i+1} / 2, G = 1x1 conv + BN.  Not stated by the paper, taken from InsightFace's
#: defaults: ArcFace s=64, m=0.5, the lr steps, weight decay 5e-4 (4e-5 for the mobile
#: networks, as InsightFace's MobileFaceNet config), fc7 wd x10 and the 512-d embedding.
DEFAULT = dict(
    # network
    network="r100",
    emb_size=512,
    image_size=112,
    net_opts={},
    # data
    dataset="emore",
    data_dir="",
    num_classes=0,  # 0: read from the set's `property`
    val_targets=["lfw", "cfp_fp", "agedb_30"],
    val_dir="",
    workers=2,
    mirror=True,
    color_jitter=0.0,
    lowres_size=0,  # >0: down/up-sample inputs to this size (low-resolution student)
    # margin head
    loss="arcface",
    margin_s=64.0,
    margin_m1=1.0,
    margin_m2=0.5,
    margin_m3=0.0,
    # distillation
    distill="none",
    teacher="",  # PREFIX,EPOCH of the teacher checkpoint
    # the teacher's network, options and embedding width: empty/0 = read from its checkpoint's
    # -symbol.json (methods.base.teacher_check); given, they must agree with the checkpoint
    teacher_network="",
    teacher_emb_size=0,
    teacher_net_opts={},
    teacher_cache="",
    # the methods' own keys (distill_stages, stn_weight, l2_lambda, kd_*, ...) are declared by the
    # method modules (``MethodDef.keys``) and added by ``default_config``
    softmax_weight=1.0,
    # optimisation
    batch_size=512,  # global, split over contexts and workers
    lr=0.1,
    momentum=0.9,
    wd=5e-4,
    fc7_wd_mult=10.0,
    fc7_lr_mult=1.0,
    lr_schedule="step",  # step | cosine
    lr_steps=[100000, 160000, 220000],  # in lr_step_unit
    lr_step_unit="batch",  # batch (of lr_step_batch images) | sample | epoch (schedule.resolve_lr_steps)
    lr_step_batch=512,  # the global batch batch-unit lr_steps are counted at (rescaled to batch_size); 0: batch_size
    lr_factor=0.1,
    lr_min=0.0,  # cosine: final lr
    warmup_batches=0,  # linear warm-up from 0 to lr
    num_epochs=0,
    max_batches=0,
    fp16=False,
    kvstore="device",
    seed=0,
    # run control
    out="",
    ckpt_every=0,  # batches; 0: epoch end only
    keep_last=3,
    verify_every=2000,  # verification (and a checkpoint) every N batches; 0: none
    nan_guard=5,
    frequent=20,  # log every N batches
    tensorboard="",  # directory for tensorboardX scalars
    hybridize=True,
    # train the student's PReLUs as relu + 1x1 depthwise conv (model.rewrites.prelu_as_depthwise): same
    # function, 3-4x faster CPU steps for the mobile networks; checkpoints keep the PReLU symbol
    prelu_as_conv=True,
)

#: network name -> ``network`` and its training defaults, from the network registry
NETWORKS = edict(network_registry.training_table())

DATASETS = edict(
    emore=dict(dataset="emore", data_dir="datasets/faces_emore", num_classes=85742),
    ms1m=dict(dataset="ms1m", data_dir="datasets/faces_ms1m_112x112", num_classes=85164),
    webface=dict(dataset="webface", data_dir="datasets/faces_webface_112x112", num_classes=10572),
    synth=dict(dataset="synth", data_dir="work/synth", num_classes=0, val_targets=["lfw", "cfp_fp", "agedb_30"]),
)

LOSSES = edict(
    softmax=dict(loss="softmax", margin_s=64.0, margin_m1=1.0, margin_m2=0.0, margin_m3=0.0),
    arcface=dict(loss="arcface", margin_s=64.0, margin_m1=1.0, margin_m2=0.5, margin_m3=0.0),
    cosface=dict(loss="cosface", margin_s=64.0, margin_m1=1.0, margin_m2=0.0, margin_m3=0.35),
    combined=dict(loss="combined", margin_s=64.0, margin_m1=1.0, margin_m2=0.3, margin_m3=0.2),
)

#: old key -> its name now: still accepted in overrides (and in a saved run's config), with a notice
RENAMED_KEYS = {"distill_weight": "stn_weight", "verbose": "verify_every"}

#: keys that name a network: InsightFace's aliases (``y1``) become the registry's names
NETWORK_KEYS = ("network", "teacher_network")

#: Named configs of the teachers: config name -> network row (method ``none``).
TEACHER_CONFIGS = {"teacher_r90": "r90", "teacher_r100": "r100"}
#: The student networks that get one named config ``<student>_<variant>`` per method variant.
STUDENTS = ("mv1", "mv2", "mfn", "mfnr")


def default_config():
    """``DEFAULT`` plus every method's own keys (``MethodDef.keys``), a fresh dict; ``ValueError``
    when a method declares a key ``DEFAULT`` has, or a variant sets a key nobody declares."""
    keys = method_registry.config_keys()
    clash = sorted(set(keys) & set(DEFAULT))
    if clash:
        raise ValueError(f"config keys {clash} are declared both in training.config.DEFAULT and by a method")
    cfg = copy.deepcopy(DEFAULT)
    cfg.update(keys)
    for name, row in method_registry.distill_rows().items():
        unknown = sorted(set(row) - set(cfg))
        if unknown:
            raise ValueError(f"DISTILL row {name!r} sets {unknown}, declared neither in DEFAULT nor in a method's keys")
    return cfg


def current_names(cfg):
    """``cfg`` (a dict) with every ``RENAMED_KEYS`` old name under its new one (a saved run's config)."""
    return {RENAMED_KEYS.get(k, k): v for k, v in dict(cfg).items()}


def distill_table():
    """``DISTILL``: the method rows, one per variant of every method of the registry
    (``shrinkteanet.methods.base.registry``; e.g. ``stn`` and ``stn_final``).  A fresh EasyDict."""
    return edict(method_registry.distill_rows())


def named_configs():
    """``CONFIGS``: named config -> (network, dataset, loss, distill row) for
    ``shrinkteanet train --config NAME``: the teachers, and ``<student>_<suffix>`` for every
    student and method variant (``<student>_self`` for ``none``).  A fresh dict."""
    configs = {name: (net, "emore", "arcface", "none") for name, net in TEACHER_CONFIGS.items()}
    for student in STUDENTS:
        for _, variant in method_registry.variants():
            configs[f"{student}_{variant.config_suffix}"] = (student, "emore", "arcface", variant.name)
    return configs


def _table_row(table, name, what):
    if name not in table:
        raise InputError(f"unknown {what} {name!r}; valid: {', '.join(sorted(table))}")
    return table[name]


def generate_config(network="r100", dataset="emore", loss="arcface", distill="none", overrides=()):
    """Merge ``default_config()`` (DEFAULT + the methods' keys) <- NETWORKS[network] <- DATASETS[dataset]
    <- LOSSES[loss] <- distill_table()[distill], then apply ``key=value`` overrides.  A new EasyDict each call."""
    cfg = default_config()
    network = network_registry.canonical_name(network)
    for table, name, what in ((NETWORKS, network, "network"), (DATASETS, dataset, "dataset"),
                              (LOSSES, loss, "loss"), (distill_table(), distill, "distill method")):
        cfg.update(copy.deepcopy(dict(_table_row(table, name, what))))
    cfg = edict(cfg)
    return apply_overrides(cfg, overrides)


def config_by_name(name, overrides=()):
    """A named config (``named_configs()``) with overrides.  Overrides of ``network``,
    ``dataset``, ``loss`` or ``distill`` re-select the table rows first, so that
    e.g. ``distill=l2`` brings the L2 preset's own defaults."""
    configs = named_configs()
    if name not in configs:
        close = difflib.get_close_matches(name, configs, n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise InputError(f"unknown config {name!r}{hint}; valid: {', '.join(sorted(configs))}")
    rows = dict(zip(("network", "dataset", "loss", "distill"), configs[name]))
    rest = []
    for item in _renamed(overrides):
        key, _, value = _split(item)
        if key in rows and key != "network":
            rows[key] = value
        else:
            rest.append(item)
    # `network=` keeps the network-table row of the named config unless it names a row itself
    net_override = [i for i in rest if _split(i)[0] == "network"]
    if net_override and network_registry.canonical_name(_split(net_override[-1])[2]) in NETWORKS:
        rows["network"] = network_registry.canonical_name(_split(net_override[-1])[2])
    cfg = generate_config(rows["network"], rows["dataset"], rows["loss"], rows["distill"], rest)
    cfg.config_name = name
    return cfg


def _split(item):
    key, sep, value = str(item).partition("=")
    key = key.strip()
    if not sep or not key:
        raise InputError(f"override {item!r} is not key=value")
    return key, sep, value.strip()


def _renamed(overrides):
    """``overrides`` with each old key name (``RENAMED_KEYS``) replaced by its new one, a notice each."""
    out = []
    for item in overrides or ():
        key, _, value = _split(item)
        if key in RENAMED_KEYS:
            log.warning("config key %s is now %s; the old name still works", key, RENAMED_KEYS[key])
            item = f"{RENAMED_KEYS[key]}={value}"
        out.append(item)
    return out


def _coerce(key, raw, current):
    """Parse ``raw`` to the type of the preset value ``current``."""
    kind = type(current)
    try:
        if isinstance(current, bool):
            low = raw.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if isinstance(current, int):
            return int(raw)
        if isinstance(current, float):
            return float(raw)
        if isinstance(current, (list, tuple)):
            if raw == "":
                return []
            val = ast.literal_eval(raw if raw.startswith("[") else f"[{raw}]")
            if not isinstance(val, list):
                raise ValueError
            return val
        if isinstance(current, dict):
            val = ast.literal_eval(raw) if raw else {}
            if not isinstance(val, dict):
                raise ValueError
            return edict(val)
        return raw
    except (ValueError, SyntaxError):
        raise InputError(f"override {key}={raw!r}: expected {kind.__name__} like the preset value {current!r}") from None


def apply_overrides(cfg, overrides):
    """Apply ``key=value`` strings in order (old key names accepted, ``RENAMED_KEYS``); unknown keys fail
    naming the nearest valid ones."""
    for item in _renamed(overrides):
        key, _, raw = _split(item)
        if key not in cfg:
            close = difflib.get_close_matches(key, list(cfg), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise InputError(f"unknown config key {key!r}{hint}")
        cfg[key] = _coerce(key, raw, cfg[key])
        if key in NETWORK_KEYS:
            cfg[key] = network_registry.canonical_name(cfg[key])
    return cfg
