"""The method registry: every module of ``shrinkteanet.methods`` is one teacher-student method
(deliberately mirroring the network registry, ``shrinkteanet.symbols.registry``).

A method module declares ``METHOD = MethodDef(...)`` (and imports nothing heavy at module level:
its loss terms import MXNet inside their builder), in the manner of torchdistill's per-kind
registries.  ``method(name)`` looks one up; an unknown name fails, as gluon-cv's ``get_model``
does, with a message listing every valid name.  Discovery is lazy: the first lookup imports every
module of the package folder (``pkgutil``; the machinery lives in the ``base`` sub-package, which
is not a module), so that adding a method is adding one file.  Nothing here runs at import.

Everything the rest of the project tabulates about methods is derived here: the ``DISTILL`` rows
of ``training.config`` (``distill_rows``), the variants behind the ``<student>_<variant>`` named
configs (``variants``), the study's method keys and overrides (``study_rows``), their display and
paper names, and the distillation-weight ablation pairs (``ablation_pairs``).
"""
import copy
import dataclasses
import functools
import importlib
import pkgutil
from types import MappingProxyType
from typing import Callable, Optional, Tuple

from shrinkteanet.core.errors import InputError

#: the flags a method may need from the trainer
NEED_FLAGS = ("teacher", "emb", "taps", "fc7")


@dataclasses.dataclass(frozen=True)
class Needs:
    """What a method needs from the trainer.

    teacher: a teacher checkpoint at all; emb: the teacher's final embedding every step (what
    the teacher cache can serve); taps: the teacher's stage features every step; fc7: the
    teacher's class centres.  What a method does itself (a low-resolution student, knowledge
    transfer) is one of its hooks (``MethodDef.student_size``, ``MethodDef.prepare``)."""

    teacher: bool = False
    emb: bool = False
    taps: bool = False
    fc7: bool = False

    def as_dict(self):
        """The true flags as ``{flag: True}``."""
        return {flag: True for flag in NEED_FLAGS if getattr(self, flag)}


@dataclasses.dataclass(frozen=True)
class Variant:
    """One ``DISTILL`` row of a method: ``name`` (the ``distill`` table key), the config keys it
    sets on top of the method's ``defaults``, and ``config``, the suffix of its named configs
    ``<student>_<config>`` (default: ``name``)."""

    name: str
    overrides: dict = dataclasses.field(default_factory=dict)
    config: Optional[str] = None

    @property
    def config_suffix(self):
        return self.config or self.name


@dataclasses.dataclass(frozen=True)
class StudyRow:
    """One method of the study (``study.demo.study_methods()``): ``key`` (its name in REPORT.md and
    study.json), the ``variant`` it trains (config ``<network>_<variant's config suffix>``), extra
    ``overrides`` (``key=value`` strings), the report's ``display`` name, the paper's row name
    (``paper``, None where Duong et al. 2019 has no such row), ``order`` (report order, across all
    methods) and ``ablation_of``: the study key this row repeats at another distillation weight."""

    key: str
    variant: str
    display: str
    order: int
    overrides: Tuple[str, ...] = ()
    paper: Optional[str] = None
    ablation_of: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class MethodDef:
    """A method: everything the trainer, the config tables and the reports need to know.

    Parameters
    ----------
    name : str
        The ``distill=`` value.
    summary : str
        One line for listings (``shrinkteanet config --methods``).
    order : int
        Position in listings and in ``names()``.
    needs : Needs
    variants : tuple of Variant
        Its ``DISTILL`` rows (at least one).
    keys : dict
        The config keys the method brings, with their defaults: the one place they are declared
        (every config has them; two methods may share a key only with one default).
    defaults : dict
        Values its variants set for keys declared elsewhere (``training.config.DEFAULT`` or
        another method's ``keys``), e.g. ``lowres_size``.
    study : tuple of StudyRow
    terms : callable or None
        ``terms(build) -> [terms.Term]``: the loss terms the method adds to the classifier's
        part (``build`` is a ``terms.Build``); None for no extra term.
    classifier : callable or None
        ``classifier(build) -> terms.Classifier``; None: the margin head of ``cfg.loss``
        (part ``softmax``, weight ``softmax_weight``).
    student_taps : callable or None
        ``student_taps(cfg) -> bool``: the student must expose its stage features.
    check : callable or None
        ``check(cfg)`` raises ``InputError`` for a config the method cannot run.
    student_size : callable or None
        ``student_size(cfg) -> int``: the student's input side when it is not ``image_size``
        (``InputError`` for a bad one).  The method is then given full-resolution batches and
        downsamples them for the student itself, so the teacher and its cache see ``image_size``
        and the loader must not downsample (``loader_lowres_size``).
    prepare : callable or None
        ``prepare(build)``: the method's own build step, run once the classifier (``build.head``)
        and the frozen teacher are in place and before the terms are built (knowledge transfer).
    same_embedding : callable or None
        ``same_embedding(cfg) -> (setting, reason) or None``: why this config needs ``emb_size``
        equal to the teacher's (None: the sizes may differ; ``teacher_check.check_embedding_sizes``).
    """

    name: str
    summary: str
    order: int
    needs: Needs = Needs()
    variants: Tuple[Variant, ...] = ()
    keys: dict = dataclasses.field(default_factory=dict)
    defaults: dict = dataclasses.field(default_factory=dict)
    study: Tuple[StudyRow, ...] = ()
    terms: Optional[Callable] = None
    classifier: Optional[Callable] = None
    student_taps: Optional[Callable] = None
    check: Optional[Callable] = None
    student_size: Optional[Callable] = None
    prepare: Optional[Callable] = None
    same_embedding: Optional[Callable] = None

    @property
    def hooks(self):
        """Names of the hooks the method declares (for listings)."""
        return tuple(h for h in HOOKS if getattr(self, h) is not None)

    def distill_row(self, variant):
        """The ``DISTILL`` row of ``variant``: ``distill`` + the method's keys + its defaults + the
        variant's keys."""
        row = {"distill": self.name}
        row.update(copy.deepcopy(self.keys))
        row.update(copy.deepcopy(self.defaults))
        row.update(copy.deepcopy(variant.overrides))
        return row


#: the callables a ``MethodDef`` may declare, in the order the trainer uses them
HOOKS = ("check", "student_size", "student_taps", "same_embedding", "classifier", "prepare", "terms")


def _method_modules(package):
    """Names of the package's modules (its sub-packages, ``base``, are not methods)."""
    for info in pkgutil.iter_modules(package.__path__):
        if not info.ispkg:
            yield f"{package.__name__}.{info.name}"


def _check_unique(defs):
    """Method names, variant names and study keys are each unique across the modules; every
    method has a variant and every study row trains a declared variant."""
    declared = {v.name for d in defs for v in d.variants}
    for d in defs:
        if not d.variants:
            raise ValueError(f"method {d.name!r} declares no variant (no DISTILL row, no config)")
        for r in d.study:
            if r.variant not in declared:
                raise ValueError(f"study row {r.key!r} of {d.name!r} trains undeclared variant {r.variant!r}")
    for what, names in (("method", [(d.name, d) for d in defs]),
                        ("variant", [(v.name, d) for d in defs for v in d.variants]),
                        ("config suffix", [(v.config_suffix, d) for d in defs for v in d.variants]),
                        ("study key", [(r.key, d) for d in defs for r in d.study])):
        seen = {}
        for name, d in names:
            if name in seen:
                raise ValueError(f"{what} {name!r} is declared by both {seen[name].name!r} and {d.name!r}")
            seen[name] = d


def _declared(modname):
    """The ``METHOD`` of module ``modname``; ``ValueError`` naming a module without one."""
    declared = getattr(importlib.import_module(modname), "METHOD", None)
    if not isinstance(declared, MethodDef):
        raise ValueError(f"{modname} declares no METHOD = MethodDef(...): every module of shrinkteanet.methods "
                         "is a method (shared helpers go in shrinkteanet.methods.base)")
    return declared


@functools.lru_cache(maxsize=None)
def _discover():
    """``{name: MethodDef}`` of every method module of ``shrinkteanet.methods``, in ``order``."""
    from shrinkteanet import methods as package

    defs = [_declared(modname) for modname in _method_modules(package)]
    _check_unique(defs)
    return MappingProxyType({d.name: d for d in sorted(defs, key=lambda d: (d.order, d.name))})


def refresh():
    """Forget what discovery found, so that the next lookup scans the package folder again."""
    _discover.cache_clear()


def names():
    """Every method name, in ``order``."""
    return tuple(_discover())


def methods():
    """Every ``MethodDef``, in ``order``."""
    return tuple(_discover().values())


def method(name):
    """The ``MethodDef`` of ``distill=name``; ``InputError`` listing every valid name if unknown."""
    found = _discover().get(name)
    if found is None:
        raise InputError(f"distill={name!r}: unknown method; valid: {', '.join(names())}")
    return found


def variants():
    """``(MethodDef, Variant)`` of every variant, methods in ``order``, variants as declared."""
    return tuple((d, v) for d in methods() for v in d.variants)


def config_keys():
    """``{key: default}`` of every method's ``keys`` (fresh values each call); ``ValueError`` when two
    methods declare one key with different defaults."""
    keys, owner = {}, {}
    for d in methods():
        for key, value in d.keys.items():
            if key in keys and keys[key] != value:
                raise ValueError(f"config key {key!r}: {owner[key]!r} declares {keys[key]!r}, {d.name!r} {value!r}")
            keys.setdefault(key, copy.deepcopy(value))
            owner.setdefault(key, d.name)
    return keys


def distill_rows():
    """``{variant name: DISTILL row}`` (fresh dicts each call)."""
    return {v.name: d.distill_row(v) for d, v in variants()}


def study_rows():
    """Every ``StudyRow``, in report ``order``."""
    rows = [r for d in methods() for r in d.study]
    return tuple(sorted(rows, key=lambda r: (r.order, r.key)))


def study_config_suffix(row):
    """The named-config suffix the study row trains (``<network>_<suffix>``)."""
    for _, v in variants():
        if v.name == row.variant:
            return v.config_suffix
    raise ValueError(f"study row {row.key!r} trains variant {row.variant!r}, which no method declares")


def ablation_pairs():
    """``((base key, ablation key), ...)``: methods in ``order``, rows as each method declares them."""
    return tuple((r.ablation_of, r.key) for d in methods() for r in d.study if r.ablation_of)


# ---- what a config's method asks of the trainer (MXNet-free: config, validate, train) --------
def method_of(cfg):
    """The ``MethodDef`` of ``cfg.distill``, after the method's own config check (``InputError``
    naming the field: an unknown method lists every valid one)."""
    found = method(cfg.distill)
    if found.check is not None:
        found.check(cfg)
    return found


def needs_teacher(cfg):
    """True when ``cfg.distill`` uses a teacher (at build time or every step)."""
    return method_of(cfg).needs.teacher


def needs_teacher_embedding(cfg):
    """True when every step needs the teacher's final embedding (what a cache can hold)."""
    return method_of(cfg).needs.emb


def teacher_embedding_only(cfg):
    """True when the teacher's final embedding is all the method reads of it (no stage features,
    no tails, no classifier, no build step of its own such as a parameter transfer): a teacher cache
    alone can serve such a run (AdaDistill, EKD, the final-stage ShrinkTeaNet and L2 variants)."""
    found = method_of(cfg)
    needs = found.needs
    return bool(needs.emb and not (needs.taps or needs.fc7) and found.prepare is None and not student_needs_taps(cfg))


def student_image_size(cfg):
    """Input size of the student network: the method's ``student_size`` (low resolution), else
    ``image_size``."""
    found = method_of(cfg)
    return int(found.student_size(cfg)) if found.student_size is not None else int(cfg.image_size)


def loader_lowres_size(cfg):
    """``lowres_size`` the data loader should apply: 0 for a method with its own ``student_size``,
    which downsamples inside the method so that the teacher sees full resolution."""
    return 0 if method_of(cfg).student_size is not None else int(cfg.get("lowres_size", 0))


def student_needs_taps(cfg):
    """True when the method's terms read the student's stage features."""
    found = method_of(cfg)
    return bool(found.student_taps is not None and found.student_taps(cfg))
