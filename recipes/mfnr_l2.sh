#!/usr/bin/env bash
# Paper row: MobileFaceNet-R (MFNR) "Student-1" (Sec. 4.3): ArcFace + Eq. 7 with the l2 distance at all
# four stages, lambda_4 = 0.001 and lambda_i = lambda_{i+1}/2 (Sec. 4.2), Table 2.
source "$(dirname "$0")/_common.sh"
need_teacher
train_row mfnr_l2 mfnr_l2 l2_lambda=0.001
