#!/usr/bin/env bash
# Paper row: ShrinkTeaNet-MV1: ArcFace + Angular Distillation Loss at the final embedding (lambda_4 = 1)
# and at stages 1-3 through the frozen teacher tails (lambda_i = lambda_{i+1} / 2), Eq. 4-6, Table 2.
source "$(dirname "$0")/_common.sh"
need_teacher
train_row mv1_stn mv1_stn "distill_stages=1,2,3,4"
