"""A new method that owns its behaviour (issue 25): one file declaring its own ``prepare`` build step
and its own ``student_size``, and nothing else edited.  Discovery finds it, ``train`` runs its
prepare step once the head and the teacher exist, and the student runs at the method's size while
the teacher keeps the full resolution."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from _toy_method import installed_method
from shrinkteanet.methods.base import registry
from shrinkteanet.model.checkpoint import load_checkpoint
from shrinkteanet.study.tiny import train_overrides, train_tiny_teacher, write_tiny_set
from shrinkteanet.symbols.tables import final_size
from shrinkteanet.training import config

NAME = "toyprep"
#: fixed class centres taken from the teacher in ``prepare``, a student at half the image size
MODULE = textwrap.dedent('''
    """Toy method of tests/test_method_hooks.py: the teacher's class centres, fixed, for a half-size student."""
    from shrinkteanet.methods.base.registry import MethodDef, Needs, Variant


    def student_size(cfg):
        return int(cfg.image_size) // 2


    def prepare(build):
        from shrinkteanet.methods.base.terms import load_centres

        assert build.head is not None and build.frozen.teacher is build.teacher  # after head and teacher
        load_centres(build.head, build)
        build.head.weight.grad_req = "null"


    METHOD = MethodDef(name="toyprep", summary="toy: fixed teacher centres, half-size student", order=1001,
                       needs=Needs(teacher=True, fc7=True), variants=(Variant("toyprep"),),
                       student_size=student_size, prepare=prepare)
''')


@pytest.fixture
def toy_prepare():
    with installed_method(NAME, MODULE) as path:
        yield path


def test_a_method_with_its_own_prepare_step_trains_from_the_command_line(toy_prepare, tmp_path):
    """The student's checkpoint holds the teacher's ``fc7_weight`` bit for bit after 6 SGD steps
    (set by ``prepare``, frozen there), and its GDC kernel is that of a 16x16 input, not 32x32."""
    d = registry.method(NAME)
    assert d.hooks == ("student_size", "prepare")
    cfg = config.config_by_name(f"mfn_{NAME}", ["image_size=32"])
    assert registry.student_image_size(cfg) == 16 and registry.loader_lowres_size(cfg) == 0
    data = write_tiny_set(tmp_path / "data", with_bin=False)
    teacher = train_tiny_teacher(data, tmp_path / "teacher")
    js = tmp_path / "summary.json"
    r = subprocess.run([sys.executable, "-m", "shrinkteanet", "train", "--config", f"mfn_{NAME}", "--teacher",
                        teacher, "--json", str(js), *train_overrides(data, tmp_path / "student" / "model",
                                                                     "max_batches=6", "lr_schedule=constant")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(js.read_text())
    assert set(summary["losses"]) == {"softmax"} and np.isfinite(summary["losses"]["softmax"])
    _, t_arg, _ = load_checkpoint(*teacher.split(","), keep_extra=True)
    _, s_arg, _ = load_checkpoint(str(tmp_path / "student" / "model"), summary["checkpoint"], keep_extra=True)
    assert s_arg["fc7_weight"].asnumpy().tobytes() == t_arg["fc7_weight"].asnumpy().tobytes()
    kernel = s_arg["conv_6dw7_7_conv2d_weight"].shape[2:]
    assert kernel == (final_size(16), final_size(16)) != (final_size(32), final_size(32))
    listing = subprocess.run([sys.executable, "-m", "shrinkteanet", "config", "--methods"], capture_output=True,
                             text=True).stdout
    assert any(ln.startswith(NAME) and "hooks=student_size,prepare " in ln for ln in listing.splitlines()), listing


@pytest.mark.parametrize("name,extra,message", [
    ("margin", [], "distill=margin: the teacher's embedding is 64-d, emb_size=32; MarginDistillation uses the "
                   "teacher's fc7 centres as the student's class centres, so emb_size must equal the teacher's"),
    ("lowres_ktkd", ["kd_emb_loss=l2"], "distill=lowres_ktkd: the teacher's embedding is 64-d, emb_size=32; "
                                        "knowledge transfer copies the teacher's parameters, so emb_size must "
                                        "equal the teacher's"),
    ("kd", ["kd_emb_loss=angular"], "distill=kd kd_emb_loss=angular: the teacher's embedding is 64-d, "
                                    "emb_size=32; the embedding term compares the two embeddings directly "
                                    "(set kd_emb_loss=none or emb_size)"),
    ("kd", [], None), ("stn", [], None), ("hint", [], None), ("none", [], None)])
def test_each_method_says_whether_its_embedding_must_be_the_teachers(name, extra, message):
    """``MethodDef.same_embedding``: the width rule lives in the method file, the check is generic."""
    from shrinkteanet.core.errors import InputError
    from shrinkteanet.methods.base.teacher_check import check_embedding_sizes

    cfg = config.generate_config("mfn", "synth", "arcface", name, ["emb_size=32", *extra])
    d = registry.method(name)
    check_embedding_sizes(cfg, d, 32)  # equal widths: always fine
    if message is None:
        check_embedding_sizes(cfg, d, 64)
        return
    with pytest.raises(InputError) as e:
        check_embedding_sizes(cfg, d, 64)
    assert str(e.value) == message
