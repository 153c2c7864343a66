"""MobileNetV1 for 112x112 faces (InsightFace ``fmobilenet.py``, ``net_input=1``).

As in InsightFace the first 3x3 conv ``conv_1`` has stride 1, so the 13 depthwise /
pointwise pairs (``conv_<k>_dw`` -> ``conv_<k>``, each conv + BN + PReLU, names
unchanged) see the spatial sizes they see at 224 in the original MobileNet and end
at 1024 x 7 x 7.  The embedding comes from InsightFace's 'GDC' output with its
default 512 groups (``symbol_utils.get_fc1(..., input_channel=512)``): a 7x7
grouped conv over the 1024 maps (2 maps per group) -> FC -> BN.  That head is
what brings the count to the paper's figure: 3,532,800 parameters at embedding 512
(all arguments except ``data``), against 3.53M in Table 2 (+0.1%).  A 1024-group
GDC would give 3.80M and InsightFace's 'E' output 28.9M.

One deviation from InsightFace: BatchNorm learns its scale (``fix_gamma=False``,
as every other network here); InsightFace's file fixes it, which leaves the
argument names and shapes unchanged.

Stages (taps) at the teacher's sizes 56, 28, 14, 7:
  stage 1 = ``conv_1`` .. ``conv_4``    (128 x 56 x 56 at 112)
  stage 2 = ``conv_5`` .. ``conv_6``    (256 x 28 x 28)
  stage 3 = ``conv_7`` .. ``conv_12``   (512 x 14 x 14)
  stage 4 = ``conv_13`` .. ``conv_14``  (1024 x 7 x 7)
"""
import functools

from . import common

WITH_ID = False
#: stride-1 pairs after the first pair of each stage (stage 1 starts with two pairs)
MV1_BLOCKS = (1, 1, 5, 1)


def _pair_plan(bf, blocks):
    """(stride, output width) of every depthwise/pointwise pair, per stage, and the number
    ``k`` of each stage's first pair (``conv_<k>_dw``; ``conv_1`` is the input conv)."""
    plan = (
        ((1, 2 * bf), (2, 4 * bf)) + ((1, 4 * bf),) * blocks[0],
        ((2, 8 * bf),) + ((1, 8 * bf),) * blocks[1],
        ((2, 16 * bf),) + ((1, 16 * bf),) * blocks[2],
        ((2, 32 * bf),) + ((1, 32 * bf),) * blocks[3],
    )
    first_index = [2]
    for pairs in plan[:-1]:
        first_index.append(first_index[-1] + len(pairs))
    return plan, tuple(first_index)


def _stage(body, *, index, bf, plan, first_index):
    """Stage ``index`` (0..3): its depthwise/pointwise pairs, stage 1 behind ``conv_1``."""
    if index == 0:
        body = common.conv_bn(body, bf, kernel=(3, 3), stride=(1, 1), pad=(1, 1), name="conv_1")
        width = bf
    else:
        width = plan[index - 1][-1][1]
    for k, (stride, out) in enumerate(plan[index]):
        n = first_index[index] + k
        body = common.conv_bn(body, width, kernel=(3, 3), stride=(stride, stride), pad=(1, 1),
                              num_group=width, name=f"conv_{n}_dw")
        body = common.conv_bn(body, out, name=f"conv_{n}")
        width = out
    return body


def build(emb_size=512, image_size=112, multiplier=1.0, blocks=None):
    """Five pieces [stage 1..4, GDC output].  ``multiplier`` scales every width
    (InsightFace ``net_multiplier``; 0.25 gives a tiny test network) and ``blocks``
    sets the number of repeated stride-1 pairs per stage."""
    bf = int(32 * multiplier)
    blocks = tuple(blocks or MV1_BLOCKS)
    if len(blocks) != 4 or bf < 1:
        raise ValueError(f"fmobilenet: blocks needs 4 entries and multiplier > 0, got {blocks!r}, {multiplier!r}")
    plan, first_index = _pair_plan(bf, blocks)
    stages = [functools.partial(_stage, index=i, bf=bf, plan=plan, first_index=first_index) for i in range(4)]
    # InsightFace's default GDC width (512 at multiplier 1): half the 1024 maps of the last stage
    head = functools.partial(common.output_gdc, emb_size=emb_size, channels=32 * bf // 2,
                             kernel=common.final_size(image_size))
    return stages + [head]
