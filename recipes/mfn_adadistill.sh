#!/usr/bin/env bash
# AdaDistill (Boutros, Struc, Damer, ECCV 2024): MobileFaceNet student, ArcFace (s=64, m=0.45) on class
# centres that are an EMA of the teacher's embeddings with the adaptive, sample-weighted momentum (the
# authors' release, fdbtrs/AdaDistill). No teacher fc7 needed. The package's schedule and batch, as every
# row here, so that the methods compare under one trainer. AdaCosDistill: `train --config mfn_adadistill_cos`.
source "$(dirname "$0")/_common.sh"
need_teacher
train_row mfn_adadistill mfn_adadistill
