"""The network registry (``shrinkteanet.symbols.registry``): one declaration per network, from
which the training config, the paper table, the report's names and ``shrinkteanet models`` are
computed; unknown names fail listing the valid ones; the registry imports no MXNet."""
import ast
import json
import pathlib
import subprocess
import sys

import pytest

from shrinkteanet import symbols

from shrinkteanet.symbols import measure
from shrinkteanet.cli import main as cli_main
from shrinkteanet.core.errors import InputError
from shrinkteanet.study import paper
from shrinkteanet.study import report_table
from shrinkteanet.symbols import registry
from shrinkteanet.training import config

#: CONTRACTS.md "Networks": the teacher family, then the students
CONTRACT_NETWORKS = ("r18", "r34", "r50", "r90", "r100", "mfn", "mfnr", "mv1", "mv2")
#: the Table 2 rows of the paper (name, parameters in millions)
PAPER_TABLE2 = {"r90": ("ResNet90", 63.67), "mv1": ("MobileNetV1", 3.53), "mv2": ("MobileNetV2", 2.15),
                "mfn": ("MobileFaceNet", 1.2), "mfnr": ("MobileFaceNet-R", 3.73)}
SYMBOLS_DIR = pathlib.Path(__file__).resolve().parents[1] / "symbols"


def test_registry_lists_exactly_the_contract_networks():
    assert symbols.NETWORKS == CONTRACT_NETWORKS
    assert tuple(symbols.REGISTRY) == CONTRACT_NETWORKS
    assert all(spec.name == name for name, spec in symbols.REGISTRY.items())
    # r50, r100 and mfn load InsightFace checkpoints unchanged; mfnr, mv1, mv2 are ours
    assert {"r50", "r100", "mfn"} <= set(symbols.INSIGHTFACE_COMPATIBLE)
    assert not {"mfnr", "mv1", "mv2"} & set(symbols.INSIGHTFACE_COMPATIBLE)
    assert symbols.INSIGHTFACE_COMPATIBLE == tuple(n for n, s in symbols.REGISTRY.items() if s.insightface)


def test_spec_builds_its_family_pieces():
    pieces, with_id = symbols.get_spec("r18").build(512, {"units": (1, 1, 1, 1), "filters": (8, 8, 16, 16, 32)})
    assert len(pieces) == 5 and with_id is True  # fresnet normalises behind `id`
    pieces, with_id = symbols.get_spec("mv2").build(64, {"multiplier": 0.25})
    assert len(pieces) == 5 and with_id is False
    sym = symbols.get_symbol("mfnr", 128)
    assert sym.list_outputs() == ["fc1_output"]
    arg, _ = measure.param_shapes(sym)
    assert arg["res_3_block0_conv_sep_conv2d_weight"] == (256, 128, 1, 1)  # mfnr's widths, not mfn's


@pytest.mark.parametrize("call", [lambda: symbols.get_spec("resnet50"), lambda: symbols.get_symbol("resnet50"),
                                  lambda: symbols.get_stages("resnet50", 128)])
def test_unknown_network_lists_every_valid_name(call):
    with pytest.raises(ValueError, match="unknown network 'resnet50'") as err:
        call()
    assert all(name in str(err.value) for name in CONTRACT_NETWORKS)


def test_unknown_network_in_config_and_cli_is_an_input_error(capsys):
    with pytest.raises(InputError, match="unknown network 'resnet50'") as err:
        config.generate_config("resnet50")
    assert all(name in str(err.value) for name in CONTRACT_NETWORKS)
    assert cli_main(["models", "--networks", "mfn,resnet50"]) == 2
    err_text = capsys.readouterr().err.strip().splitlines()[-1]
    assert "resnet50" in err_text and all(name in err_text for name in CONTRACT_NETWORKS)


def test_config_networks_table_is_the_registry_training_defaults():
    assert list(config.NETWORKS) == list(CONTRACT_NETWORKS)
    for name, spec in symbols.REGISTRY.items():
        assert dict(config.NETWORKS[name]) == dict(network=name, **spec.training)
        cfg = config.generate_config(name)
        assert cfg.network == name
        assert all(cfg[k] == v for k, v in spec.training.items())
    # InsightFace's per-network weight decay: 4e-5 for the mobile networks, 5e-4 (DEFAULT) for ResNets
    assert config.generate_config("mfn").wd == 4e-5 and config.generate_config("mv2").wd == 4e-5
    assert config.generate_config("r50").wd == 5e-4 and config.config_by_name("mfnr_stn").wd == 4e-5


def test_paper_table_is_the_registry_paper_figures():
    assert paper.NETWORKS == PAPER_TABLE2
    for name, (paper_name, params) in paper.NETWORKS.items():
        spec = symbols.get_spec(name)
        assert (spec.paper_name, spec.paper_params_m) == (paper_name, params)
    assert all(symbols.get_spec(n).paper_name is None for n in set(CONTRACT_NETWORKS) - set(PAPER_TABLE2))


def test_report_names_are_the_registry_display_names():
    assert report_table.NET_NAMES == {n: s.display_name for n, s in symbols.REGISTRY.items()}
    cells = {key: (0.5, None) for key, _ in report_table.PROTOCOLS}
    row = report_table._table2_row("mv1", "stn", cells, [], (1000, 2e6))
    assert row.startswith(f"| {symbols.get_spec('mv1').display_name} | ShrinkTeaNet |")
    assert f"/ {symbols.get_spec('mv1').paper_params_m}M |" in row
    teacher = report_table._table2_row("r90", "teacher", cells, [], (1000, 2e6))
    assert teacher.startswith("| LResNet-E-IR (r90 family) | Teacher |") and "/ 63.67M |" in teacher
    order = {"mfnr": {key: (True, [0.3, 0.2, 0.1]) for key, _ in report_table.PROTOCOLS}}
    assert f"**{symbols.get_spec('mfnr').display_name}**" in report_table._ordering_text(order)


def test_models_command_lists_every_registered_network(tmp_path, capsys):
    out = tmp_path / "models.json"
    assert cli_main(["models", "--sizes", "56", "--num-classes", "10", "--json", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in lines[2:]}
    assert list(rows) == list(CONTRACT_NETWORKS)
    report = json.loads(out.read_text())
    assert list(report) == list(CONTRACT_NETWORKS)
    for name, spec in symbols.REGISTRY.items():
        assert spec.display_name in rows[name]
        assert report[name]["display_name"] == spec.display_name
        assert report[name]["insightface_compatible"] is spec.insightface
        assert report[name]["paper_params_m"] == spec.paper_params_m
    assert report["mv1"]["params_embedding"] == 3532800  # the 112x112 count, whatever --sizes says


def test_registry_and_config_import_no_mxnet():
    code = ("import sys; import shrinkteanet.training.config, shrinkteanet.study.paper, shrinkteanet.symbols; "
            "from shrinkteanet.cli import build_parser; build_parser(); print('mxnet' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"
    assert registry.NETWORKS is symbols.NETWORKS


def test_no_function_in_symbols_is_over_60_lines():
    long = []
    for path in sorted(SYMBOLS_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long.append(f"{path.name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long
