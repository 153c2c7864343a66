"""``--gpus`` absent on a CUDA build uses every visible GPU and says so; ``--gpus ''`` forces the CPU.

No GPU here: the device count and the CUDA feature flag are faked (monkeypatched), and the
commands' handlers are run up to the point where they hand their contexts on."""
import logging
import os
import subprocess

import mxnet as mx
import pytest

from shrinkteanet.core import utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def fake_gpus(monkeypatch):
    """``fake_gpus(n)``: a CUDA build seeing ``n`` GPUs."""
    def make(n):
        real = mx.runtime.Features.is_enabled
        monkeypatch.setattr(mx.runtime.Features, "is_enabled", lambda self, name: name == "CUDA" or real(self, name))
        monkeypatch.setattr(mx.context, "num_gpus", lambda: n)
    return make


def test_absent_gpus_means_every_visible_gpu_in_one_log_line(fake_gpus, caplog):
    fake_gpus(3)
    with caplog.at_level(logging.INFO, logger="shrinkteanet.core.utils"):
        assert utils.get_contexts(None) == [mx.gpu(0), mx.gpu(1), mx.gpu(2)]
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["--gpus not given: using gpu(0),gpu(1),gpu(2) (3 visible; --gpus '' for the CPU)"]
    assert utils.get_contexts(None, one=True) == [mx.gpu(0)]
    assert utils.get_contexts("") == utils.get_contexts("cpu") == [mx.cpu()]
    assert utils.get_contexts("2,1") == [mx.gpu(2), mx.gpu(1)]


def test_cuda_build_without_gpus_and_cpu_build_use_the_cpu(fake_gpus, caplog):
    # this machine's CPU build: nothing to choose, nothing said
    assert not mx.runtime.Features().is_enabled("CUDA")
    with caplog.at_level(logging.INFO, logger="shrinkteanet.core.utils"):
        assert utils.get_contexts(None) == [mx.cpu()]
    assert not caplog.records
    fake_gpus(0)
    with caplog.at_level(logging.INFO, logger="shrinkteanet.core.utils"):
        assert utils.get_contexts(None) == [mx.cpu()]
    assert [r.getMessage() for r in caplog.records] == ["--gpus not given and no GPU visible: running on the CPU"]


class _Handed(Exception):
    pass


def _raise_with(**seen):
    raise _Handed(seen)


def test_every_command_takes_the_automatic_choice(fake_gpus, monkeypatch, tmp_path):
    fake_gpus(2)
    from shrinkteanet.cli import cache_teacher, embed, eval as cli_eval, train as cli_train
    from shrinkteanet.eval import embed as eval_embed
    from shrinkteanet.training import teacher_cache, train

    monkeypatch.setattr(train, "train", lambda cfg, ctx, **kw: _raise_with(ctx=ctx))
    monkeypatch.setattr(teacher_cache, "build_cache", lambda *a, ctx, **kw: _raise_with(ctx=ctx))
    monkeypatch.setattr(eval_embed, "Embedder", lambda *a, ctx, **kw: _raise_with(ctx=ctx))
    from shrinkteanet.cli import build_parser

    # each command's own parser, so that every option its handler reads is there
    parse = build_parser().parse_args
    for argv, run, want in ((["train", "--config", "mfnr_self", "--data", str(tmp_path)], cli_train.run,
                             [mx.gpu(0), mx.gpu(1)]),
                            (["cache-teacher", "--model", "m,1", "--data", str(tmp_path), "--out", str(tmp_path / "c")],
                             cache_teacher.run, mx.gpu(0)),
                            (["eval", "verification", "--model", "m,1", "--data-dir", str(tmp_path)],
                             cli_eval._embedder, mx.gpu(0))):
        args = parse(argv)
        assert args.gpus is None
        with pytest.raises(_Handed) as e:
            run(args)
        assert e.value.args[0]["ctx"] == want, run
    args = parse(["embed", "--model", "m,1", "--out", str(tmp_path / "e.npy"), str(tmp_path / "a.jpg")])
    assert embed._context(args) == mx.gpu(0)
    args.gpus = ""
    assert embed._context(args) == mx.cpu()
    args = parse(["train", "--config", "mfnr_self", "--data", str(tmp_path), "--gpus", ""])
    with pytest.raises(_Handed) as e:
        cli_train.run(args)
    assert e.value.args[0]["ctx"] == [mx.cpu()]


def test_eval_all_passes_gpus_to_every_evaluation(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "GPUS"}
    env.update(DATA="/d", MODEL="/m/model,3", MEGAFACE="/mf", IJB="/ijb", SHRINKTEANET="shrinkteanet")
    for gpus, flag in (("1", "--gpus 1"), ("cpu", "--gpus cpu"), (None, None)):
        e = dict(env, GPUS=gpus) if gpus is not None else env
        r = subprocess.run(["bash", os.path.join(ROOT, "recipes", "eval_all.sh"), "--dry-run"], env=e,
                           capture_output=True, text=True, timeout=60)
        cmds = [ln for ln in r.stdout.splitlines() if ln.startswith("+ ")]
        assert r.returncode == 0 and len(cmds) == 3, r.stdout + r.stderr
        assert all((flag in c) if flag else ("--gpus" not in c) for c in cmds), cmds
