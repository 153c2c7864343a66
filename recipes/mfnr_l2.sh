#!/usr/bin/env bash
# Paper row: MobileFaceNet-R (MFNR) "Student-1": ArcFace + lambda * L2 between final embeddings,
# lambda = 0.001 (Sec. 4.2), Table 2.
source "$(dirname "$0")/_common.sh"
need_teacher
train_row mfnr_l2 mfnr_l2 l2_lambda=0.001
