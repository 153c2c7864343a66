"""Issue 21, "Writers": never write over what the user did not name, check the outputs at the
start, leave no debris (docs/reliability.md, section "Writers").

Every test here failed on the code before issue 21 (the acceptance probe first): ``export --model
P,E --mkldnn P`` wrote over its checkpoint, ``train --overwrite`` removed files by pattern and the
teacher, data writers replaced sets silently, unwritable outputs were found after the work (or
ended in tracebacks), a 245-character ``--json`` failed, a failed run left a folder behind."""
import json
import os
import shutil
import sys

import mxnet as mx
import numpy as np
import pytest

from _files import tree_sha1
from shrinkteanet.cli import main as cli_main
from shrinkteanet.core.errors import InputError
from shrinkteanet.study.tiny import random_params, train_overrides, train_tiny_teacher, write_tiny_set
from shrinkteanet.symbols import get_symbol
from shrinkteanet.training import config, train
from shrinkteanet.model.checkpoint import read_state

pytestmark = pytest.mark.usefixtures("cli_log_handlers_closed")

SIZE = 32
UNWRITABLE = "/sys/shrinkteanet-test"  # EACCES even for root (os.access says yes there)


def cli(argv):
    return cli_main([str(a) for a in argv])


def error_line(capsys, argv):
    """Run the CLI in-process; exit 2, no traceback, the last stderr line is the one error line."""
    rc = cli(argv)
    err = capsys.readouterr().err
    assert rc == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("shrinkteanet: error: "), err[-3000:]
    return last[len("shrinkteanet: error: "):]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny_set(tmp_path_factory.mktemp("writers") / "set", size=SIZE)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny mfn checkpoint laid out as training writes one: ``fc7`` and PReLU slopes included."""
    d = tmp_path_factory.mktemp("model")
    sym = get_symbol("mfn", emb_size=16, blocks=(1, 1, 1, 1), filters=(8, 8, 16, 16, 32), image_size=SIZE)
    arg, aux = random_params(sym, SIZE)
    arg["fc7_weight"] = mx.nd.array(np.random.RandomState(0).normal(size=(8, 16)))
    prefix = str(d / "model")
    mx.model.save_checkpoint(prefix, 1, sym, arg, aux)
    return prefix


@pytest.fixture()
def no_embedding(monkeypatch):
    """Any construction of the evaluation ``Embedder`` (the first expensive step) fails the test."""
    from shrinkteanet.eval import embed

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the outputs were checked")

    monkeypatch.setattr(embed.Embedder, "__init__", refuse)


# --- never write over what the user did not name ---------------------------------------------
@pytest.mark.parametrize("flag", ["--mkldnn", "--int8", "--onnx", "--json"])
def test_export_over_its_own_checkpoint_is_refused_and_every_file_stays(model, data, tmp_path, capsys, flag):
    """The acceptance probe ``export --model P,E --mkldnn P`` (and ``--int8 P``, an ONNX or JSON
    output named like a checkpoint file): one line, exit 2, every file byte-identical.  Before,
    the MKLDNN/INT8 model replaced ``P-symbol.json`` and ``P-0001.params`` (fc7 and the PReLU
    slopes gone)."""
    folder = os.path.dirname(model)
    before = tree_sha1(folder)
    value = {"--mkldnn": model, "--int8": model, "--onnx": f"{model}-0001.params",
             "--json": f"{model}-symbol.json"}[flag]
    extra = ["--calib", os.path.join(data, "lfw.bin")] if flag == "--int8" else []
    extra += ["--mkldnn", str(tmp_path / "m")] if flag == "--json" else []
    line = error_line(capsys, ["export", "--model", f"{model},1", flag, value, *extra, "--image-size", SIZE])
    assert line.startswith(f"{flag} {value}: would write over the input --model {model},1"), line
    assert tree_sha1(folder) == before
    assert not list(tmp_path.iterdir())  # nothing else was written either


def test_two_outputs_that_are_one_file_are_refused(model, data, tmp_path, capsys):
    """``--mkldnn Q --int8 Q``: the INT8 model would replace the MKLDNN one just written."""
    q = str(tmp_path / "q")
    line = error_line(capsys, ["export", "--model", f"{model},1", "--mkldnn", q, "--int8", q, "--calib",
                               os.path.join(data, "lfw.bin"), "--image-size", SIZE])
    assert line.startswith(f"--int8 {q}: the same file as --mkldnn {q}"), line
    assert not list(tmp_path.iterdir())


def test_export_onnx_without_onnxruntime_writes_nothing(model, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    out = tmp_path / "m.onnx"
    line = error_line(capsys, ["export", "--model", f"{model},1", "--onnx", out, "--image-size", SIZE])
    assert line.startswith("--onnx needs the onnxruntime package") and "pip install" in line, line
    assert not out.exists() and not list(tmp_path.iterdir())


def _train_args(data, out, *extra, name="mfnr_self"):
    return ["train", "--config", name, "--out", str(out), *train_overrides(data, None, "lr_schedule=constant", *extra)]


def test_overwrite_removes_exactly_the_manifest_and_keeps_lookalikes(data, tmp_path, capsys):
    """Files that merely match the old pattern (``model-best-0001.params``, an MKLDNN export
    ``model-mkldnn-*``, anything else) survive ``--overwrite``; the old run's files, listed in
    its manifest, go.  Before, ``re.search`` removed the look-alikes too."""
    out = tmp_path / "run"
    assert cli(_train_args(data, out, "max_batches=3", "ckpt_every=1", "keep_last=5")
               + ["--json", str(out / "train.json")]) == 0
    user = ("model-best-0001.params", "model-mkldnn-0001.params", "model-mkldnn-symbol.json", "notes.txt")
    for name in user:
        (out / name).write_bytes(name.encode())
    mine = {k: v for k, v in tree_sha1(out).items() if k in user}
    assert cli(_train_args(data, out, "max_batches=1", "ckpt_every=1") + ["--overwrite"]) == 0
    after = tree_sha1(out)
    assert {k: after.get(k) for k in user} == mine
    assert not (out / "model-0003.params").exists() and not (out / "train.json").exists()
    assert (out / "model-0001.params").exists() and read_state(str(out / "model"))["step"] == 1
    listed = json.loads((out / "model-manifest.json").read_text())["files"]
    not_listed = user + ("model-manifest.json", ".shrinkteanet-train.lock")
    on_disk = sorted(p.name for p in out.iterdir() if p.name not in not_listed)
    assert sorted(listed) == on_disk  # every file the new run wrote, and only those
    assert {"model-train.log", "model-state.json", "model-symbol.json", "model-0001.states"} <= set(listed)


@pytest.fixture(scope="module")
def teacher(data, tmp_path_factory):
    """A tiny r18 teacher checkpoint trained in its own run folder."""
    return train_tiny_teacher(data, tmp_path_factory.mktemp("teacher") / "run")


def test_a_run_over_its_own_teacher_is_refused_and_the_teacher_stays(data, teacher, tmp_path, capsys):
    """``--out X --teacher X/model,N --overwrite`` deleted the teacher (it is the old run of X),
    then failed.  Now the run may not write at the prefix it reads: refused before anything,
    with or without ``--overwrite``, by the CLI and by ``train.train``."""
    prefix, epoch = teacher.rsplit(",", 1)
    folder = tmp_path / "x"
    shutil.copytree(os.path.dirname(prefix), folder)
    before = tree_sha1(folder)
    mine = f"{folder}/model,{epoch}"
    for extra in ([], ["--overwrite"]):
        line = error_line(capsys, _train_args(data, folder, "max_batches=1", name="mfnr_stn")
                          + ["--teacher", mine, *extra])
        assert line.startswith(f"--out {folder}: would write over the input --teacher {mine}"), line
    cfg = config.config_by_name("mfnr_stn", train_overrides(data, f"{folder}/model", f"teacher={mine}"))
    with pytest.raises(InputError, match="would write over the input --teacher"):
        train.train(cfg, overwrite=True)
    assert tree_sha1(folder) == before


def test_an_old_run_folder_without_a_manifest(data, tmp_path, capsys):
    """A run written before manifests: ``--overwrite`` removes exactly the files its state names;
    a checkpoint-named file the state does not name is never removed, and the run is refused
    rather than written over it."""
    out = tmp_path / "old"
    assert cli(_train_args(data, out, "max_batches=2", "ckpt_every=1", "keep_last=1")) == 0
    (out / "model-manifest.json").unlink(missing_ok=True)  # as an older version left it
    (out / "model-0007.params").write_bytes(b"mine")
    line = error_line(capsys, _train_args(data, out, "max_batches=1") + ["--overwrite"])
    assert line.startswith(f"{out}/model-0007.params: not a file of a run recorded in model-manifest.json or "
                           f"model-state.json"), line
    assert (out / "model-0002.params").exists() and (out / "model-0007.params").read_bytes() == b"mine"
    (out / "model-0007.params").unlink()
    assert cli(_train_args(data, out, "max_batches=1") + ["--overwrite"]) == 0
    assert not (out / "model-0002.params").exists() and (out / "model-0001.params").exists()


@pytest.mark.parametrize("what", ["synth", "pack"])
def test_data_writers_need_overwrite_to_replace_a_set(tmp_path, capsys, what):
    small = ["--identities", "2", "--images-per-id", "2", "--test-identities", "3", "--pairs", "4", "--no-ijb",
             "--no-megaface", "--image-size", SIZE, "--workers", "1"]
    src = tmp_path / "src"
    assert cli(["data", "synth", src, *small]) == 0
    if what == "synth":
        argv, target = ["data", "synth", src, *small], src
        (tmp_path / "only_bin").mkdir()
        shutil.copy(src / "lfw.bin", tmp_path / "only_bin" / "lfw.bin")
        line = error_line(capsys, ["data", "synth", tmp_path / "only_bin", *small])
        assert line == (f"data synth {tmp_path / 'only_bin'}: {tmp_path / 'only_bin' / 'lfw.bin'} exists; pass "
                        f"--overwrite to replace the set")
    else:
        target = tmp_path / "packed"
        argv = ["data", "pack", "--image-folder", src / "train_images", "--prefix", target / "train", "--workers", "1",
                "--image-size", SIZE]
        assert cli(argv) == 0
    before = tree_sha1(target)
    line = error_line(capsys, argv)
    assert line.endswith(f"{target / 'train.rec'} exists; pass --overwrite to replace the set"), line
    assert tree_sha1(target) == before
    assert cli(argv + ["--overwrite"]) == 0


# --- outputs checked at the start -------------------------------------------------------------
def _start_cases(model, data, tmp_path):
    """(argv, start of the error) for an unwritable output of each command."""
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    m = f"{model},1"
    return [
        (["eval", "verification", "--model", m, "--data-dir", data, "--targets", "lfw", "--out", a_file,
          "--image-size", SIZE], f"--out {a_file}: exists and is not a directory"),
        (["eval", "verification", "--model", m, "--data-dir", data, "--targets", "lfw", "--json",
          f"{UNWRITABLE}/v.json", "--image-size", SIZE], f"--json {UNWRITABLE}/v.json: cannot create the folder"),
        (["eval", "megaface", "--model", m, "--megaface-root", tmp_path, "--out", f"{a_file}/sub"],
         f"--out {a_file}/sub: {a_file} is a file, not a folder"),
        (["eval", "ijb", "--model", m, "--image-path", tmp_path, "--out", UNWRITABLE],
         f"--out {UNWRITABLE}: cannot create the folder"),
        (["embed", data, "--model", m, "--out", f"{UNWRITABLE}/e.npy"], f"--out {UNWRITABLE}/e.npy: cannot create"),
        (["compare", a_file, a_file, "--model", m, "--json", tmp_path], f"--json {tmp_path}: is a folder, not a file"),
        (["cache-teacher", "--model", m, "--data", data, "--out", a_file], f"--out {a_file}: exists and is not a"),
        (["cache-teacher", "--model", m, "--data", data, "--out", data], f"--out {data}: would write over the input "
                                                                          f"--data {data}"),
        (["export", "--model", m, "--mkldnn", f"{UNWRITABLE}/m"], f"--mkldnn {UNWRITABLE}/m: cannot create"),
        (["data", "pack", "--image-folder", tmp_path, "--prefix", f"{a_file}/train"],
         f"--prefix {a_file}/train.rec: {a_file} is a file, not a folder"),
        (["data", "synth", UNWRITABLE], f"data synth {UNWRITABLE}: cannot create the folder"),
        (["data", "info", data, "--json", "x" * 300 + ".json"], "--json " + "x" * 300 + ".json: the name 'xxx"),
        (_train_args(data, tmp_path / "t", "max_batches=1") + ["--tensorboard", a_file],
         f"--tensorboard {a_file}: exists and is not a directory"),
        (_train_args(data, UNWRITABLE, "max_batches=1"), f"--out {UNWRITABLE}: cannot create the folder"),
    ]


def test_every_command_checks_its_outputs_before_the_first_expensive_step(model, data, tmp_path, capsys,
                                                                           no_embedding, monkeypatch):
    """Before, ``eval verification``/``ijb`` embedded everything first and ``cache-teacher``,
    ``embed``, ``export``, ``data pack``, ``data synth`` and ``--tensorboard`` ended in a
    traceback (exit 1).  Training is stopped at its first expensive step too."""
    from shrinkteanet.training import train as train_module

    def no_loader(*a, **k):
        raise AssertionError("the loader was built before the outputs were checked")

    monkeypatch.setattr(train_module, "make_loader", no_loader)
    for argv, start in _start_cases(model, data, tmp_path):
        line = error_line(capsys, argv)
        assert line.startswith(start), (argv, line)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]  # no folder was left behind


def test_too_little_free_space_is_refused_before_embedding(model, data, tmp_path, capsys, no_embedding,
                                                           monkeypatch):
    from shrinkteanet.core import outputs

    monkeypatch.setattr(outputs, "free_bytes", lambda folder: 4096)
    line = error_line(capsys, ["eval", "verification", "--model", f"{model},1", "--data-dir", data, "--targets",
                               "lfw", "--out", tmp_path / "r", "--image-size", SIZE])
    assert line.startswith(f"--out {tmp_path / 'r'}: 0.0 MiB free in {tmp_path}, but about 1.0 MiB is needed"), line


def test_a_245_character_json_name_works(data, tmp_path, capsys):
    """The temp name of the atomic writer went past 255 bytes (``NAME.XXXXXXXX.tmp``)."""
    path = tmp_path / ("j" * 240 + ".json")
    assert len(path.name) == 245
    assert cli(["data", "info", data, "--json", path]) == 0
    assert json.loads(path.read_text())["num_images"] == 64
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp left


def test_temp_names_fit_the_file_system_and_keep_the_name_start(tmp_path):
    from shrinkteanet.core.utils import atomic_write_bytes, temp_name_beside

    for name in ("a" * 255, "é" * 127 + "x", "model-0001.params"):
        tmp = os.path.basename(temp_name_beside(tmp_path / name, ".0123abcd"))
        assert len(os.fsencode(tmp)) <= 255 and tmp.endswith(".0123abcd.tmp")
        kept = tmp[:-len(".0123abcd.tmp")]
        # as much of the name as fits, less at most a character's bytes
        assert name.startswith(kept) and len(os.fsencode(kept)) >= min(len(os.fsencode(name)), 255 - 13 - 3)
        kept.encode("utf-8")  # never half of a character
    assert os.path.basename(temp_name_beside(tmp_path / "model-0001.params", ".ab")) == "model-0001.params.ab.tmp"
    atomic_write_bytes(tmp_path / ("b" * 255), b"ok")
    assert (tmp_path / ("b" * 255)).read_bytes() == b"ok"


def test_check_outputs_on_its_own(tmp_path):
    """The shared helper: file up the path, folder where a file goes, same file twice (also by a
    hard link to an input), an existing set file without ``replace``."""
    from shrinkteanet.core.outputs import Input, Output, check_outputs

    (tmp_path / "f").write_text("x")
    (tmp_path / "d").mkdir()
    cases = [
        ([Output("A", str(tmp_path / "f" / "x.json"))], [], f"A: {tmp_path / 'f'} is a file, not a folder"),
        ([Output("A", str(tmp_path / "d"))], [], "A: is a folder, not a file"),
        ([Output("A", str(tmp_path / "o")), Output("B", str(tmp_path / "d" / ".." / "o"))], [],
         f"B: the same file as A ({tmp_path / 'd' / '..' / 'o'})"),
        ([Output("A", str(tmp_path / "f"), replace=False)], [], f"A: {tmp_path / 'f'} exists; pass --overwrite"),
    ]
    os.link(tmp_path / "f", tmp_path / "link")
    cases.append(([Output("A", str(tmp_path / "link"))], [Input("I", str(tmp_path / "f"))],
                  "A: would write over the input I"))
    for outs, ins, msg in cases:
        with pytest.raises(InputError) as e:
            check_outputs(outs, ins)
        assert str(e.value).startswith(msg), (msg, str(e.value))
    created = check_outputs([Output("A", str(tmp_path / "n1" / "n2" / "x.json"))])
    assert created == [str(tmp_path / "n1" / "n2"), str(tmp_path / "n1")] and not (tmp_path / "n1").exists()


# --- failures leave no debris -------------------------------------------------------------------
def test_a_failed_fp16_run_leaves_no_folder(data, tmp_path, capsys):
    """``--fp16`` on the CPU fails once the networks are built; before, an empty folder (and a
    log-only one through the CLI) was left."""
    out = tmp_path / "a" / "b"
    line = error_line(capsys, _train_args(data, out, "max_batches=1") + ["--fp16"])
    assert line.startswith("--fp16 needs GPUs"), line
    assert list(tmp_path.iterdir()) == []


def test_a_crash_before_the_first_checkpoint_keeps_the_log_beside_the_folder(data, tmp_path, caplog):
    out = tmp_path / "run"

    def crash(info):
        raise RuntimeError("boom")

    cfg = config.config_by_name("mfnr_self", train_overrides(data, f"{out}/model", "max_batches=3"))
    with pytest.raises(RuntimeError, match="boom"):
        train.train(cfg, callbacks=[crash])
    assert not tmp_path.joinpath("run").exists()  # before: the folder, holding the lock file
    with pytest.raises(RuntimeError, match="boom"):
        train.train(cfg, callbacks=[crash], log_file=True)
    assert not out.exists()
    kept = tmp_path / "run-train.log"
    assert "schedule" in kept.read_text() or "lr" in kept.read_text()
    assert any(str(kept) in r.getMessage() for r in caplog.records)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run-train.log"]


def test_a_failed_pack_into_a_new_folder_leaves_no_folder(tmp_path, capsys):
    lst = tmp_path / "in.lst"
    lst.write_text(f"1\t{tmp_path / 'missing.jpg'}\t0\n")
    line = error_line(capsys, ["data", "pack", "--lst", lst, "--prefix", tmp_path / "new" / "deeper" / "train",
                               "--workers", "1"])
    assert "missing.jpg" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.lst"]
