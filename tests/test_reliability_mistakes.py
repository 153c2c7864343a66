"""Issue 16, defect 10: each listed user mistake is one line ``shrinkteanet: error: ...`` naming
the file, line or key, exit status 2, and no traceback."""
import pickle

import pytest

from shrinkteanet.study.tiny import train_overrides, train_tiny_teacher, write_tiny_set
from shrinkteanet.cli import main as cli_main


pytestmark = pytest.mark.usefixtures("cli_log_handlers_closed")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("mistakes")
    data = write_tiny_set(root / "set")
    return data, train_tiny_teacher(data, root / "teacher"), root


def error_line(capsys, argv):
    """Run the CLI in-process; assert exit 2 and a single error line; return that line."""
    rc = cli_main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("shrinkteanet: error: "), err[-2000:]
    return last


def _train(data, *extra):
    return ["train", "--config", "mfnr_self", *train_overrides(data, None, "max_batches=1", *extra)]


def test_data_pack_image_size_not_a_number(tmp_path, capsys):
    line = error_line(capsys, ["data", "pack", "--image-folder", tmp_path, "--prefix", tmp_path / "o" / "train",
                               "--image-size", "abc"])
    assert line == "shrinkteanet: error: --image-size must be N or H,W, got 'abc'"


def test_lst_not_utf8_names_file_and_line(tmp_path, capsys):
    lst = tmp_path / "in.lst"
    lst.write_bytes(b"1\ta.jpg\t0\n1\tb\xe9.jpg\t1\n")  # latin-1 e-acute on line 2
    line = error_line(capsys, ["data", "pack", "--lst", lst, "--prefix", tmp_path / "o" / "train"])
    assert f"{lst}:2: not UTF-8 text (byte 0xe9 at column 4)" in line


def test_lst_nan_landmarks_names_file_line_and_field(tmp_path, capsys):
    lst = tmp_path / "in.lst"
    lm = "\t".join(["30", "70", "50", "35", "65", "50", "50", "nan", "80", "80"])
    lst.write_text(f"0\ta.jpg\t0\t0\t0\t112\t112\t{lm}\n")
    line = error_line(capsys, ["data", "align", "--lst", lst, "--out", tmp_path / "al"])
    assert f"{lst}:1: landmarks holds a non-finite number" in line


def test_empty_bin_in_evaluation(tiny, tmp_path, capsys):
    _, teacher, _ = tiny
    (tmp_path / "lfw.bin").write_bytes(b"")
    line = error_line(capsys, ["eval", "verification", "--model", teacher, "--data-dir", tmp_path, "--targets", "lfw",
                               "--image-size", "32", "--out", tmp_path / "ev"])
    assert f"{tmp_path / 'lfw.bin'}: empty file" in line


def test_net_opts_unknown_key(tiny, capsys):
    data, _, _ = tiny
    line = error_line(capsys, _train(data, "net_opts={'blockz':[1,1,1,1]}"))
    assert "net_opts=" in line and "'blockz'" in line


@pytest.mark.parametrize("override,key", [("lr=nan", "lr"), ("lr=inf", "lr"), ("lr=-1", "lr"),
                                          ("momentum=5", "momentum"), ("emb_size=0", "emb_size"),
                                          ("wd=-0.1", "wd")])
def test_meaningless_numbers_are_refused(tiny, capsys, override, key):
    data, _, _ = tiny
    line = error_line(capsys, _train(data, override))
    assert line.startswith(f"shrinkteanet: error: config {key}=") and "must be" in line


def test_teacher_net_opts_not_matching_the_checkpoint(tiny, capsys):
    data, teacher, _ = tiny
    line = error_line(capsys, ["train", "--config", "mfnr_stn", *train_overrides(
        data, None, "max_batches=1", f"teacher={teacher}",
        "teacher_net_opts={'units':[1,1,1,1],'filters':[8,8,16,16,64]}")])
    # both named: the options given, and the network the checkpoint's symbol holds
    assert "teacher_net_opts=" in line and "'filters': [8, 8, 16, 16, 64]" in line
    assert "disagrees with the checkpoint" in line and "filters (8, 8, 16, 16, 32)" in line


def test_gpus_on_a_cpu_build(tiny, capsys):
    data, _, _ = tiny
    line = error_line(capsys, _train(data) + ["--gpus", "0"])
    assert line.startswith("shrinkteanet: error: --gpus 0: this MXNet is a CPU build")


def test_eval_image_size_not_matching_the_model(tiny, tmp_path, capsys):
    data, teacher, _ = tiny
    line = error_line(capsys, ["eval", "verification", "--model", teacher, "--data-dir", data, "--targets", "lfw",
                               "--image-size", "112", "--out", tmp_path / "ev"])
    assert f"--image-size 112: --model {teacher} takes 32x32 faces, not 112x112" in line


@pytest.mark.parametrize("suffix", ["params", "states"])
def test_resume_from_a_truncated_checkpoint(tiny, tmp_path, capsys, suffix):
    data, _, _ = tiny
    out = tmp_path / "run"
    assert cli_main(_train(data) + ["--out", str(out)]) == 0
    victim = out / f"model-0001.{suffix}"
    victim.write_bytes(victim.read_bytes()[:40])
    line = error_line(capsys, _train(data, "max_batches=2") + ["--out", out, "--resume"])
    assert f"--resume: {victim}: unreadable" in line


def test_mxnet_load_errors_show_their_reason(tiny, tmp_path, capsys):
    _, teacher, _ = tiny
    prefix, number = teacher.rsplit(",", 1)
    bad = tmp_path / "bad"
    (tmp_path / "lfw.bin").write_bytes(b"never read")
    (tmp_path / "bad-symbol.json").write_bytes(open(f"{prefix}-symbol.json", "rb").read())
    (tmp_path / "bad-0001.params").write_bytes(open("%s-%04d.params" % (prefix, int(number)), "rb").read()[:300])
    line = error_line(capsys, ["eval", "verification", "--model", f"{bad},1", "--data-dir", tmp_path,
                               "--targets", "lfw", "--out", tmp_path / "ev"])
    assert "bad-0001.params: not an MXNet parameter file (" in line and "Traceback" not in line
    assert "Invalid NDArray file format" in line
    # a truncated symbol file fails to decode as UTF-8 inside MXNet
    (tmp_path / "bad-symbol.json").write_bytes(open(f"{prefix}-symbol.json", "rb").read()[:100] + b"\xff")
    line = error_line(capsys, ["eval", "verification", "--model", f"{bad},1", "--data-dir", tmp_path,
                               "--targets", "lfw", "--out", tmp_path / "ev"])
    assert "bad-symbol.json: not an MXNet symbol file (" in line


def test_bin_refusal_is_one_line_on_the_cli(tiny, tmp_path, capsys):
    _, teacher, _ = tiny

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "lfw.bin").write_bytes(pickle.dumps(([Evil(), b"x"], [True]), protocol=2))
    line = error_line(capsys, ["eval", "verification", "--model", teacher, "--data-dir", tmp_path, "--targets", "lfw",
                               "--image-size", "32", "--out", tmp_path / "ev"])
    assert "not a plain verification pickle (refused global __builtin__.print)" in line  # protocol 2 name
