"""Issue 21, "Bound to its source, finite answers": the teacher cache is tied to its teacher's and
its data's content, evaluation reports name their model, no command answers from NaN
embeddings, ``--nfolds`` below 2 and a chosen image size the data do not have are refused
(docs/reliability.md, section "Bound to its source, finite answers").

Each test here failed on the code before (checked by running this file with the ``src``/``eval``
changes stashed): a cache of teacher A trained teacher B, a cache of another set with the same
keys was used, ``cache-teacher`` called a retrained teacher's old cache "complete", ``--resume``
could swap the cache, a cache of another width ended in an MXNet traceback, ``compare`` printed
``cosine similarity nan -> DIFFERENT`` (exit 0), ``embed`` wrote NaN rows, ``--nfolds 1`` tuned on
the test pairs, ``image_size=48`` on a 32x32 set was overridden, ``eval`` assumed 112x112 and
printed MXNet's infer-shape dump, and every distillation run warned about ``StageTerms._tails``."""
import json
import os
import shutil
import warnings

import mxnet as mx
import numpy as np
import pytest

from _files import file_sha1 as sha1, tree_sha1
from shrinkteanet.cli import main as cli_main
from shrinkteanet.study.tiny import random_params, train_overrides, write_tiny_set
from shrinkteanet.symbols import get_symbol

pytestmark = pytest.mark.usefixtures("cli_log_handlers_closed")

SIZE = 32
TEACHER_OPTS = {"units": (1, 1, 1, 1), "filters": (8, 8, 16, 16, 32), "image_size": SIZE}


def cli(argv):
    return cli_main([str(a) for a in argv])


def error_line(capsys, argv):
    """Run the CLI in-process; exit 2, no traceback, the last stderr line is the one error line.
    Returns (the message, all of stdout)."""
    rc = cli(argv)
    out, err = capsys.readouterr()
    assert rc == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("shrinkteanet: error: "), err[-3000:]
    return last[len("shrinkteanet: error: "):], out


def save_teacher(folder, sym, seed, edit=None):
    """A tiny r18 checkpoint ``folder/model,1`` of ``sym`` with ``random_params(seed)``; ``edit``
    may change the parameters first."""
    arg, aux = random_params(sym, SIZE, seed=seed)
    if edit is not None:
        edit(arg, aux)
    os.makedirs(folder, exist_ok=True)
    mx.model.save_checkpoint(os.path.join(folder, "model"), 1, sym, arg, aux)
    return f"{folder}/model,1"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The set, a second set with the same record keys but other images, teachers A and B (one
    symbol file, other weights), C (16-d embeddings), and A's cache."""
    root = tmp_path_factory.mktemp("bound")
    sym = get_symbol("r18", emb_size=32, **TEACHER_OPTS)
    w = {"root": root, "data": write_tiny_set(root / "set", size=SIZE),
         "other": write_tiny_set(root / "other", size=SIZE, grid=2, with_bin=False),
         "A": save_teacher(root / "a", sym, 0), "B": save_teacher(root / "b", sym, 1),
         "C": save_teacher(root / "c", get_symbol("r18", emb_size=16, **TEACHER_OPTS), 2), "sym": sym}
    w["cacheA"] = root / "cacheA"
    assert cli(["cache-teacher", "--model", w["A"], "--data", w["data"], "--out", w["cacheA"]]) == 0
    return w


def train_argv(world, *extra, data=None, out=None):
    argv = ["train", "--config", "mfnr_stn", *train_overrides(data or world["data"], None, "max_batches=1",
                                                              "lr_schedule=constant", *extra)]
    return argv + (["--out", out] if out else [])


# --- the teacher cache, bound to its source ---------------------------------------------------------
def test_a_cache_of_another_teacher_is_refused(world, capsys):
    """The acceptance probe ``train --teacher B --teacher-cache CACHE_OF_A``: B has A's symbol
    file and other weights; before, the run trained on A's embeddings (exit 0)."""
    line, _ = error_line(capsys, train_argv(world, "--teacher", world["B"], "--teacher-cache", world["cacheA"]))
    assert line.startswith(f"--teacher-cache {world['cacheA']}: built by "), line
    b_params = world["B"].replace(",1", "-0001.params")
    assert f"another teacher checkpoint: its params file differs" in line and sha1(b_params)[:12] in line, line
    assert "symbol file" not in line  # the part that differs, and only it


@pytest.mark.parametrize("config", ["mfnr_stn", "mfn_stn_final"])
def test_a_cache_of_another_set_with_the_same_keys_is_refused(world, capsys, config):
    """``other`` has the same 65 record keys (and count) as the cache's set, other images; with
    the teacher, and on the cache-only path (a method that reads only the teacher's embedding)."""
    teacher = ["--teacher", world["A"]] if config == "mfnr_stn" else []
    argv = train_argv(world, *teacher, "--teacher-cache", world["cacheA"], data=world["other"])
    argv[2] = config
    line, _ = error_line(capsys, argv)
    assert line.startswith(f"--teacher-cache {world['cacheA']}: built on "), line
    assert "another data: its content of the sampled records differs" in line, line


def test_a_cache_of_another_embedding_size_fails_in_one_line_at_the_start(world, tmp_path, capsys):
    """A 16-d cache for a 32-d teacher: before, a 50-line MXNet traceback at the first step."""
    cache = tmp_path / "cacheC"
    assert cli(["cache-teacher", "--model", world["C"], "--data", world["data"], "--out", cache]) == 0
    line, _ = error_line(capsys, train_argv(world, "--teacher", world["A"], "--teacher-cache", cache))
    assert line.startswith(f"--teacher-cache {cache}: embeddings of size 16, but the teacher's are 32"), line


def test_a_retrained_teacher_is_not_complete_and_rebuild_replaces_the_cache(world, tmp_path, capsys):
    """Teacher retrained into the same folder (B's weights over A's files): ``cache-teacher``
    said "complete" and kept A's embeddings.  Now it refuses, names ``--rebuild``, leaves the cache
    as it was; ``--rebuild`` gives exactly the cache a fresh build of the new teacher gives."""
    folder = tmp_path / "teacher"
    shutil.copytree(os.path.dirname(world["A"].split(",")[0]), folder)
    model, cache = f"{folder}/model,1", tmp_path / "cache"
    assert cli(["cache-teacher", "--model", model, "--data", world["data"], "--out", cache]) == 0
    capsys.readouterr()
    shutil.copy(world["B"].replace(",1", "-0001.params"), folder / "model-0001.params")  # "retrained"
    before = tree_sha1(cache)
    line, _ = error_line(capsys, ["cache-teacher", "--model", model, "--data", world["data"], "--out", cache])
    assert "another teacher checkpoint: its params file differs" in line and "cache-teacher --rebuild" in line, line
    assert tree_sha1(cache) == before
    assert cli(["cache-teacher", "--model", model, "--data", world["data"], "--out", cache, "--rebuild"]) == 0
    fresh = tmp_path / "fresh"
    assert cli(["cache-teacher", "--model", world["B"], "--data", world["data"], "--out", fresh]) == 0
    assert (cache / "emb.f16").read_bytes() == (fresh / "emb.f16").read_bytes()
    assert (cache / "emb.f16").read_bytes() != (world["cacheA"] / "emb.f16").read_bytes()
    meta = json.loads((cache / "meta.json").read_text())
    assert meta["teacher"]["params_sha1"] == sha1(folder / "model-0001.params")
    assert sorted(os.listdir(cache)) == ["emb.f16", "keys.npy", "meta.json"]  # no .rebuild left behind


def test_resume_may_not_change_the_teacher_cache(world, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli(train_argv(world, "--teacher", world["A"], "ckpt_every=1", out=out)) == 0
    capsys.readouterr()
    line, _ = error_line(capsys, train_argv(world, "--teacher", world["A"], "--teacher-cache", world["cacheA"],
                                            "max_batches=2", out=out) + ["--resume"])
    assert "--resume with a config that changes the run in teacher_cache" in line, line


def test_cache_teacher_names_an_option_it_has_when_the_sizes_differ(world, tmp_path, capsys):
    """A 48x48 set for a teacher of 32x32 faces: the message named ``--image-size``, which
    ``cache-teacher`` does not have."""
    small = write_tiny_set(tmp_path / "small", ids=2, per=2, size=48, with_bin=False)
    line, out = error_line(capsys, ["cache-teacher", "--model", world["A"], "--data", small, "--out", tmp_path / "c"])
    assert line.startswith(f"--data {small}: --model {world['A']} takes 32x32 faces, not 48x48"), line
    assert "--image-size" not in line and "infer_shape" not in out


# --- evaluation reports name their model ------------------------------------------------------------
def test_verification_report_names_the_model_and_its_folds(world, tmp_path, capsys):
    """No ``--image-size``: the 32x32 model is detected (before: 112 assumed, an error after
    MXNet's dump).  ``--nfolds 5`` is recorded and the report says 5-fold, 4 training folds."""
    out = tmp_path / "ver"
    argv = ["eval", "verification", "--model", world["A"], "--data-dir", world["data"], "--targets", "lfw",
            "--out", out, "--json", tmp_path / "v.json", "--nfolds", 5]
    assert cli(argv) == 0
    prefix = world["A"].split(",")[0]
    want = {"prefix": prefix, "epoch": 1, "symbol_sha1": sha1(f"{prefix}-symbol.json"),
            "params_sha1": sha1(f"{prefix}-0001.params")}
    for rep in (json.loads((tmp_path / "v.json").read_text()), json.loads((out / "verification.json").read_text())):
        assert rep["lfw"]["model"] == want and rep["lfw"]["nfolds"] == 5
    md = (out / "verification.md").read_text()
    assert "(5-fold," in md and "the 4 training folds" in md and "10-fold" not in md
    assert want["params_sha1"] in md


@pytest.mark.parametrize("nfolds", [1, 0, -3])
def test_verification_refuses_fewer_than_two_folds(world, tmp_path, capsys, nfolds):
    line, _ = error_line(capsys, ["eval", "verification", "--model", world["A"], "--data-dir", world["data"],
                                  "--targets", "lfw", "--out", tmp_path / "v", "--nfolds", nfolds, "--image-size",
                                  SIZE])
    assert line.startswith(f"--nfolds {nfolds}: needs 2 or more folds"), line
    assert not (tmp_path / "v").exists()


def test_eval_image_size_mismatch_is_one_line_without_the_shape_dump(world, tmp_path, capsys):
    line, out = error_line(capsys, ["eval", "verification", "--model", world["A"], "--data-dir", world["data"],
                                    "--targets", "lfw", "--out", tmp_path / "v", "--image-size", 48])
    assert line.startswith(f"--image-size 48: --model {world['A']} takes 32x32 faces, not 48x48"), line
    assert "infer_shape error" not in out and len(out.splitlines()) < 3, out[:2000]


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """A tiny synthetic suite with IJB-C and MegaFace trees at 32x32."""
    root = tmp_path_factory.mktemp("suite") / "s"
    assert cli(["data", "synth", root, "--identities", 2, "--images-per-id", 2, "--test-identities", 4, "--pairs", 4,
                "--ijb-templates", 8, "--megaface-probes", 3, "--megaface-probe-images", 2,
                "--megaface-distractors", 10, "--image-size", SIZE, "--workers", 1]) == 0
    return root


@pytest.mark.parametrize("protocol", ["ijb", "megaface"])
def test_ijb_and_megaface_reports_name_the_model(world, suite, tmp_path, capsys, protocol):
    where = ["--image-path", suite / "IJBC"] if protocol == "ijb" else ["--megaface-root", suite / "megaface",
                                                                          "--sizes", 10]
    out = tmp_path / protocol
    assert cli(["eval", protocol, "--model", world["A"], *where, "--out", out, "--image-size", SIZE]) == 0, \
        capsys.readouterr().err[-2000:]
    rep = json.loads((out / f"{protocol}.json").read_text())
    prefix = world["A"].split(",")[0]
    assert rep["model"] == {"prefix": prefix, "epoch": 1, "symbol_sha1": sha1(f"{prefix}-symbol.json"),
                            "params_sha1": sha1(f"{prefix}-0001.params")}
    assert rep["model"]["params_sha1"] in (out / f"{protocol}.md").read_text()


# --- no answer from non-finite numbers --------------------------------------------------------------
@pytest.fixture(scope="module")
def broken(world, tmp_path_factory):
    """Two copies of teacher A: one NaN weight in its third convolution, and a negative BatchNorm
    running variance in its first unit."""
    root = tmp_path_factory.mktemp("broken")
    sym = world["sym"]
    conv = [n for n in sym.list_arguments() if n.endswith("conv2_weight")][0]
    var = [n for n in sym.list_auxiliary_states() if n.endswith("bn2_moving_var")][0]

    def nan_weight(arg, aux):
        arg[conv][0, 0, 0, 0] = np.nan

    def negative_var(arg, aux):
        aux[var][3] = -1.0

    return {"nan": (save_teacher(root / "nan", sym, 0, nan_weight), conv, "holds 1 NaN/inf value"),
            "var": (save_teacher(root / "var", sym, 0, negative_var), var, "is negative")}


def _commands(model, world, tmp_path):
    data = world["data"]
    faces = tmp_path / "faces"
    if not faces.exists():
        from shrinkteanet.data.binfile import load_bin
        from shrinkteanet.data.images import encode_image

        faces.mkdir()
        images, _ = load_bin(os.path.join(data, "lfw.bin"), image_size=(SIZE, SIZE))
        for i in range(3):
            (faces / f"{i}.jpg").write_bytes(encode_image(images[i]))
    return {
        "embed": ["embed", faces, "--model", model, "--out", tmp_path / "e.npy"],
        "compare": ["compare", faces / "0.jpg", faces / "1.jpg", "--model", model],
        "verification": ["eval", "verification", "--model", model, "--data-dir", data, "--targets", "lfw",
                         "--out", tmp_path / "v", "--image-size", SIZE],
        "cache-teacher": ["cache-teacher", "--model", model, "--data", data, "--out", tmp_path / "cache"],
        "export": ["export", "--model", model, "--mkldnn", tmp_path / "m"],
    }


@pytest.mark.parametrize("kind", ["nan", "var"])
@pytest.mark.parametrize("command", ["embed", "compare", "verification", "cache-teacher", "export"])
def test_nan_embeddings_stop_every_command_naming_the_checkpoint_and_layer(world, broken, tmp_path, capsys,
                                                                          command, kind):
    """The acceptance probes ``compare``/``embed`` with a checkpoint whose embeddings are NaN:
    before, ``cosine similarity nan -> DIFFERENT`` (exit 0), an all-NaN ``.npy`` ("embedded 3 of
    3"), an sklearn "Input contains NaN" traceback after embedding everything.  Now one line naming
    the checkpoint and the first bad layer, and no output file."""
    model, param, why = broken[kind]
    argv = _commands(model, world, tmp_path)[command]
    before = tree_sha1(os.path.dirname(model.split(",")[0]))
    line, out = error_line(capsys, argv)
    assert line.startswith(f"--model {model}: non-finite embeddings"), line
    layer = param[: -len("_weight")] if param.endswith("_weight") else param[: -len("_moving_var")]
    assert f"first bad layer: {layer} (" in line and f"{param} {why}" in line, line
    assert "cosine similarity" not in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["faces"]  # nothing written (no .npy, report, cache)
    assert tree_sha1(os.path.dirname(model.split(",")[0])) == before


def test_cache_teacher_refuses_embeddings_float16_cannot_hold(world, tmp_path, capsys):
    """Finite float32 embeddings of 1e5 are inf in the float16 cache: before, written silently
    (exit 0), and every distillation step read inf targets."""
    def shifted(arg, aux):
        arg["fc1_beta"] = mx.nd.full(arg["fc1_beta"].shape, 1e5)

    model = save_teacher(tmp_path / "big", world["sym"], 0, shifted)
    line, _ = error_line(capsys, ["cache-teacher", "--model", model, "--data", world["data"], "--out", tmp_path / "c"])
    assert line.startswith(f"--model {model}: embeddings beyond float16's range (|x| > 65504) in records 1..64; the cache stores float16"), line


def test_an_overflow_is_found_by_one_forward_of_the_internals(world, tmp_path):
    """Clean parameters, an inf from the data path: ``first_bad_layer`` runs the internals once
    and names the first output that is not finite (here the first convolution of a network whose
    weights are 1e38)."""
    from shrinkteanet.core.errors import InputError
    from shrinkteanet.eval.embed import Embedder

    sym = world["sym"]
    arg, aux = random_params(sym, SIZE, seed=0)
    first = [n for n in sym.list_arguments() if n.endswith("_weight")][0]
    arg[first] = mx.nd.full(arg[first].shape, 1e38)
    e = Embedder((sym, arg, aux), image_size=SIZE, mkldnn=False)
    images = np.full((2, SIZE, SIZE, 3), 200, np.uint8)
    with pytest.raises(InputError, match=r"^the model: non-finite embeddings .*first bad layer: \S+_output "
                                         r"\(first non-finite output"):
        e.embed(images)


# --- training: chosen sizes and the tails warning ---------------------------------------------------
def test_a_chosen_image_size_the_data_do_not_have_is_refused(world, capsys):
    line, _ = error_line(capsys, train_argv(world, "image_size=48", "--teacher", world["A"]))
    assert line.startswith(f"config image_size=48, but {world['data']} holds 32x32 faces"), line


def test_a_distillation_run_does_not_warn_about_unregistered_containers(world):
    """Every ShrinkTeaNet run warned '"StageTerms._tails" is an unregistered container with
    Blocks' when its parameters were collected; the tails are held in ``terms.Frozen`` now, and the
    method's parameters are those it had."""
    from shrinkteanet.methods.base.assembler import build_method
    from shrinkteanet.training.networks import build_networks
    from shrinkteanet.training import config

    cfg = config.config_by_name("mfnr_stn", train_overrides(world["data"], None, f"teacher={world['A']}",
                                                            f"image_size={SIZE}", "num_classes=8"))
    student, teacher, fc7 = build_networks(cfg)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        method = build_method(cfg, student, teacher, num_classes=8, teacher_fc7=fc7)
        method.collect_params()  # Gluon checks its containers here (the run's initialize and trainer)
        method.hybridize()
    assert not [w for w in seen if "unregistered container" in str(w.message)], [str(w.message) for w in seen]
    mine = {id(p) for p in method.collect_params().values()}
    assert not mine & {id(p) for p in teacher.collect_params().values()}  # the teacher is still outside
    assert [n for n in method.collect_params() if n.startswith("adapter")]
    assert sorted(method.terms[0]._frozen.tails) == [1, 2, 3]  # the tails Eq. 6 runs, where they were
