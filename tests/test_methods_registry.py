"""The method registry (``shrinkteanet.methods.base.registry``): a method is one module, discovered lazily;
every method table of the project is derived from it and equals what it was written out by hand."""
import json
import importlib.util
import pkgutil
import subprocess
import sys
import textwrap
import types
from unittest import mock

import numpy as np
import pytest

from _toy_method import installed_method
from shrinkteanet.study.tiny import train_overrides as overrides, train_tiny_teacher as train_teacher, write_tiny_set as make_set
from shrinkteanet import methods as methods_pkg
from shrinkteanet.core.errors import InputError
from shrinkteanet.methods.base import registry
from shrinkteanet.training import config

#: A whole new method as one file: ``1 - cos(s, t)`` on the final embeddings, weight ``toycos_lambda``
#: (a config key the method itself brings), one variant, one study row.
TOY_NAME = "toycos"
TOY_MODULE = textwrap.dedent('''
    """Toy method of tests/test_methods_registry.py: weighted 1 - cos(s, t) of the final embeddings."""
    from shrinkteanet.methods.base.registry import MethodDef, Needs, StudyRow, Variant


    def one_minus_cos(s, t):
        import mxnet as mx

        return 1 - mx.nd.sum(mx.nd.L2Normalization(s) * mx.nd.L2Normalization(t), axis=1)


    def terms(build):
        from shrinkteanet.methods.base.terms import EmbeddingTerm

        return [EmbeddingTerm("cosine", build.cfg.toycos_lambda, one_minus_cos)]


    METHOD = MethodDef(name="toycos", summary="toy: 1 - cos on the final embedding", order=1000,
                       needs=Needs(teacher=True, emb=True), keys=dict(toycos_lambda=2.0),
                       variants=(Variant("toycos"),),
                       study=(StudyRow("toycos", "toycos", "Toy cosine", order=1000),), terms=terms)
''')


@pytest.fixture
def toy_method():
    """The toy module written into the installed ``shrinkteanet.methods`` folder, removed after."""
    with installed_method(TOY_NAME, TOY_MODULE) as path:
        yield path


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "shrinkteanet", *args], capture_output=True, text=True)


# the tables as they were written out by hand before the registry, in six modules
OLD_DISTILL = dict(
    none=dict(distill="none"),
    stn=dict(distill="stn", distill_stages=[1, 2, 3, 4], distill_lambdas=[]),
    stn_final=dict(distill="stn", distill_stages=[4], distill_lambdas=[]),
    l2=dict(distill="l2", distill_stages=[1, 2, 3, 4], distill_lambdas=[], l2_lambda=0.001),
    l2_final=dict(distill="l2", distill_stages=[4], distill_lambdas=[], l2_lambda=0.001),
    kd=dict(distill="kd", kd_temperature=4.0, kd_lambda=1.0),
    hint=dict(distill="hint", distill_stages=[1, 2, 3, 4], hint_lambda=1.0),
    margin=dict(distill="margin", margin_s=64.0, margin_m_min=0.2, margin_m_max=0.5),
    lowres_kt=dict(distill="lowres_kt", lowres_size=56),
    lowres_kd=dict(distill="lowres_kd", lowres_size=56, kd_temperature=4.0, kd_lambda=1.0),
    lowres_ktkd=dict(distill="lowres_ktkd", lowres_size=56, kd_temperature=4.0, kd_lambda=1.0),
)
# issue 22: AdaDistill and EKD, each one new file (methods/adadistill.py, methods/ekd.py)
NEW_DISTILL = dict(
    adadistill=dict(distill="adadistill", loss="arcface", margin_s=64.0, margin_m1=1.0, margin_m2=0.45, margin_m3=0.0,
                    adadistill_weighted=True),
    adadistill_cos=dict(distill="adadistill", loss="cosface", margin_s=64.0, margin_m1=1.0, margin_m2=0.0,
                        margin_m3=0.35, adadistill_weighted=True),
    ekd=dict(distill="ekd", ekd_pos_weight=0.02, ekd_neg_weight=0.01, ekd_temperature=0.01, ekd_momentum=0.01,
             ekd_topk=2000, ekd_fpr_anchors=[10, 100, 1000, 10000, 100000, 1000000]),
)
NEW_SPECS = {"adadistill": dict(teacher=True, emb=True), "ekd": dict(teacher=True, emb=True)}
OLD_SPECS = {  # the needs of the old SPECS rows (their term kinds now live in the method modules)
    "none": {}, "stn": dict(teacher=True, emb=True), "l2": dict(teacher=True, emb=True),
    "kd": dict(teacher=True, emb=True, fc7=True), "hint": dict(teacher=True, taps=True),
    "margin": dict(teacher=True, emb=True, fc7=True),
    "lowres_kt": dict(teacher=True, fc7=True, lowres=True, transfer=True),
    "lowres_kd": dict(teacher=True, emb=True, fc7=True, lowres=True),
    "lowres_ktkd": dict(teacher=True, emb=True, fc7=True, lowres=True, transfer=True),
}


def old_spec(d):
    """The old ``SPECS`` row of a ``MethodDef``: its needs, ``lowres`` for its own ``student_size``
    and ``transfer`` for its ``prepare`` step (the two flags became the method's hooks)."""
    row = d.needs.as_dict()
    row.update({flag: True for flag, hook in (("lowres", d.student_size), ("transfer", d.prepare)) if hook})
    return row


OLD_DEMO = {"self": ("self", ()), "l2": ("l2", ()), "l2_final": ("l2_final", ()), "stn_final": ("stn_final", ()),
            "stn": ("stn", ()), "kd": ("kd", ()), "margin": ("margin", ()),
            "stn_final_w10": ("stn_final", ("stn_weight=10",)), "stn_w10": ("stn", ("stn_weight=10",))}
OLD_METHOD_NAMES = {"teacher": "Teacher", "self": "Self-studied", "l2": "Student-1 (L2)", "stn": "ShrinkTeaNet",
                    "l2_final": "L2, final embedding only", "stn_final": "ShrinkTeaNet, final stage only (Eq. 5)",
                    "kd": "Hinton KD", "margin": "MarginDistillation",
                    "stn_w10": "ShrinkTeaNet, weight 10", "stn_final_w10": "ShrinkTeaNet final only, weight 10"}


def test_derived_tables_equal_the_hand_written_ones():
    from shrinkteanet.study import demo, paper, report_table

    # each row as written by hand, plus the method's own keys at their defaults (which DEFAULT held before)
    hand = {**OLD_DISTILL, **NEW_DISTILL}
    assert list(config.distill_table()) == list(OLD_DISTILL) + list(NEW_DISTILL)
    for name, row in config.distill_table().items():
        method_keys = registry.method(row.distill).keys
        assert dict(row) == {**{k: v for k, v in method_keys.items()}, **hand[name]}, name
    old_configs = {"teacher_r90": ("r90", "emore", "arcface", "none"),
                   "teacher_r100": ("r100", "emore", "arcface", "none")}
    for student in ("mv1", "mv2", "mfn", "mfnr"):
        old_configs[f"{student}_self"] = (student, "emore", "arcface", "none")
        for m in ("l2", "l2_final", "stn", "stn_final", "kd", "hint", "margin", "lowres_kt", "lowres_kd",
                  "lowres_ktkd", "adadistill", "adadistill_cos", "ekd"):
            old_configs[f"{student}_{m}"] = (student, "emore", "arcface", m)
    assert config.named_configs() == old_configs
    assert {d.name: old_spec(d) for d in registry.methods()} == {**OLD_SPECS, **NEW_SPECS}
    assert registry.names() == tuple(OLD_SPECS) + tuple(NEW_SPECS)
    new_demo = {"adadistill": ("adadistill", ()), "ekd": ("ekd", ())}
    demo_order = [*list(OLD_DEMO)[:7], *new_demo, *list(OLD_DEMO)[7:]]  # after margin, before the weight ablation
    assert demo.study_methods() == {**OLD_DEMO, **new_demo} and list(demo.study_methods()) == demo_order
    assert paper.paper_methods() == {"teacher": "Teacher", "self": "Self-Studied", "l2": "Student-1 (L2 loss)",
                                     "stn": "ShrinkTeaNet"}
    assert report_table.method_names() == {**OLD_METHOD_NAMES, "adadistill": "AdaDistill", "ekd": "EKD"}
    assert report_table.weight_ablation() == (("stn", "stn_w10"), ("stn_final", "stn_final_w10"))
    assert [report_table._config_suffix(m) for m in ("self", "stn_w10", "stn_final_w10", "hint")] == \
        ["self", "stn", "stn_final", "hint"]
    # a fresh table each call: editing one cannot change the next
    table_once = config.distill_table()
    table_once.stn.distill_stages.append(9)
    assert config.distill_table().stn.distill_stages == [1, 2, 3, 4]


def test_each_config_default_is_declared_once():
    """Method keys live in the method files (``MethodDef.keys``), the rest in ``config.DEFAULT``; every
    config has every key, at the value DEFAULT held before (ShrinkTeaNet Sec. 4.2 and the baselines)."""
    before = dict(distill_stages=[1, 2, 3, 4], distill_lambdas=[], stn_weight=1.0, l2_lambda=0.001,
                  kd_temperature=4.0, kd_lambda=1.0, hint_lambda=1.0, kd_emb_loss="none", kd_emb_lambda=1.0,
                  margin_m_min=0.2, margin_m_max=0.5)
    keys = registry.config_keys()
    assert {k: keys[k] for k in before} == before and not set(keys) & set(config.DEFAULT)
    assert keys["adadistill_weighted"] is True and keys["ekd_topk"] == 2000  # the newer methods' own keys
    for name in ("mfn_self", "mv1_kd", "teacher_r100"):
        cfg = config.config_by_name(name)
        assert {k: cfg[k] for k in before} == before, name
    a = registry.MethodDef(name="a", summary="", order=0, variants=(registry.Variant("a"),), keys=dict(k=1))
    b = registry.MethodDef(name="b", summary="", order=1, variants=(registry.Variant("b"),), keys=dict(k=2))
    with mock.patch.object(registry, "methods", return_value=(a, b)):
        with pytest.raises(ValueError, match="config key 'k': 'a' declares 1, 'b' 2"):
            registry.config_keys()
    stray = registry.MethodDef(name="c", summary="", order=2, variants=(registry.Variant("c"),),
                               defaults=dict(nobody_declares=1))
    with mock.patch.object(registry, "methods", return_value=(stray,)):
        with pytest.raises(ValueError, match=r"DISTILL row 'c' sets \['nobody_declares'\]"):
            config.default_config()


def test_renamed_keys_still_work_with_a_notice(caplog):
    """``distill_weight`` is ShrinkTeaNet's ``stn_weight`` and ``verbose`` is ``verify_every``: the old
    names still set the new keys, with one notice line each."""
    with caplog.at_level("WARNING", logger="shrinkteanet.training.config"):
        cfg = config.config_by_name("mfn_stn", ["distill_weight=10", "verbose=7"])
    assert (cfg.stn_weight, cfg.verify_every) == (10.0, 7) and "distill_weight" not in cfg and "verbose" not in cfg
    notices = [r.getMessage() for r in caplog.records]
    assert notices == ["config key distill_weight is now stn_weight; the old name still works",
                       "config key verbose is now verify_every; the old name still works"]
    from shrinkteanet.training.run_folder import changed_run_keys

    saved = dict(config.config_by_name("mfn_stn"))
    saved["distill_weight"] = saved.pop("stn_weight")
    assert changed_run_keys(saved, cfg) == ["stn_weight"]  # an old run's weight is compared, not skipped


def test_no_compatibility_attribute_is_left():
    """The tables are functions of the registry, read where they live: no module-level ``__getattr__``
    computes them (nor re-exports the Eq. 7 weights from ``config``)."""
    from shrinkteanet.study import demo, paper, report_table

    for module, names in ((config, ("DISTILL", "CONFIGS", "distill_lambdas", "LAST_STAGE")), (demo, ("METHODS",)),
                          (paper, ("METHODS",)), (report_table, ("METHOD_NAMES", "WEIGHT_ABLATION"))):
        assert not hasattr(module, "__getattr__"), module.__name__
        assert not any(hasattr(module, n) for n in names), module.__name__


def test_discovery_is_lazy_and_the_methods_package_never_imports_training():
    code = ("import sys, shrinkteanet, shrinkteanet.methods.base.registry as r; "
            "before = sorted(m for m in sys.modules if m.startswith('shrinkteanet.methods.'));"
            "r.names(); after = sorted(m for m in sys.modules if m.startswith('shrinkteanet.'));"
            "print(before); print('mxnet' in sys.modules, any(m.startswith('shrinkteanet.training') for m in after));"
            "print('shrinkteanet.methods.stn' in after)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["['shrinkteanet.methods.base', 'shrinkteanet.methods.base.registry']", "False False", "True"]


def test_every_module_of_methods_is_a_method(tmp_path, monkeypatch):
    """Discovery has no skip list: every module of ``methods/`` declares a method, the machinery is
    the ``base`` sub-package, and a helper module left beside the methods is refused by name."""
    names = {info.name for info in pkgutil.iter_modules(methods_pkg.__path__)}
    assert set(OLD_SPECS) <= names and "base" in names
    for name in names - {"base"}:
        assert isinstance(registry._declared(f"shrinkteanet.methods.{name}"), registry.MethodDef), name
    package = types.SimpleNamespace(__name__="pkg", __path__=[str(tmp_path)])
    (tmp_path / "_helper.py").write_text("X = 1\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "__init__.py").write_text("")
    assert list(registry._method_modules(package)) == ["pkg._helper"]
    # the helper is loaded from its file and registered as a module, so discovery imports it by name
    spec = importlib.util.spec_from_file_location("_helper", tmp_path / "_helper.py")
    helper = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helper)
    monkeypatch.setitem(sys.modules, "_helper", helper)
    with pytest.raises(ValueError, match=r"_helper declares no METHOD .*go in shrinkteanet.methods.base"):
        registry._declared("_helper")


def test_unknown_names_fail_listing_every_valid_one():
    with pytest.raises(InputError) as e:
        registry.method("stnn")
    assert str(e.value).startswith("distill='stnn': unknown method; valid: ")
    assert set(str(e.value).split("valid: ")[1].split(", ")) == set(OLD_SPECS) | set(NEW_SPECS)
    with pytest.raises(InputError, match="unknown distill method 'stnn'; valid: .*stn_final"):
        config.generate_config("mfn", "synth", "arcface", "stnn")
    r = run_cli("train", "--config", "mfn_stnn")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "unknown config 'mfn_stnn'" in lines[0] and "did you mean mfn_stn" in lines[0]
    listed = set(lines[0].split("valid: ")[1].split(", "))
    assert listed == set(config.named_configs()) and {"mfnr_lowres_ktkd", "teacher_r100", "mv1_self"} <= listed
    r = run_cli("config", "mfn_stn", "distill=bogus")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "unknown distill method 'bogus'; valid: adadistill, adadistill_cos, ekd, hint, kd" in lines[0]


def test_a_method_module_declaring_a_taken_name_is_refused():
    a = registry.MethodDef(name="x", summary="", order=0, variants=(registry.Variant("x"),))
    b = registry.MethodDef(name="y", summary="", order=1, variants=(registry.Variant("x"),))
    with pytest.raises(ValueError, match="variant 'x' is declared by both 'x' and 'y'"):
        registry._check_unique([a, b])
    registry._check_unique([a])
    with pytest.raises(ValueError, match="declares no variant"):
        registry._check_unique([registry.MethodDef(name="z", summary="", order=2)])
    row = registry.StudyRow("k", "nope", "K", order=0)
    with pytest.raises(ValueError, match="study row 'k' of 'x' trains undeclared variant 'nope'"):
        registry._check_unique([registry.MethodDef(name="x", summary="", order=0, variants=(registry.Variant("x"),),
                                                   study=(row,))])


def test_a_new_method_file_appears_in_every_table(toy_method):
    from shrinkteanet.study import demo, report_table

    assert TOY_NAME in registry.names() and registry.names()[-1] == TOY_NAME
    assert config.distill_table()[TOY_NAME] == {"distill": TOY_NAME, "toycos_lambda": 2.0}
    assert {f"{s}_{TOY_NAME}" for s in ("mv1", "mv2", "mfn", "mfnr")} <= set(config.named_configs())
    cfg = config.config_by_name(f"mfn_{TOY_NAME}", ["toycos_lambda=3"])
    assert cfg.distill == TOY_NAME and cfg.toycos_lambda == 3.0
    assert demo.study_methods()[TOY_NAME] == (TOY_NAME, ()) and report_table.method_names()[TOY_NAME] == "Toy cosine"
    r = run_cli("config", "--methods")
    assert r.returncode == 0 and any(ln.startswith(f"{TOY_NAME} ") for ln in r.stdout.splitlines()), r.stdout


def test_a_new_method_file_trains_from_the_command_line(toy_method, tmp_path):
    """``shrinkteanet train --config mfn_toycos`` with nothing but the new file: the toy's part is in
    the summary, finite, and went down over the run (curve points every 8 of 32 steps)."""
    data = make_set(tmp_path / "data", with_bin=False)
    teacher = train_teacher(data, tmp_path / "teacher")
    js = tmp_path / "summary.json"
    r = run_cli("train", "--config", f"mfn_{TOY_NAME}", "--teacher", teacher, "--json", str(js),
                *overrides(data, tmp_path / "student" / "model", "max_batches=32", "lr_schedule=constant",
                           "frequent=8", "toycos_lambda=4", "softmax_weight=0.1"))
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(js.read_text())
    assert set(summary["losses"]) == {"softmax", "cosine"}
    curve = [p["cosine"] for p in summary["curve"]]
    assert len(curve) == 4 and np.isfinite(curve).all() and np.isfinite(summary["losses"]["cosine"])
    assert curve[-1] < curve[0] and 0 < curve[0] <= 4 * 2, curve
