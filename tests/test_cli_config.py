"""The frame: CLI discovery and errors, config presets and overrides."""
import json
import subprocess
import sys

import pytest

from shrinkteanet.training import config
from shrinkteanet.core.errors import InputError
from shrinkteanet.methods.base import stage_rules


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "shrinkteanet", *args], capture_output=True, text=True)


def test_info_reports_versions_and_features(tmp_path):
    out = tmp_path / "info.json"
    r = run_cli("info", "--json", str(out))
    assert r.returncode == 0, r.stderr
    info = json.loads(out.read_text())
    assert info["mxnet"] == "1.9.1"
    assert info["numpy"] == "1.23.5"
    assert set(info["mxnet_features"]) >= {"MKLDNN", "CUDA", "DIST_KVSTORE"}
    assert info["devices"][0] == "cpu(0)"
    assert "mxnet" in r.stdout and "DIST_KVSTORE" in r.stdout


@pytest.mark.parametrize("override, needle", [("foo=1", "unknown config key 'foo'"), ("lr=abc", "lr='abc'")])
def test_train_bad_overrides_fail_in_one_line(override, needle):
    r = run_cli("train", "--config", "mfnr_stn", override)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr


def test_generate_config_merges_tables_in_order():
    cfg = config.generate_config("mfnr", "emore", "cosface", "l2")
    assert cfg.network == "mfnr" and cfg.wd == 4e-5  # network row beats DEFAULT
    assert cfg.margin_m3 == 0.35 and cfg.margin_m2 == 0.0  # loss row
    assert cfg.distill == "l2" and cfg.l2_lambda == 0.001  # paper's Student-1 weight
    assert cfg.lr == 0.1 and cfg.momentum == 0.9 and cfg.batch_size == 512  # paper set-up
    # a fresh object each call: no shared mutable state between configs
    other = config.generate_config("mfnr", "emore", "cosface", "l2")
    other.lr_steps.append(1)
    assert cfg.lr_steps == [100000, 160000, 220000]


def test_overrides_are_type_checked():
    cfg = config.config_by_name("mfnr_stn", ["lr=0.05", "fp16=true", "lr_steps=10,20", "emb_size=128",
                                             "distill=l2", "net_opts={'units': [1, 1, 1, 1]}"])
    assert cfg.lr == 0.05 and cfg.fp16 is True and cfg.lr_steps == [10, 20] and cfg.emb_size == 128
    assert cfg.distill == "l2" and cfg.network == "mfnr" and cfg.net_opts.units == [1, 1, 1, 1]
    with pytest.raises(InputError, match="expected int"):
        config.config_by_name("mfnr_stn", ["emb_size=1.5"])
    with pytest.raises(InputError, match="did you mean momentum"):
        config.config_by_name("mfnr_stn", ["momentun=0.8"])
    with pytest.raises(InputError, match="did you mean mfnr_stn"):
        config.config_by_name("mfnr_st")


def test_lambda_schedule_halves_towards_early_stages():
    cfg = config.generate_config("mfnr", distill="stn")
    assert stage_rules.distill_lambdas(cfg) == [0.125, 0.25, 0.5, 1.0]
    cfg.distill_stages = [3, 4]
    assert stage_rules.distill_lambdas(cfg) == [0.5, 1.0]
    # by stage number, whatever the order or the subset
    cfg.distill_stages = [4, 1]
    assert stage_rules.distill_lambdas(cfg) == [1.0, 0.125]
    cfg.distill_stages = [2]
    assert stage_rules.distill_lambdas(cfg) == [0.25]
    cfg.distill_stages = [3, 4]
    cfg.distill_lambdas = [1.0]
    with pytest.raises(InputError):
        stage_rules.distill_lambdas(cfg)
