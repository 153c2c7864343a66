#!/usr/bin/env bash
# Paper row: MobileNetV2 (MV2) "Student-1": ArcFace + lambda * L2 between final embeddings,
# lambda = 0.001 (Sec. 4.2), Table 2.
source "$(dirname "$0")/_common.sh"
need_teacher
train_row mv2_l2 mv2_l2 l2_lambda=0.001
