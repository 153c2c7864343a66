"""Units shared by every network of ``shrinkteanet.symbols``.

Each unit reproduces the operator sequence *and the parameter names* of
InsightFace's MXNet symbols (``recognition/symbol/fresnet.py``,
``fmobilefacenet.py``, ``symbol_utils.py``), so that InsightFace checkpoints load
with their ``arg_params``/``aux_params`` unchanged:

* ``normalize``: ``(x - 127.5) * 0.0078125`` as operators without parameters
  (fresnet puts an ``identity`` node named ``id`` in front).
* ``conv_bn``: Convolution (no bias) -> BatchNorm -> optional PReLU, named either
  explicitly (fresnet's ``conv0``/``bn0``/``relu0``) or by the MobileFaceNet
  scheme ``<name>_conv2d``, ``<name>_batchnorm``, ``<name>_relu``.
* ``ir_unit``: fresnet's ``residual_unit_v3`` (the "IR" unit of ArcFace, BN ->
  3x3 conv -> BN -> PReLU -> 3x3 conv (stride) -> BN, plus identity or
  1x1-conv+BN shortcut).
* ``depthwise_unit`` / ``depthwise_stack``: MobileFaceNet's ``DResidual`` and
  ``Residual``.
* ``output_e`` / ``output_gdc``: ``symbol_utils.get_fc1`` with ``fc_type`` 'E'
  (BN -> Dropout(0.4) -> FC ``pre_fc1`` -> BN ``fc1``) and 'GDC' (7x7 global
  depthwise conv ``conv_6dw7_7`` -> FC ``pre_fc1`` -> BN ``fc1``).

Every residual addition is given an explicit name (``<unit>_plus``) so that stage
outputs (the distillation taps) can be found by name in a saved symbol; InsightFace
left these names to MXNet's counter, which does not change any parameter name.
"""
import mxnet as mx

from shrinkteanet.core.constants import PIXEL_MEAN, PIXEL_SCALE

from .tables import final_size  # noqa: F401 - the families' GDC kernel

#: BatchNorm momentum of InsightFace's default config (``config.bn_mom``).
BN_MOM = 0.9
#: fresnet's BatchNorm epsilon; the MobileFaceNet units keep MXNet's default 1e-3.
RESNET_EPS = 2e-5
MXNET_DEFAULT_EPS = 1e-3


def normalize(data, with_id=False):
    """Raw RGB 0-255 -> ``(x - PIXEL_MEAN) * PIXEL_SCALE`` (InsightFace, all networks)."""
    if with_id:
        data = mx.sym.identity(data=data, name="id")
    data = data - PIXEL_MEAN
    return data * PIXEL_SCALE


def act(data, name, act_type="prelu"):
    """PReLU (parameter ``<name>_gamma``, one slope per channel) or a plain activation."""
    if act_type == "prelu":
        return mx.sym.LeakyReLU(data=data, act_type="prelu", name=name)
    return mx.sym.Activation(data=data, act_type=act_type, name=name)


def batchnorm(data, name, eps=MXNET_DEFAULT_EPS, fix_gamma=False, momentum=BN_MOM):
    return mx.sym.BatchNorm(data=data, fix_gamma=fix_gamma, eps=eps, momentum=momentum, name=name)


def conv_bn(data, num_filter, *, kernel=(1, 1), stride=(1, 1), pad=(0, 0), num_group=1, name=None,
            with_act=True, eps=MXNET_DEFAULT_EPS, act_type="prelu", names=None):
    """Convolution (no bias) -> BatchNorm -> PReLU.

    ``name`` gives MobileFaceNet's names (``fmobilefacenet.Conv``/``Linear``:
    ``<name>_conv2d``, ``<name>_batchnorm``, ``<name>_relu``); ``names=(conv, bn,
    act)`` gives explicit names (fresnet's input unit ``conv0``, ``bn0``, ``relu0``).
    ``with_act=False`` is InsightFace's ``Linear`` (no activation).
    """
    if names is None:
        names = (f"{name}_conv2d", f"{name}_batchnorm", f"{name}_relu")
    body = mx.sym.Convolution(data=data, num_filter=num_filter, kernel=kernel, stride=stride, pad=pad,
                              num_group=num_group, no_bias=True, name=names[0])
    body = batchnorm(body, names[1], eps=eps)
    if with_act:
        body = act(body, names[2], act_type)
    return body


def ir_unit(data, *, num_filter, stride, dim_match, name, act_type="prelu"):
    """fresnet ``residual_unit_v3`` without SE (InsightFace default ``net_se=0``).

    BN ``_bn1`` -> 3x3 conv ``_conv1`` -> BN ``_bn2`` -> PReLU ``_relu1`` -> 3x3 conv
    ``_conv2`` (carries the stride) -> BN ``_bn3``; shortcut = input, or 1x1 conv
    ``_conv1sc`` (stride) -> BN ``_sc`` when the shape changes.
    """
    eps = RESNET_EPS
    body = batchnorm(data, name + "_bn1", eps=eps)
    body = mx.sym.Convolution(data=body, num_filter=num_filter, kernel=(3, 3), stride=(1, 1), pad=(1, 1),
                              no_bias=True, name=name + "_conv1")
    body = batchnorm(body, name + "_bn2", eps=eps)
    body = act(body, name + "_relu1", act_type)
    body = mx.sym.Convolution(data=body, num_filter=num_filter, kernel=(3, 3), stride=stride, pad=(1, 1),
                              no_bias=True, name=name + "_conv2")
    body = batchnorm(body, name + "_bn3", eps=eps)
    if dim_match:
        shortcut = data
    else:
        shortcut = mx.sym.Convolution(data=data, num_filter=num_filter, kernel=(1, 1), stride=stride,
                                      no_bias=True, name=name + "_conv1sc")
        shortcut = batchnorm(shortcut, name + "_sc", eps=eps)
    return mx.sym.elemwise_add(body, shortcut, name=name + "_plus")


def depthwise_unit(data, *, num_out, num_group, stride, name, kernel=(3, 3), pad=(1, 1)):
    """MobileFaceNet ``DResidual`` (the MobileNetV2 bottleneck without its shortcut):
    1x1 expand ``_conv_sep`` (PReLU) -> depthwise ``_conv_dw`` (stride, PReLU) ->
    linear 1x1 projection ``_conv_proj``."""
    body = conv_bn(data, num_group, name=f"{name}_conv_sep")
    body = conv_bn(body, num_group, kernel=kernel, stride=stride, pad=pad, num_group=num_group,
                   name=f"{name}_conv_dw")
    return conv_bn(body, num_out, name=f"{name}_conv_proj", with_act=False)


def depthwise_stack(data, *, num_block, num_out, num_group, name):
    """MobileFaceNet ``Residual``: ``num_block`` stride-1 ``depthwise_unit``s named
    ``<name>_block<i>`` (i from 0), each with an identity shortcut."""
    body = data
    for i in range(num_block):
        unit = depthwise_unit(body, num_out=num_out, num_group=num_group, stride=(1, 1), name=f"{name}_block{i}")
        body = mx.sym.elemwise_add(unit, body, name=f"{name}_block{i}_plus")
    return body


def output_e(body, emb_size):
    """InsightFace output 'E': BN ``bn1`` -> Dropout(0.4) -> FC ``pre_fc1`` -> BN ``fc1``
    (``fix_gamma=True``).  The FC takes the whole C x H x W map, so its weight
    shape follows the input resolution."""
    body = batchnorm(body, "bn1", eps=RESNET_EPS)
    body = mx.sym.Dropout(data=body, p=0.4)
    fc1 = mx.sym.FullyConnected(data=body, num_hidden=emb_size, name="pre_fc1")
    return batchnorm(fc1, "fc1", eps=RESNET_EPS, fix_gamma=True)


def output_gdc(body, emb_size, channels, kernel):
    """InsightFace output 'GDC' (MobileFaceNet): a global depthwise ``kernel`` x ``kernel``
    convolution ``conv_6dw7_7`` with ``channels`` groups (+BN, no activation) ->
    FC ``pre_fc1`` -> BN ``fc1`` (``fix_gamma=True``).

    As in ``symbol_utils.get_fc1`` the group count is ``channels`` (512 there by
    default) even when the input has more channels: then each group sees
    ``C_in / channels`` input maps (used by ``mv1``: 1024 maps, 512 groups).
    ``kernel`` is the final spatial size (7 at 112x112).  A ``Flatten`` (no parameters)
    sits between the BN and the FC: without it MXNet 1.9.1's MKLDNN path fails on
    the second forward ("We can't generate TBlob for MKLDNN data")."""
    body = conv_bn(body, channels, kernel=(kernel, kernel), num_group=channels, name="conv_6dw7_7",
                   with_act=False)
    body = mx.sym.Flatten(body, name="conv_6dw7_7_flat")
    fc1 = mx.sym.FullyConnected(data=body, num_hidden=emb_size, name="pre_fc1")
    return batchnorm(fc1, "fc1", eps=RESNET_EPS, fix_gamma=True)


