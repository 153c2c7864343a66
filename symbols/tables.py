"""The shape tables of the InsightFace families, without MXNet: ``fresnet`` and
``fmobilefacenet`` build from them and ``infer`` reads checkpoints against them."""

#: units per stage, InsightFace ``fresnet.get_symbol`` (num_layers -> units).
FRESNET_UNITS = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 14, 3),
    90: (3, 8, 30, 3),
    100: (3, 13, 30, 3),
}
FRESNET_FILTERS = (64, 64, 128, 256, 512)

#: MobileFaceNet (InsightFace ``y1``): (stage widths: conv_1/conv_2_dw, res_3, res_4, res_5, conv_6sep)
MFN_FILTERS = (64, 64, 128, 128, 512)
#: depthwise widths of (dconv_23, res_3, dconv_34, res_4, dconv_45, res_5)
MFN_GROUPS = (128, 128, 256, 256, 512, 256)
MFN_BLOCKS = (1, 4, 6, 2)
#: MobileFaceNet-R (ShrinkTeaNet Sec. 4): stages as wide as the teacher's
MFNR_FILTERS = (64, 128, 256, 512, 512)
MFNR_GROUPS = (256, 256, 512, 512, 512, 256)
#: fmobilefacenet variant -> (filters, groups)
MOBILEFACENET_WIDTHS = {"mfn": (MFN_FILTERS, MFN_GROUPS), "mfnr": (MFNR_FILTERS, MFNR_GROUPS)}


def final_size(image_size, num_halvings=4):
    """Spatial size after ``num_halvings`` stride-2 convolutions with padding 1
    (3x3 kernels) or 0 (1x1): ceil(s / 2) each time, e.g. 112 -> 7, 56 -> 4."""
    s = int(image_size)
    for _ in range(num_halvings):
        s = (s + 1) // 2
    return s
