"""Facts used in more than one place live here, once.

Normalisation and template follow InsightFace: the network sees
``(x - 127.5) * 0.0078125`` of raw RGB 0-255, and faces are aligned by a
5-point similarity transform onto the ArcFace 112x112 template.
"""
import numpy as np

#: InsightFace input normalisation, applied inside every network symbol.
PIXEL_MEAN = 127.5
PIXEL_SCALE = 0.0078125

IMAGE_SIZE = 112

#: ArcFace 112x112 template (left eye, right eye, nose tip, left/right mouth corner), x, y.
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
)

#: Verification targets of the paper's Table 2, in report order.
VERIFICATION_TARGETS = ("lfw", "cfp_fp", "agedb_30")

#: IJB 1:1 FAR grid of the report (CONTRACTS.md: keys as str(float)).
IJB_FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)

#: MegaFace distractor-set sizes of challenge 1.
MEGAFACE_SIZES = (10, 100, 1000, 10000, 100000, 1000000)
