#!/usr/bin/env bash
# Low-resolution teacher-student (Karlekar et al. 2019): the teacher at full resolution, the student FCN
# at LOWRES (default 56) input.  Usage: lowres.sh kt|kd|ktkd [--dry-run]; the method is the first
# argument or MODE (KT: knowledge transfer, KD: distillation, KTKD: both).  The student has the
# teacher's architecture (STUDENT, default the teacher network r90, as in the paper, whose students
# differ from the teacher only in resolution; knowledge transfer copies the teacher's parameters into
# it); STUDENT=mfn|mfnr|mv1|mv2 picks a mobile one.
case "${1:-}" in kt|kd|ktkd) MODE="$1"; shift ;; -h|--help) MODE=help ;; esac
case "${MODE:-}" in
  kt|kd|ktkd|help) ;;  # help: _common.sh prints this header and exits
  *) echo "$(basename "$0"): the method comes first: kt, kd or ktkd (or MODE=...)" >&2; exit 2 ;;
esac
source "$(dirname "$0")/_common.sh"
need_teacher
STUDENT="${STUDENT:-${TEACHER_NET:-r90}}"
lowres_row "$MODE" "$STUDENT"
