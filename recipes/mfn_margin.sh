#!/usr/bin/env bash
# MarginDistillation (Svitov & Alyamkin): MobileFaceNet student on the teacher's fixed class centres,
# per-sample margin from the teacher's angle to its class centre.
source "$(dirname "$0")/_common.sh"
need_teacher
train_row mfn_margin mfn_margin
