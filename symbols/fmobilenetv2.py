"""MobileNetV2 for 112x112 faces, with MobileFaceNet's embedding output.

The inverted-residual table of Sandler et al. (t, c, n, s):
(1, 16, 1, 1), (6, 24, 2, 1*), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
(6, 160, 3, 2), (6, 320, 1, 1), after a 3x3 stride-2 ``conv_1`` (32).  A 112x112
face needs four halvings to end at 7x7 instead of the five of the 224 ImageNet
net, so the second group (24) keeps stride 1 (*): stages then sit at the
teacher's 56, 28, 14, 7.  Each bottleneck is MobileFaceNet's ``depthwise_unit``
(1x1 expand + PReLU, 3x3 depthwise + PReLU, linear 1x1 projection; the t=1 unit
has no expansion conv) with an identity shortcut when stride is 1 and widths
match.  The 1x1 ``conv_last`` (MobileFaceNet's ``conv_6sep``: conv + BN + PReLU)
keeps the 320 maps of the last bottleneck and the output is InsightFace's 'GDC'
over them: the ImageNet net's 1280 maps would give 2.96M parameters and 512 maps
2.28M (+6%).  PReLU replaces ReLU6 as in every InsightFace
mobile network.  InsightFace's own ``fmobilenetv2.py`` (a Gluon wrapper with a
first conv of stride 1 and output 'E', over 30M parameters) is not followed.

2.11M parameters at embedding 512 (all arguments except ``data``), against
2.15M in the paper's Table 2 (-1.8%).

Stages (taps):
  stage 1 = ``conv_1``, groups 1-2    (24 x 56 x 56 at 112)
  stage 2 = group 3                   (32 x 28 x 28)
  stage 3 = groups 4-5                (96 x 14 x 14)
  stage 4 = groups 6-7 + ``conv_last`` (320 x 7 x 7)
Unit names: ``bneck<g>_<j>`` (group g = 1..7, unit j from 1) with the suffixes
``_expand``, ``_dw``, ``_proj`` of ``common.conv_bn`` and ``_plus`` for the sum.
"""
import functools

import mxnet as mx

from . import common

WITH_ID = False

#: (expansion t, output width c, units n, stride s) of the 7 bottleneck groups
MV2_SETTING = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
               (6, 160, 3, 2), (6, 320, 1, 1))
#: which groups make stages 1..4 (stage 1 also holds conv_1, stage 4 conv_last)
STAGE_GROUPS = ((0, 1), (2,), (3, 4), (5, 6))


def _bottleneck(data, *, in_c, t, out_c, stride, name):
    """One inverted residual: expand ``_expand`` (skipped at t=1) -> depthwise ``_dw`` ->
    linear projection ``_proj``, plus the identity ``_plus`` when the shape is kept."""
    hidden = in_c * t
    body = data
    if t != 1:
        body = common.conv_bn(body, hidden, name=f"{name}_expand")
    body = common.conv_bn(body, hidden, kernel=(3, 3), stride=(stride, stride), pad=(1, 1), num_group=hidden,
                          name=f"{name}_dw")
    body = common.conv_bn(body, out_c, name=f"{name}_proj", with_act=False)
    if stride == 1 and in_c == out_c:
        body = mx.sym.elemwise_add(body, data, name=f"{name}_plus")
    return body


def _setting(multiplier, blocks):
    """The (t, c, n, s) rows with ``blocks`` as the unit counts and widths scaled by ``multiplier``."""
    if blocks is not None and len(blocks) != 7:
        raise ValueError(f"fmobilenetv2: blocks needs 7 entries (units per group), got {blocks!r}")
    units = [row[2] for row in MV2_SETTING] if blocks is None else [int(n) for n in blocks]
    return tuple((t, max(1, int(round(c * multiplier))), n, s) for (t, c, _, s), n in zip(MV2_SETTING, units))


def _stage(body, *, index, setting, first, last):
    """Stage ``index`` (0..3): its bottleneck groups (``STAGE_GROUPS``), stage 1 behind
    ``conv_1`` (``first`` maps) and stage 4 followed by ``conv_last`` (``last`` maps)."""
    if index == 0:
        body = common.conv_bn(body, first, kernel=(3, 3), stride=(2, 2), pad=(1, 1), name="conv_1")
    for g in STAGE_GROUPS[index]:
        t, c, n, s = setting[g]
        in_c = setting[g - 1][1] if g > 0 else first
        for j in range(n):
            body = _bottleneck(body, in_c=in_c if j == 0 else c, t=t, out_c=c, stride=s if j == 0 else 1,
                               name=f"bneck{g + 1}_{j + 1}")
    if index == 3:
        body = common.conv_bn(body, last, name="conv_last")
    return body


def build(emb_size=512, image_size=112, multiplier=1.0, blocks=None, last_channels=320):
    """Five pieces [stage 1..4, GDC output].  ``multiplier`` scales the widths,
    ``blocks`` (7 entries) overrides the units per group (``n``), ``last_channels``
    the width of ``conv_last`` (and of the GDC head)."""
    setting = _setting(multiplier, blocks)
    first = max(1, int(round(32 * multiplier)))
    last = int(last_channels)
    stages = [functools.partial(_stage, index=i, setting=setting, first=first, last=last) for i in range(4)]
    head = functools.partial(common.output_gdc, emb_size=emb_size, channels=last,
                             kernel=common.final_size(image_size))
    return stages + [head]
