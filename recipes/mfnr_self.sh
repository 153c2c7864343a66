#!/usr/bin/env bash
# Paper row: MobileFaceNet-R (MFNR) self-studied student (ArcFace only, no teacher), Table 2.
source "$(dirname "$0")/_common.sh"
train_row mfnr_self mfnr_self
