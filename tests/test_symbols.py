"""Networks as Symbols: InsightFace names/shapes, parameter counts, stage split, FLOPs, CLI table.

Full-size networks are only inferred symbolically (cheap); anything that runs uses
tiny variants.  Parameter counting convention (InsightFace's): every argument
except ``data`` - conv/FC weights and biases, BatchNorm gamma/beta (also with
``fix_gamma``), PReLU slopes; auxiliary states (BN running mean/var) excluded;
``fc7`` counted separately as the classifier.
"""
import json

import mxnet as mx
import numpy as np
import pytest

from shrinkteanet import symbols

from shrinkteanet.symbols import measure
from shrinkteanet.cli import main as cli_main


def shapes(sym, size=112):
    arg, aux = measure.param_shapes(sym, size)
    return arg, aux


# --------------------------------------------------------------- InsightFace table
# Worked out by hand from InsightFace's fresnet.py / fmobilefacenet.py / symbol_utils.py
# naming (residual_unit_v3: <unit>_bn1, _conv1, _bn2, _relu1, _conv2, _bn3, _conv1sc, _sc;
# input unit conv0/bn0/relu0; output 'E': bn1, pre_fc1, fc1; MobileFaceNet Conv/Linear:
# <name>_conv2d/_batchnorm/_relu, Residual blocks <name>_block<i>_conv_sep/_conv_dw/_conv_proj;
# GDC conv_6dw7_7).
R_ARGS = {
    "conv0_weight": (64, 3, 3, 3),
    "bn0_gamma": (64,),
    "relu0_gamma": (64,),
    "stage1_unit1_bn1_gamma": (64,),
    "stage1_unit1_conv1_weight": (64, 64, 3, 3),
    "stage1_unit1_relu1_gamma": (64,),
    "stage1_unit1_conv2_weight": (64, 64, 3, 3),
    "stage1_unit1_bn3_beta": (64,),
    "stage1_unit1_conv1sc_weight": (64, 64, 1, 1),
    "stage1_unit1_sc_gamma": (64,),
    "stage2_unit1_bn1_gamma": (64,),
    "stage2_unit1_conv1_weight": (128, 64, 3, 3),
    "stage2_unit1_conv2_weight": (128, 128, 3, 3),
    "stage2_unit1_conv1sc_weight": (128, 64, 1, 1),
    "stage3_unit1_conv1sc_weight": (256, 128, 1, 1),
    "stage4_unit1_conv1_weight": (512, 256, 3, 3),
    "stage4_unit3_conv2_weight": (512, 512, 3, 3),
    "bn1_gamma": (512,),
    "pre_fc1_weight": (512, 512 * 7 * 7),
    "pre_fc1_bias": (512,),
    "fc1_gamma": (512,),
    "fc1_beta": (512,),
}
R_AUX = {
    "bn0_moving_mean": (64,),
    "stage1_unit1_sc_moving_var": (64,),
    "stage4_unit3_bn3_moving_var": (512,),
    "bn1_moving_mean": (512,),
    "fc1_moving_var": (512,),
}
MFN_ARGS = {  # emb 128 (InsightFace y1)
    "conv_1_conv2d_weight": (64, 3, 3, 3),
    "conv_1_batchnorm_gamma": (64,),
    "conv_1_relu_gamma": (64,),
    "conv_2_dw_conv2d_weight": (64, 1, 3, 3),
    "dconv_23_conv_sep_conv2d_weight": (128, 64, 1, 1),
    "dconv_23_conv_dw_conv2d_weight": (128, 1, 3, 3),
    "dconv_23_conv_proj_conv2d_weight": (64, 128, 1, 1),
    "res_3_block0_conv_sep_conv2d_weight": (128, 64, 1, 1),
    "res_3_block3_conv_proj_batchnorm_beta": (64,),
    "dconv_34_conv_proj_conv2d_weight": (128, 256, 1, 1),
    "res_4_block5_conv_dw_conv2d_weight": (256, 1, 3, 3),
    "dconv_45_conv_sep_conv2d_weight": (512, 128, 1, 1),
    "dconv_45_conv_proj_conv2d_weight": (128, 512, 1, 1),
    "res_5_block1_conv_sep_conv2d_weight": (256, 128, 1, 1),
    "conv_6sep_conv2d_weight": (512, 128, 1, 1),
    "conv_6sep_relu_gamma": (512,),
    "conv_6dw7_7_conv2d_weight": (512, 1, 7, 7),
    "conv_6dw7_7_batchnorm_gamma": (512,),
    "pre_fc1_weight": (128, 512),
    "fc1_gamma": (128,),
}
MFN_AUX = {
    "conv_1_batchnorm_moving_mean": (64,),
    "res_5_block1_conv_proj_batchnorm_moving_var": (128,),
    "conv_6dw7_7_batchnorm_moving_var": (512,),
    "fc1_moving_mean": (128,),
}


@pytest.mark.parametrize("network,stage_units", [("r50", (3, 4, 14, 3)), ("r100", (3, 13, 30, 3))])
def test_fresnet_insightface_names_and_shapes(network, stage_units):
    sym = symbols.get_symbol(network, 512)
    arg, aux = shapes(sym)
    for name, shp in R_ARGS.items():
        assert arg.get(name) == shp, name
    for name, shp in R_AUX.items():
        assert aux.get(name) == shp, name
    # stage depth: last unit exists, one more does not; shortcut only in each stage's first unit
    for s, u in enumerate(stage_units, start=1):
        assert f"stage{s}_unit{u}_conv2_weight" in arg
        assert f"stage{s}_unit{u + 1}_conv1_weight" not in arg
        assert f"stage{s}_unit2_conv1sc_weight" not in arg
    # count of arguments and aux states from the unit recipe:
    # unit = 3 BN (2 args, 2 aux) + 2 conv + 1 PReLU = 9 args / 6 aux; first units add conv1sc + BN sc;
    # input unit data, conv0, bn0 (2), relu0 = 5 args; output bn1, pre_fc1 (w, b), fc1 = 6 args
    n_units = sum(stage_units)
    assert len(sym.list_arguments()) == 5 + 9 * n_units + 3 * 4 + 6
    assert len(sym.list_auxiliary_states()) == 2 + 6 * n_units + 2 * 4 + 4
    assert sym.list_arguments()[0] == "data"
    assert sym.list_outputs() == ["fc1_output"]
    # no SE blocks, no 'convd' bottleneck (InsightFace defaults net_se=0, basic units below 500 layers)
    assert not any("_se_" in n or n.startswith("convd") for n in arg)


def test_mfn_insightface_names_and_shapes():
    sym = symbols.get_symbol("mfn", 128)
    arg, aux = shapes(sym)
    for name, shp in MFN_ARGS.items():
        assert arg.get(name) == shp, name
    for name, shp in MFN_AUX.items():
        assert aux.get(name) == shp, name
    assert "res_3_block3_conv_sep_conv2d_weight" in arg and "res_3_block4_conv_sep_conv2d_weight" not in arg
    assert "res_4_block5_conv_sep_conv2d_weight" in arg and "res_4_block6_conv_sep_conv2d_weight" not in arg
    # Linear (projection) units have no activation, InsightFace's fmobilefacenet.Linear
    assert "dconv_23_conv_proj_relu_gamma" not in arg
    # blocks[0] == 1: a single depthwise conv, no res_2 stack
    assert not any(n.startswith("res_2") for n in arg)
    # counts: every conv has 1 weight + BN 2 args/2 aux (+1 PReLU when not linear)
    convs = [n for n in arg if n.endswith("_conv2d_weight")]
    prelus = [n for n in arg if n.endswith("_relu_gamma")]
    n_blocks = 4 + 6 + 2
    assert len(convs) == 2 + 3 * 3 + 3 * n_blocks + 1 + 1  # conv_1, conv_2_dw, dconvs, res, conv_6sep, GDC
    assert len(prelus) == 2 + 2 * 3 + 2 * n_blocks + 1
    assert len(aux) == 2 * len(convs) + 2  # + fc1


# --------------------------------------------------------------- parameter counts
def fresnet_count_by_hand(units, emb, filters=(64, 64, 128, 256, 512), image=112):
    """Independent count of LResNet-E-IR parameters from the unit recipe."""
    f0 = filters[0]
    n = 3 * 9 * f0 + 2 * f0 + f0  # conv0, bn0, relu0
    cin = f0
    for s, u in enumerate(units):
        c = filters[s + 1]
        for j in range(u):
            n += 2 * cin + 9 * cin * c + 2 * c + c + 9 * c * c + 2 * c  # bn1 conv1 bn2 relu1 conv2 bn3
            if j == 0:
                n += cin * c + 2 * c  # conv1sc + sc
            cin = c
        image = (image + 1) // 2
    n += 2 * cin + cin * image * image * emb + emb + 2 * emb  # bn1, pre_fc1 (w, b), fc1
    return n


@pytest.mark.parametrize("network,units", [("r18", (2, 2, 2, 2)), ("r50", (3, 4, 14, 3)), ("r90", (3, 8, 30, 3)),
                                           ("r100", (3, 13, 30, 3))])
def test_fresnet_param_count_matches_hand_count(network, units):
    emb, cls = measure.count_params(symbols.get_symbol(network, 512))
    assert cls == 0
    assert emb == fresnet_count_by_hand(units, 512)
    # at 56x56 the E head's FC sees 4x4 maps: the count follows the input
    emb56, _ = measure.count_params(symbols.get_symbol(network, 512, image_size=56), 56)
    assert emb56 == fresnet_count_by_hand(units, 512, image=56)


@pytest.mark.parametrize("network,paper", [("r90", 63.67e6), ("mv1", 3.53e6), ("mv2", 2.15e6), ("mfn", 1.2e6),
                                           ("mfnr", 3.73e6)])
def test_param_counts_match_paper_table2(network, paper):
    emb, _ = measure.count_params(symbols.get_symbol(network, 512))
    assert abs(emb - paper) / paper < 0.03, (network, emb)


def test_mfn_count_insightface_128():
    # InsightFace: MobileFaceNet y1 has 1.0M parameters at embedding 128 (CONTRACTS.md)
    emb, _ = measure.count_params(symbols.get_symbol("mfn", 128))
    assert abs(emb - 1.0e6) / 1.0e6 < 0.01
    # the difference 128 -> 512 is only the FC pre_fc1 (512 x emb + emb) and fc1 BN (2 emb)
    emb512, _ = measure.count_params(symbols.get_symbol("mfn", 512))
    assert emb512 - emb == (512 * 512 + 512 + 2 * 512) - (512 * 128 + 128 + 2 * 128)


def test_classifier_counted_apart():
    sym = symbols.get_symbol("mfn", 64, blocks=(1, 1, 1, 1), filters=(8, 8, 16, 16, 32), image_size=32)
    fc7 = mx.sym.FullyConnected(sym, num_hidden=10, no_bias=True, name="fc7")
    emb, cls = measure.count_params(fc7, 32)
    assert cls == 10 * 64
    assert emb == measure.count_params(sym, 32)[0]


# --------------------------------------------------------------- FLOPs
def test_count_flops_hand_made_symbol():
    data = mx.sym.var("data")
    x = mx.sym.Convolution(data, num_filter=8, kernel=(3, 3), pad=(1, 1), name="c1")  # 16x16
    x = mx.sym.Convolution(x, num_filter=8, kernel=(3, 3), stride=(2, 2), pad=(1, 1), num_group=8, name="dw")
    x = mx.sym.FullyConnected(x, num_hidden=10, name="fc")
    expected = 8 * 16 * 16 * 3 * 9 + 8 * 8 * 8 * 1 * 9 + 8 * 8 * 8 * 10
    assert measure.count_flops(x, 16) == expected


def test_mfn_flops_match_mobilefacenet_paper():
    # MobileFaceNet (Chen et al. 2018, Table 1/3): 221M multiply-adds at 112x112
    flops = measure.count_flops(symbols.get_symbol("mfn", 128), 112)
    assert abs(flops - 221e6) / 221e6 < 0.01


def test_fresnet_flops_scale_with_resolution():
    # the body is fully convolutional: conv MACs scale with the pixel count (56/112 -> 1/4),
    # up to the border rounding of the last stage (4x4 instead of 3.5x3.5)
    f112 = measure.count_flops(symbols.get_symbol("r50", 512), 112)
    f56 = measure.count_flops(symbols.get_symbol("r50", 512, image_size=56), 56)
    assert 0.24 < f56 / f112 < 0.30


# --------------------------------------------------------------- stages
TEACHER_STAGES = [(64, 56, 56), (128, 28, 28), (256, 14, 14), (512, 7, 7)]
STAGES_112 = {
    "r18": TEACHER_STAGES, "r34": TEACHER_STAGES, "r50": TEACHER_STAGES, "r90": TEACHER_STAGES,
    "r100": TEACHER_STAGES, "mfnr": TEACHER_STAGES,
    "mfn": [(64, 56, 56), (64, 28, 28), (128, 14, 14), (512, 7, 7)],
    "mv1": [(128, 56, 56), (256, 28, 28), (512, 14, 14), (1024, 7, 7)],
    "mv2": [(24, 56, 56), (32, 28, 28), (96, 14, 14), (320, 7, 7)],
}


@pytest.mark.parametrize("network", symbols.NETWORKS)
def test_stage_shapes_and_tails(network):
    split = symbols.get_stages(network, 512)
    assert split.stage_shapes(112) == STAGES_112[network]
    # every student stage sits at the teacher's spatial size, so a 1x1 adapter fits
    assert [s[1:] for s in split.stage_shapes(112)] == [s[1:] for s in TEACHER_STAGES]
    assert split.full.list_outputs() == ["fc1_output"]
    full_arg, full_aux = shapes(split.full)
    for i, tail in enumerate(split.tails):
        c, h, w = STAGES_112[network][i]
        arg_shapes, out_shapes, aux_shapes = tail.infer_shape(**{split.tail_inputs[i]: (2, c, h, w)})
        assert out_shapes[0] == (2, 512)
        names = tail.list_arguments()
        assert names[0] == split.tail_inputs[i]
        # same names and shapes as in the full network: the tail can share the teacher's weights
        for n, s in zip(names[1:], arg_shapes[1:]):
            assert full_arg[n] == s, n
        for n, s in zip(tail.list_auxiliary_states(), aux_shapes):
            assert full_aux[n] == s, n
    # tails shrink: each later tail holds a strict subset of the previous one's parameters
    sets = [set(t.list_arguments()[1:]) for t in split.tails]
    assert sets[0] > sets[1] > sets[2] > sets[3]
    # the full network's parameters are exactly stages 1..4 + tail 4 (the output unit)
    assert set(full_arg) - {"data"} > sets[0]
    # taps are internal outputs of the full network
    internals = split.full.get_internals().list_outputs()
    assert all(name in internals for name in split.tap_outputs)


def test_fresnet_output_unit_tail():
    split = symbols.get_stages("r18", 512)
    assert split.tails[3].list_arguments() == ["stage4_feature", "bn1_gamma", "bn1_beta", "pre_fc1_weight",
                                               "pre_fc1_bias", "fc1_gamma", "fc1_beta"]


def test_low_resolution_stage_shapes():
    # an FCN student at 56x56: each stage halves, GDC kernel follows (4x4), E head FC follows the input
    for network, last in (("mfn", 512), ("r34", 512)):
        split = symbols.get_stages(network, 128, image_size=56)
        shp = split.stage_shapes(56)
        assert [s[1:] for s in shp] == [(28, 28), (14, 14), (7, 7), (4, 4)]
        assert shp[3][0] == last
        _, out, _ = split.full.infer_shape(data=(3, 3, 56, 56))
        assert out[0] == (3, 128)
    arg, _ = shapes(symbols.get_symbol("mfn", 128, image_size=56), 56)
    assert arg["conv_6dw7_7_conv2d_weight"] == (512, 1, 4, 4)


def test_mfnr_and_mobile_widths():
    arg, _ = shapes(symbols.get_symbol("mfnr", 512))
    assert arg["res_3_block0_conv_proj_conv2d_weight"] == (128, 256, 1, 1)
    assert arg["res_4_block0_conv_proj_conv2d_weight"] == (256, 512, 1, 1)
    assert arg["res_5_block0_conv_proj_conv2d_weight"] == (512, 256, 1, 1)
    arg, _ = shapes(symbols.get_symbol("mv1", 512))
    # InsightFace GDC default: 512 groups over the 1024 maps of conv_14 (2 maps per group)
    assert arg["conv_6dw7_7_conv2d_weight"] == (512, 2, 7, 7)
    assert arg["conv_14_conv2d_weight"] == (1024, 1024, 1, 1)
    assert arg["conv_1_conv2d_weight"] == (32, 3, 3, 3)


def test_normalisation_inside_network_without_parameters():
    # InsightFace: (x - 127.5) * 0.0078125 as scalar ops; fresnet behind an identity named 'id'
    graph = json.loads(symbols.get_symbol("r18", 8, units=(1, 1, 1, 1), filters=(4, 4, 4, 4, 4)).tojson())
    ops = [(n["op"], n["name"], n.get("attrs", {}).get("scalar")) for n in graph["nodes"][:4]]
    assert ops[0][0] == "null" and ops[0][1] == "data"
    assert ops[1][:2] == ("_copy", "id")  # mx.sym.identity is stored as _copy
    assert ops[2][0] == "_minus_scalar" and float(ops[2][2]) == 127.5
    assert ops[3][0] == "_mul_scalar" and float(ops[3][2]) == 0.0078125


def test_fp16_option_types():
    opts = dict(blocks=(1, 1, 1, 1), filters=(8, 8, 16, 16, 32), image_size=32)
    split = symbols.get_stages("mfn", 16, dtype="float16", **opts)
    ref = symbols.get_stages("mfn", 16, **opts)
    assert split.full.list_arguments() == ref.full.list_arguments()
    assert split.full.list_auxiliary_states() == ref.full.list_auxiliary_states()
    grouped = mx.sym.Group([split.full] + split.taps)
    arg_t, out_t, _ = grouped.infer_type(data=np.float32)
    types = dict(zip(grouped.list_arguments(), arg_t))
    assert types["conv_1_conv2d_weight"] == np.float16
    assert types["conv_1_batchnorm_gamma"] == np.float32  # BatchNorm keeps float32 parameters
    assert types["pre_fc1_weight"] == np.float32  # output unit back in float32
    assert all(t == np.float32 for t in out_t)


def test_bad_network_and_options():
    with pytest.raises(ValueError, match="unknown network"):
        symbols.get_symbol("r51")
    with pytest.raises(ValueError, match="unsupported option"):
        symbols.get_symbol("mfn", blokcs=(1, 1, 1, 1))
    with pytest.raises(ValueError, match="units needs 4"):
        symbols.get_symbol("r18", units=(1, 1, 1))


# --------------------------------------------------------------- CLI
def test_models_cli_json(tmp_path, capsys):
    out = tmp_path / "models.json"
    rc = cli_main(["models", "--networks", "mfn,r50", "--num-classes", "1000", "--sizes", "112,56",
                   "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "mfn" in text and "r50" in text and "MFLOPs@56" in text
    report = json.loads(out.read_text())
    assert list(report) == ["mfn", "r50"]
    mfn = report["mfn"]
    assert mfn["params_classifier"] == 1000 * 512
    assert mfn["params_embedding"] == measure.count_params(symbols.get_symbol("mfn", 512))[0]
    assert mfn["mflops"]["112"] == pytest.approx(measure.count_flops(symbols.get_symbol("mfn", 512)) / 1e6)
    assert report["r50"]["stage_shapes"]["56"] == [[64, 28, 28], [128, 14, 14], [256, 7, 7], [512, 4, 4]]
    assert report["r50"]["params_embedding_by_size"]["56"] == fresnet_count_by_hand((3, 4, 14, 3), 512, image=56)


def test_models_cli_bad_input(capsys):
    assert cli_main(["models", "--networks", "r51"]) == 2
    assert "r51" in capsys.readouterr().err
    assert cli_main(["models", "--sizes", "112,abc"]) == 2
