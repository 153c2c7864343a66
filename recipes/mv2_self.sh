#!/usr/bin/env bash
# Paper row: MobileNetV2 (MV2) self-studied student (ArcFace only, no teacher), Table 2.
source "$(dirname "$0")/_common.sh"
train_row mv2_self mv2_self
