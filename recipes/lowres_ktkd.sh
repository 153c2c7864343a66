#!/usr/bin/env bash
# Low-resolution teacher-student (Karlekar et al. 2019): the teacher at full resolution, the student FCN
# at LOWRES (default 56) input; method: KTKD.  The student has the teacher's architecture (STUDENT, default
# the teacher network r90, as in the paper, whose students differ from the teacher only in resolution;
# knowledge transfer copies the teacher's parameters into it); STUDENT=mfn|mfnr|mv1|mv2 picks a mobile one.
source "$(dirname "$0")/_common.sh"
need_teacher
STUDENT="${STUDENT:-${TEACHER_NET:-r90}}"
case "$STUDENT" in
  mfn|mfnr|mv1|mv2) train_row "${STUDENT}_lowres_ktkd" "${STUDENT}_lowres_ktkd" "lowres_size=${LOWRES:-56}" ;;
  *) train_row "mfn_lowres_ktkd" "${STUDENT}_lowres_ktkd" "network=$STUDENT" "lowres_size=${LOWRES:-56}" ;;
esac
