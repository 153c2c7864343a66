"""MobileFaceNet (InsightFace ``fmobilefacenet.py``, preset ``y1``) and MobileFaceNet-R.

``mfn`` is InsightFace's network with ``net_blocks=(1, 4, 6, 2)`` and output 'GDC',
names unchanged: ``conv_1`` (3x3 s2, 64) -> ``conv_2_dw`` (3x3 depthwise, 64) ->
``dconv_23`` (s2, 64 out, 128 expansion) -> ``res_3`` (4 blocks) -> ``dconv_34`` (s2,
128 out, 256 expansion) -> ``res_4`` (6 blocks) -> ``dconv_45`` (s2, 128 out, 512
expansion) -> ``res_5`` (2 blocks, 256 expansion) -> ``conv_6sep`` (1x1, 512) ->
GDC output (``conv_6dw7_7``, ``pre_fc1``, ``fc1``).

Stage boundaries (taps), chosen at the teacher's spatial sizes 56, 28, 14, 7 so that
a 1x1-conv adapter maps each student stage onto the teacher's stage:
  stage 1 = ``conv_1`` + ``conv_2_dw``                  (64 x 56 x 56 at 112)
  stage 2 = ``dconv_23`` + ``res_3``                    (64 x 28 x 28)
  stage 3 = ``dconv_34`` + ``res_4``                    (128 x 14 x 14)
  stage 4 = ``dconv_45`` + ``res_5`` + ``conv_6sep``    (512 x 7 x 7)
and the output unit is the GDC head.

``mfnr`` (MobileFaceNet-R, ShrinkTeaNet Sec. 4) keeps that layout but makes every
stage as wide as the teacher's: 64, 128, 256, 512 (``conv_6sep`` stays 512).  The
paper gives no more detail; here stages 2 and 3 keep mfn's expansion ratio of 2
(depthwise widths 256 and 512, doubled with their outputs) and stage 4 keeps
mfn's own depthwise widths (512 in ``dconv_45``, 256 in ``res_5``), which gives
3.65M parameters at embedding 512 against 3.73M in the paper's Table 2 (-2.1%).
Expansion 2 in stage 4 as well (1024/1024) would give 4.58M, and 512/512 4.18M.

Parameter counts (all arguments except ``data``; aux excluded): mfn 1.00M at
embedding 128 and 1.20M at 512 (InsightFace: 1.0M / 1.2M; the paper: 1.2M).
"""
from . import common
from .tables import MFN_BLOCKS, MFN_FILTERS, MFN_GROUPS, MFNR_FILTERS, MFNR_GROUPS  # noqa: F401 - as before

WITH_ID = False


def _widths(variant, blocks, filters, groups):
    """(blocks, filters, groups) of ``variant`` with the caller's overrides; ``groups``
    defaults to twice each output width when only ``filters`` is given."""
    if variant == "mfn":
        default_filters, default_groups = MFN_FILTERS, MFN_GROUPS
    elif variant == "mfnr":
        default_filters, default_groups = MFNR_FILTERS, MFNR_GROUPS
    else:
        raise ValueError(f"fmobilefacenet: unknown variant {variant!r}")
    blocks = tuple(blocks or MFN_BLOCKS)
    if filters is not None and groups is None:
        f = tuple(filters)
        groups = (2 * f[1], 2 * f[1], 2 * f[2], 2 * f[2], 2 * f[3], 2 * f[3])
    filters = tuple(filters or default_filters)
    groups = tuple(groups or default_groups)
    if len(blocks) != 4 or len(filters) != 5 or len(groups) != 6:
        raise ValueError(f"fmobilefacenet: blocks needs 4 entries, filters 5, groups 6; got "
                         f"{blocks!r}, {filters!r}, {groups!r}")
    return blocks, filters, groups


def build(variant="mfn", emb_size=512, image_size=112, blocks=None, filters=None, groups=None):
    """Five pieces [stage 1..4, GDC output] (see the module docstring).

    ``blocks`` = residual blocks per stage (``blocks[0] == 1`` means the single
    depthwise conv ``conv_2_dw``, as in InsightFace); ``filters`` = the 5 widths above;
    ``groups`` = the 6 depthwise widths, default twice each output width when
    ``filters`` is given without ``groups``."""
    blocks, filters, groups = _widths(variant, blocks, filters, groups)
    kernel = common.final_size(image_size)

    def stage1(body):
        body = common.conv_bn(body, filters[0], kernel=(3, 3), stride=(2, 2), pad=(1, 1), name="conv_1")
        if blocks[0] == 1:
            return common.conv_bn(body, filters[0], kernel=(3, 3), pad=(1, 1), num_group=filters[0],
                                  name="conv_2_dw")
        return common.depthwise_stack(body, num_block=blocks[0], num_out=filters[0],
                                      num_group=filters[0], name="res_2")

    def stage2(body):
        body = common.depthwise_unit(body, num_out=filters[1], num_group=groups[0], stride=(2, 2), name="dconv_23")
        return common.depthwise_stack(body, num_block=blocks[1], num_out=filters[1],
                                      num_group=groups[1], name="res_3")

    def stage3(body):
        body = common.depthwise_unit(body, num_out=filters[2], num_group=groups[2], stride=(2, 2), name="dconv_34")
        return common.depthwise_stack(body, num_block=blocks[2], num_out=filters[2],
                                      num_group=groups[3], name="res_4")

    def stage4(body):
        body = common.depthwise_unit(body, num_out=filters[3], num_group=groups[4], stride=(2, 2), name="dconv_45")
        body = common.depthwise_stack(body, num_block=blocks[3], num_out=filters[3],
                                      num_group=groups[5], name="res_5")
        return common.conv_bn(body, filters[4], name="conv_6sep")

    def head(body):
        return common.output_gdc(body, emb_size, filters[4], kernel)

    return [stage1, stage2, stage3, stage4, head]
