"""The teacher comes from its checkpoint (issue 23): InsightFace-layout checkpoints of r18, r34,
r50, r100 (512-d) and y1 MobileFaceNet (128-d), with random weights, load as the teacher of
mfnr_stn with no teacher options, and the loaded teacher's fc1 equals a plain ``mx.mod.Module``
forward of the checkpoint.  The fresnets keep InsightFace's units per stage (what tells r100
from r90) at narrow widths and 32x32 faces, so the test stays fast; y1 is the full network."""
import mxnet as mx
import numpy as np
import pytest

from shrinkteanet.cli import main as cli_main
from shrinkteanet.core.errors import InputError
from shrinkteanet.training.networks import build_networks
from shrinkteanet.study import tiny
from shrinkteanet.symbols import get_symbol
from shrinkteanet.symbols.tables import FRESNET_UNITS
from shrinkteanet.training import config
from shrinkteanet.training.validate import validate

NARROW = [8, 8, 16, 16, 32]
STUDENT = "net_opts={'blocks':[1,1,1,1],'filters':[8,8,16,16,32]}"
#: name -> (registry network, emb, image size, options the checkpoint is written with)
CHECKPOINTS = {
    "r18": ("r18", 512, 32, {"filters": NARROW}),
    "r34": ("r34", 512, 32, {"filters": NARROW}),
    "r50": ("r50", 512, 32, {"filters": NARROW}),
    "r100": ("r100", 512, 32, {"filters": NARROW}),
    "y1": ("mfn", 128, 112, {}),
}


def write_insightface_checkpoint(prefix, network, emb, size, opts, classes=6, seed=0):
    """InsightFace's layout as its train.py saves it: the fc1 symbol, and arg/aux params with the
    margin head's fc7_weight, written by ``mx.model.save_checkpoint`` itself."""
    sym = get_symbol(network, emb_size=emb, image_size=size, **opts)
    arg, aux = tiny.random_params(sym, size, seed=seed)
    arg["fc7_weight"] = mx.nd.array(np.random.RandomState(seed).randn(classes, emb) * 0.1)
    mx.model.save_checkpoint(prefix, 1, sym, arg, aux)
    return f"{prefix},1"


def module_forward(prefix, data):
    """InsightFace's own way to run a checkpoint: ``mx.mod.Module`` over the fc1 cut."""
    sym, arg, aux = mx.model.load_checkpoint(prefix, 1)
    sym = sym.get_internals()["fc1_output"]
    mod = mx.mod.Module(sym, data_names=("data",), label_names=None, context=mx.cpu())
    mod.bind(data_shapes=[("data", data.shape)], for_training=False)
    mod.set_params({k: v for k, v in arg.items() if not k.startswith("fc7")}, aux)
    mod.forward(mx.io.DataBatch([mx.nd.array(data)]), is_train=False)
    return mod.get_outputs()[0].asnumpy()


def stn_config(teacher, size, *extra):
    return config.config_by_name("mfnr_stn", [f"teacher={teacher}", f"image_size={size}", STUDENT, "emb_size=32",
                                              "num_classes=6", *extra])


@pytest.mark.parametrize("name", sorted(CHECKPOINTS))
def test_insightface_checkpoint_is_its_own_teacher(tmp_path, name):
    network, emb, size, opts = CHECKPOINTS[name]
    teacher = write_insightface_checkpoint(str(tmp_path / name), network, emb, size, opts)
    cfg = stn_config(teacher, size)
    assert cfg.teacher_network == "" and not cfg.teacher_net_opts
    _, net, fc7 = build_networks(cfg)
    assert cfg.teacher_network == network and cfg.teacher_emb_size == emb
    assert fc7.shape == (6, emb)
    data = np.random.RandomState(1).uniform(0, 255, (2, 3, size, size)).astype(np.float32)
    ref = module_forward(str(tmp_path / name), data)
    with mx.autograd.pause(train_mode=False):
        out = net(mx.nd.array(data))
    out = (out[0] if isinstance(out, (list, tuple)) else out).asnumpy()
    assert out.shape == (2, emb)
    assert np.max(np.abs(out - ref)) <= 1e-4 * np.max(np.abs(ref))


def test_units_tell_r100_from_r90(tmp_path):
    """r90's parameter names are a subset of r100's: the old loader took an r100 as an r90."""
    teacher = write_insightface_checkpoint(str(tmp_path / "r100"), "r100", 512, 32, {"filters": NARROW})
    facts = validate(stn_config(teacher, 32))
    assert facts["teacher"].network == "r100"
    assert facts["teacher"].inferred.shape["units"] == list(FRESNET_UNITS[100])
    with pytest.raises(InputError, match=r"teacher_network=r90 .*disagrees with the checkpoint .*a r100 \(units "
                                         r"\(3, 13, 30, 3\).*checkpoint parameters unused, e.g. 'stage2_unit"):
        validate(stn_config(teacher, 32, "teacher_network=r90", f"teacher_net_opts={{'filters':{NARROW}}}"))


def test_contradicting_teacher_options_refused_in_one_line(tmp_path, capsys):
    teacher = write_insightface_checkpoint(str(tmp_path / "y1"), "mfn", 128, 112, {})
    code = cli_main(["config", "mfnr_stn", f"teacher={teacher}", "teacher_network=r50", "data_dir=/nonexistent"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "teacher_network=r50" in err[0] and "a mfn (blocks (1, 4, 6, 2)" in err[0] and "emb 128" in err[0]
    with pytest.raises(InputError, match="teacher_emb_size=512 disagrees"):
        validate(stn_config(teacher, 112, "teacher_emb_size=512"))


def test_checkpoint_with_parameters_the_network_does_not_use_is_refused(tmp_path):
    prefix = str(tmp_path / "odd")
    write_insightface_checkpoint(prefix, "r18", 512, 32, {"filters": NARROW})
    sym, arg, aux = mx.model.load_checkpoint(prefix, 1)
    arg["stage4_unit3_conv1_weight"] = mx.nd.zeros((32, 32, 3, 3))  # a unit the symbol does not have
    mx.model.save_checkpoint(prefix, 1, sym, arg, aux)
    with pytest.raises(InputError, match=r"does not match its parameters \(1 checkpoint parameters unused, "
                                         r"e.g. 'stage4_unit3_conv1_weight'\); refused rather than cut"):
        build_networks(stn_config(f"{prefix},1", 32))


def test_teacher_classifier_checks(tmp_path):
    prefix = str(tmp_path / "fc1only")
    teacher = write_insightface_checkpoint(prefix, "r18", 32, 32, {"filters": NARROW, "units": [1, 1, 1, 1]})
    sym, arg, aux = mx.model.load_checkpoint(prefix, 1)
    with pytest.raises(InputError, match="fc7_weight has 6 classes, the training data 5"):
        validate(config.config_by_name("mfn_kd", [f"teacher={teacher}", "image_size=32", "num_classes=5"]))
    del arg["fc7_weight"]
    mx.model.save_checkpoint(prefix, 1, sym, arg, aux)
    with pytest.raises(InputError, match=r"distill=margin reads the teacher's classifier .*has no fc7_weight"):
        validate(config.config_by_name("mfn_margin", [f"teacher={teacher}", "image_size=32", "emb_size=32"]))


def test_class_count_comes_from_the_data_property(tmp_path):
    data = tiny.write_tiny_set(tmp_path / "set", ids=5, per=2, with_bin=False)
    teacher = write_insightface_checkpoint(str(tmp_path / "t"), "r18", 32, 32, {"filters": NARROW})
    with pytest.raises(InputError, match="fc7_weight has 6 classes, the training data 5"):
        validate(config.config_by_name("mfn_kd", [f"teacher={teacher}", f"data_dir={data}", "emb_size=32"]))


def test_margin_with_mismatched_sizes_is_refused_in_one_line(tmp_path):
    teacher = write_insightface_checkpoint(str(tmp_path / "t"), "r18", 512, 32, {"filters": NARROW})
    with pytest.raises(InputError, match=r"^distill=margin: the teacher's embedding is 512-d, emb_size=128; "
                                         r"MarginDistillation uses the teacher's fc7 centres"):
        validate(config.config_by_name("mfn_margin", [f"teacher={teacher}", "image_size=32", "emb_size=128",
                                                      "num_classes=6"]))


def test_y1_is_mobilefacenet():
    assert config.config_by_name("mfn_stn", ["network=y1"]).network == "mfn"
    assert config.config_by_name("mfn_stn", ["teacher_network=y1"]).teacher_network == "mfn"


@pytest.mark.parametrize("override, needle", [
    ("network=r101", "config network='r101': unknown network 'r101'"),
    ("teacher_network=r101", "config teacher_network='r101': unknown network 'r101'"),
    ("distill_stages=5", "distill_stages=[5]: expected distinct stages from 1..4"),
    ("distill_stages=0", "distill_stages=[0]: expected distinct stages from 1..4"),
])
def test_config_refuses_what_train_refuses_before_any_data(override, needle, capsys):
    code = cli_main(["config", "mfn_stn", override, "data_dir=/nonexistent/set", "--teacher-pending"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0]
    code = cli_main(["train", "--config", "mfn_stn", "--data", "/nonexistent/set", override])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0]


def test_512d_teacher_trains_a_128d_student_with_every_part_decreasing(tmp_path):
    """ShrinkTeaNet Sec. 3.3: the student's final 128-d embedding reaches the 512-d teacher's
    through a 1x1 conv + BN (``adapter4``); every angular part falls over a few steps."""
    from shrinkteanet.training import train

    data = tiny.write_tiny_set(tmp_path / "set", ids=4, per=8, with_bin=False)
    teacher = write_insightface_checkpoint(str(tmp_path / "t"), "r18", 512, 32,
                                           {"filters": NARROW, "units": [1, 1, 1, 1]}, classes=4)
    cfg = config.config_by_name("mfnr_stn", tiny.train_overrides(
        data, None, f"teacher={teacher}", "emb_size=128", "max_batches=12", "lr_schedule=constant", "lr=0.05",
        "teacher_network=", "teacher_net_opts={}", "batch_size=32"))
    seen = []
    summary = train.train(cfg, callbacks=[lambda info: seen.append(dict(info["losses"]))])
    assert cfg.teacher_emb_size == 512 and cfg.emb_size == 128
    parts = [p for p in seen[0] if p.startswith("angular_")]
    assert parts == ["angular_1", "angular_2", "angular_3", "angular_4"]
    for part in parts:
        first, last = np.mean([s[part] for s in seen[:3]]), np.mean([s[part] for s in seen[-3:]])
        assert last < first, (part, first, last)
    assert 0 < summary["stage_cosines"]["4"] <= 1
