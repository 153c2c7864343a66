"""LResNet-E-IR (ArcFace's ResNet, InsightFace ``fresnet.py`` with its defaults).

Options as in InsightFace: ``version_input=1`` (3x3 conv stride 1 ``conv0`` ->
``bn0`` -> PReLU ``relu0``, no down-sampling, so 112 -> 56 happens in stage 1),
``version_unit=3`` (the IR unit, ``common.ir_unit``), ``version_output='E'``
(``common.output_e``), no SE, PReLU.  Filters 64 | 64, 128, 256, 512; the first
unit of every stage has stride 2 and a 1x1 conv shortcut.

Stages (the distillation taps) are fresnet's own ``stage1..stage4``; at 112x112
their outputs are 64x56x56, 128x28x28, 256x14x14, 512x7x7.

Parameter counts at embedding 512 (all arguments except ``data``: conv weights,
BN gamma/beta, PReLU slopes, FC weight/bias; aux states excluded):
r18 24.0M, r34 34.1M, r50 43.6M, r90 63.68M (paper Table 2: 63.67M), r100 65.2M.
"""
import functools

from . import common
from .tables import FRESNET_FILTERS as FILTERS, FRESNET_UNITS as UNITS

#: fresnet normalises behind an ``identity`` node named ``id``.
WITH_ID = True


def _stage(body, *, index, units, filters):
    """fresnet's ``stage<index+1>``: ``units[index]`` IR units, the first with stride 2 and a
    1x1-conv shortcut; stage 1 behind the input unit ``conv0``/``bn0``/``relu0``."""
    if index == 0:
        body = common.conv_bn(body, filters[0], kernel=(3, 3), stride=(1, 1), pad=(1, 1),
                              eps=common.RESNET_EPS, names=("conv0", "bn0", "relu0"))
    for j in range(units[index]):
        body = common.ir_unit(body, num_filter=filters[index + 1], stride=(2, 2) if j == 0 else (1, 1),
                              dim_match=j > 0, name=f"stage{index + 1}_unit{j + 1}")
    return body


def build(num_layers, emb_size=512, image_size=112, units=None, filters=None):
    """The five pieces [input unit + stage 1, stage 2, stage 3, stage 4, output unit],
    each a function Symbol -> Symbol.  ``units``/``filters`` override the depth table
    (tiny test networks: ``units=(1, 1, 1, 1), filters=(8, 8, 16, 16, 32)``).
    ``image_size`` needs nothing here: output 'E' takes the whole final map."""
    if units is None:
        if num_layers not in UNITS:
            raise ValueError(f"fresnet: no unit table for {num_layers} layers (have {sorted(UNITS)})")
        units = UNITS[num_layers]
    units, filters = tuple(units), tuple(filters or FILTERS)
    if len(units) != 4 or len(filters) != 5:
        raise ValueError(f"fresnet: units needs 4 entries and filters 5, got {units!r}, {filters!r}")
    stages = [functools.partial(_stage, index=i, units=units, filters=filters) for i in range(4)]
    return stages + [functools.partial(common.output_e, emb_size=emb_size)]
