#!/usr/bin/env bash
# Low-resolution teacher-student (Karlekar et al.): teacher at 112x112, student (STUDENT, default mfn)
# at LOWRES (default 56) input; method: KTKD.
source "$(dirname "$0")/_common.sh"
need_teacher
STUDENT="${STUDENT:-mfn}"
train_row "${STUDENT}_lowres_ktkd" "${STUDENT}_lowres_ktkd" "lowres_size=${LOWRES:-56}"
