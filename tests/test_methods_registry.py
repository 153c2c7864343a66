"""The method registry (``shrinkteanet.methods.registry``): a method is one module, discovered lazily;
every method table of the project is derived from it and equals what it was written out by hand."""
import importlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from shrinkteanet.study.tiny import train_overrides as overrides, train_tiny_teacher as train_teacher, write_tiny_set as make_set
from shrinkteanet import methods as methods_pkg
from shrinkteanet.core.errors import InputError
from shrinkteanet.methods import registry
from shrinkteanet.training import config

#: A whole new method as one file: ``1 - cos(s, t)`` on the final embeddings, weight ``toycos_lambda``
#: (a config key the method itself brings), one variant, one study row.
TOY_NAME = "toycos"
TOY_MODULE = textwrap.dedent('''
    """Toy method of tests/test_methods_registry.py: weighted 1 - cos(s, t) of the final embeddings."""
    from shrinkteanet.methods.registry import MethodDef, Needs, StudyRow, Variant


    def one_minus_cos(s, t):
        import mxnet as mx

        return 1 - mx.nd.sum(mx.nd.L2Normalization(s) * mx.nd.L2Normalization(t), axis=1)


    def terms(build):
        from shrinkteanet.methods.terms import EmbeddingTerm

        return [EmbeddingTerm("cosine", build.cfg.toycos_lambda, one_minus_cos)]


    METHOD = MethodDef(name="toycos", summary="toy: 1 - cos on the final embedding", order=1000,
                       needs=Needs(teacher=True, emb=True), defaults=dict(toycos_lambda=2.0),
                       variants=(Variant("toycos"),),
                       study=(StudyRow("toycos", "toycos", "Toy cosine", order=1000),), terms=terms)
''')


@pytest.fixture
def toy_method():
    """The toy module written into the installed ``shrinkteanet.methods`` folder, removed after."""
    path = os.path.join(methods_pkg.__path__[0], f"{TOY_NAME}.py")
    assert not os.path.exists(path)
    try:
        with open(path, "w") as f:
            f.write(TOY_MODULE)
        importlib.invalidate_caches()
        registry.refresh()
        yield path
    finally:
        os.remove(path)
        cached = os.path.join(os.path.dirname(path), "__pycache__")
        for name in os.listdir(cached) if os.path.isdir(cached) else ():
            if name.startswith(f"{TOY_NAME}."):
                os.remove(os.path.join(cached, name))
        sys.modules.pop(f"shrinkteanet.methods.{TOY_NAME}", None)
        registry.refresh()


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
OLD_DEMO = {"self": ("self", ()), "l2": ("l2", ()), "l2_final": ("l2_final", ()), "stn_final": ("stn_final", ()),
            "stn": ("stn", ()), "kd": ("kd", ()), "margin": ("margin", ()),
            "stn_final_w10": ("stn_final", ("distill_weight=10",)), "stn_w10": ("stn", ("distill_weight=10",))}
OLD_METHOD_NAMES = {"teacher": "Teacher", "self": "Self-studied", "l2": "Student-1 (L2)", "stn": "ShrinkTeaNet",
                    "l2_final": "L2, final embedding only", "stn_final": "ShrinkTeaNet, final stage only (Eq. 5)",
                    "kd": "Hinton KD", "margin": "MarginDistillation",
                    "stn_w10": "ShrinkTeaNet, weight 10", "stn_final_w10": "ShrinkTeaNet final only, weight 10"}


def test_derived_tables_equal_the_hand_written_ones():
    from shrinkteanet.methods import distill
    from shrinkteanet.study import demo, paper, table

    assert config.DISTILL == {**OLD_DISTILL, **NEW_DISTILL} and list(config.DISTILL) == list(OLD_DISTILL) + list(NEW_DISTILL)
    old_configs = {"teacher_r90": ("r90", "emore", "arcface", "none"),
                   "teacher_r100": ("r100", "emore", "arcface", "none")}
    for student in ("mv1", "mv2", "mfn", "mfnr"):
        old_configs[f"{student}_self"] = (student, "emore", "arcface", "none")
        for m in ("l2", "l2_final", "stn", "stn_final", "kd", "hint", "margin", "lowres_kt", "lowres_kd",
                  "lowres_ktkd", "adadistill", "adadistill_cos", "ekd"):
            old_configs[f"{student}_{m}"] = (student, "emore", "arcface", m)
    assert config.CONFIGS == old_configs
    assert distill.SPECS == {**OLD_SPECS, **NEW_SPECS} and distill.METHODS == tuple(OLD_SPECS) + tuple(NEW_SPECS)
    new_demo = {"adadistill": ("adadistill", ()), "ekd": ("ekd", ())}
    demo_order = [*list(OLD_DEMO)[:7], *new_demo, *list(OLD_DEMO)[7:]]  # after margin, before the weight ablation
    assert demo.METHODS == {**OLD_DEMO, **new_demo} and list(demo.METHODS) == demo_order
    assert paper.METHODS == {"teacher": "Teacher", "self": "Self-Studied", "l2": "Student-1 (L2 loss)",
                             "stn": "ShrinkTeaNet"}
    assert table.METHOD_NAMES == {**OLD_METHOD_NAMES, "adadistill": "AdaDistill", "ekd": "EKD"}
    assert table.WEIGHT_ABLATION == (("stn", "stn_w10"), ("stn_final", "stn_final_w10"))
    assert [table._config_suffix(m) for m in ("self", "stn_w10", "stn_final_w10", "hint")] == \
        ["self", "stn", "stn_final", "hint"]
    # a fresh table each read: editing one cannot change the next
    config.DISTILL.stn.distill_stages.append(9)
    assert config.DISTILL.stn.distill_stages == [1, 2, 3, 4]


def test_stage_weights_moved_into_methods_and_stay_importable_from_config():
    from shrinkteanet.methods import stages

    assert config.distill_lambdas is stages.distill_lambdas and config.LAST_STAGE == stages.LAST_STAGE == 4


def test_discovery_is_lazy_and_the_methods_package_never_imports_training():
    code = ("import sys, shrinkteanet, shrinkteanet.methods.registry as r; "
            "before = sorted(m for m in sys.modules if m.startswith('shrinkteanet.methods.'));"
            "r.names(); after = sorted(m for m in sys.modules if m.startswith('shrinkteanet.'));"
            "print(before); print('mxnet' in sys.modules, any(m.startswith('shrinkteanet.training') for m in after));"
            "print('shrinkteanet.methods.stn' in after)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["['shrinkteanet.methods.registry']", "False False", "True"]


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
    assert listed == set(config.CONFIGS) and {"mfnr_lowres_ktkd", "teacher_r100", "mv1_self"} <= listed
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
    from shrinkteanet.study import demo, table

    assert TOY_NAME in registry.names() and registry.names()[-1] == TOY_NAME
    assert config.DISTILL[TOY_NAME] == {"distill": TOY_NAME, "toycos_lambda": 2.0}
    assert {f"{s}_{TOY_NAME}" for s in ("mv1", "mv2", "mfn", "mfnr")} <= set(config.CONFIGS)
    cfg = config.config_by_name(f"mfn_{TOY_NAME}", ["toycos_lambda=3"])
    assert cfg.distill == TOY_NAME and cfg.toycos_lambda == 3.0
    assert demo.METHODS[TOY_NAME] == (TOY_NAME, ()) and table.METHOD_NAMES[TOY_NAME] == "Toy cosine"
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
