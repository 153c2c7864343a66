#!/usr/bin/env bash
# Paper row: MobileFaceNet (MFN) self-studied student (ArcFace only, no teacher), Table 2.
source "$(dirname "$0")/_common.sh"
train_row mfn_self mfn_self
