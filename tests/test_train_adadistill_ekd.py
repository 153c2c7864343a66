"""Acceptance of issue 22: ``shrinkteanet train --config {mfn,mfnr}_{adadistill,ekd}`` trains a
student on the tiny set from the command line, and every loss part goes down over a short run."""
import json
import subprocess
import sys

import numpy as np
import pytest

from shrinkteanet.study.tiny import train_overrides, train_tiny_teacher, write_tiny_set

PARTS = {"adadistill": {"adadistill"}, "ekd": {"softmax", "ekd_pos", "ekd_neg"}}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("new_methods")
    data = write_tiny_set(root / "set", with_bin=False)
    return data, train_tiny_teacher(data, root / "teacher"), root


@pytest.mark.parametrize("network", ["mfn", "mfnr"])
@pytest.mark.parametrize("method", ["adadistill", "ekd"])
def test_every_part_decreases_from_the_command_line(tiny, method, network):
    data, teacher, root = tiny
    js = root / f"{network}_{method}.json"
    r = subprocess.run([sys.executable, "-m", "shrinkteanet", "train", "--config", f"{network}_{method}",
                        "--teacher", teacher, "--json", str(js),
                        *train_overrides(data, root / f"{network}_{method}" / "model", "max_batches=32",
                                         "lr_schedule=constant", "frequent=8")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(js.read_text())
    assert set(summary["losses"]) == PARTS[method]
    for part in PARTS[method]:
        curve = [p[part] for p in summary["curve"]]
        assert len(curve) == 4 and np.isfinite(curve).all(), (part, curve)
        assert curve[-1] < curve[0], (part, curve)


@pytest.mark.parametrize("method", ["adadistill", "ekd"])
def test_resume_carries_the_centres_and_thresholds(tiny, method):
    """4 steps, then ``resume`` to 8, gives the losses of 8 steps in one go: AdaDistill's EMA class
    centres and EKD's EMA thresholds travel in the checkpoint (they are no optimiser state)."""
    from shrinkteanet.training import config, train

    data, teacher, root = tiny

    def run(out, steps, resume=False):
        cfg = config.config_by_name(f"mfn_{method}", train_overrides(data, root / out / "model", f"teacher={teacher}",
                                                                     f"max_batches={steps}", "lr_schedule=constant",
                                                                     "frequent=4"))
        return train.train(cfg, resume=resume)["losses"]

    straight = run(f"straight_{method}", 8)
    run(f"resumed_{method}", 4)
    resumed = run(f"resumed_{method}", 8, resume=True)
    assert set(resumed) == PARTS[method]
    for part in PARTS[method]:
        assert resumed[part] == pytest.approx(straight[part], rel=1e-5, abs=1e-7), part


def test_embedding_widths(tiny):
    """EKD compares similarities within each network: a 16-d student of the 32-d teacher trains (and the
    end-of-run cosine check leaves out the incomparable final stage instead of failing); AdaDistill's
    centres live in the teacher's space, so there the widths must agree."""
    from shrinkteanet.core.errors import InputError
    from shrinkteanet.training import config, train

    data, teacher, _ = tiny
    extra = (f"teacher={teacher}", "max_batches=4", "emb_size=16")
    summary = train.train(config.config_by_name("mfn_ekd", train_overrides(data, None, *extra)))
    assert set(summary["losses"]) == PARTS["ekd"] and np.isfinite(list(summary["losses"].values())).all()
    assert summary["stage_cosines"] == {}
    with pytest.raises(InputError, match="emb_size must equal the teacher's"):
        train.train(config.config_by_name("mfn_adadistill", train_overrides(data, None, *extra)))
