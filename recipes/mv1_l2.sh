#!/usr/bin/env bash
# Paper row: MobileNetV1 (MV1) "Student-1" (Sec. 4.3): ArcFace + Eq. 7 with the l2 distance at all
# four stages, lambda_4 = 0.001 and lambda_i = lambda_{i+1}/2 (Sec. 4.2), Table 2.
source "$(dirname "$0")/_common.sh"
need_teacher
train_row mv1_l2 mv1_l2 l2_lambda=0.001
