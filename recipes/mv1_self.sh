#!/usr/bin/env bash
# Paper row: MobileNetV1 (MV1) self-studied student (ArcFace only, no teacher), Table 2.
source "$(dirname "$0")/_common.sh"
train_row mv1_self mv1_self
