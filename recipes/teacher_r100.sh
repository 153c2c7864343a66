#!/usr/bin/env bash
# Paper row: teacher LResNet-E-IR R100 (ArcFace, MS1M), ShrinkTeaNet Table 2 "Teacher".
source "$(dirname "$0")/_common.sh"
train_row teacher_r100 teacher_r100
