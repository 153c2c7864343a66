#!/usr/bin/env bash
# EKD (Huang et al., CVPR 2022): MobileFaceNet student, the ArcFace softmax plus the rank-based loss on
# the critical pairs at the FPR thresholds 1e-1..1e-6 of each device's batch (weights 0.02 positive /
# 0.01 negative, tau 0.01, top-2000 negatives, threshold momentum 0.01: Tencent/TFace ekd.py).
source "$(dirname "$0")/_common.sh"
need_teacher
train_row mfn_ekd mfn_ekd
