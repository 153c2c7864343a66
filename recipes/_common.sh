# Sourced by every recipe: environment defaults, --dry-run, printing the exact command.
#
# Environment: DATA (RecordIO set dir), VAL (dir with lfw.bin etc., default DATA), OUT (work dir),
# GPUS (e.g. 0,1,2,3; empty = every visible GPU of a CUDA build, else the CPU; cpu = the CPU), TEACHER (PREFIX,EPOCH; default: the newest checkpoint of the
# teacher recipe under OUT), SHRINKTEANET (the CLI, default `shrinkteanet` on PATH or .venv),
# SKIP_EVAL=1 to train only, EXTRA (more key=value overrides).
# Paper set-up (ShrinkTeaNet Sec. 4.2): batch 512 over the GPUs, lr 0.1, momentum 0.9, the lambdas,
# G = 1x1 conv + BN. InsightFace defaults (the paper does not state them): ArcFace s=64 m=0.5, the lr
# steps, weight decay, the 512-d embedding. The lr steps (100k,160k,220k) are counted in batches of 512
# images (lr_step_unit=batch, lr_step_batch=512) and rescaled when EXTRA sets another global batch_size
# (batch_size=128: 400k,640k,880k); --dry-run prints the resolved steps.
set -euo pipefail

DRY_RUN=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e 's/^# \{0,1\}//' -e '/^set -euo/d'; exit 0 ;;
    *) echo "$(basename "$0"): unknown argument $arg (only --dry-run)" >&2; exit 2 ;;
  esac
done

RECIPES_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$RECIPES_DIR")"
if [ -z "${SHRINKTEANET:-}" ]; then
  if [ -x "$REPO_DIR/.venv/bin/shrinkteanet" ]; then SHRINKTEANET="$REPO_DIR/.venv/bin/shrinkteanet"
  else SHRINKTEANET=shrinkteanet; fi
fi
DATA="${DATA:-datasets/faces_emore}"
VAL="${VAL:-$DATA}"
OUT="${OUT:-work/recipes}"
GPUS="${GPUS:-}"
EXTRA="${EXTRA:-}"

# newest PREFIX,EPOCH under a prefix (InsightFace layout PREFIX-%04d.params)
latest_ckpt() {
  local prefix="$1" last
  last=$(ls "$prefix"-[0-9][0-9][0-9][0-9].params 2>/dev/null | sort | tail -n 1 || true)
  if [ -z "$last" ]; then echo "$prefix,0"; return; fi
  last="${last%.params}"
  echo "$prefix,$((10#${last##*-}))"
}

teacher_default() { latest_ckpt "$OUT/teacher_${TEACHER_NET:-r90}/model"; }

# input size of the model a row trains: the last lowres_size=N among its overrides (low-resolution
# students), else the training set's (property: classes,H,W), else 112
row_image_size() {
  local a size=""
  for a in "$@"; do case "$a" in lowres_size=*) size="${a#lowres_size=}" ;; esac; done
  if [ -z "$size" ] && [ -f "$DATA/property" ]; then size=$(cut -d, -f2 "$DATA/property" | tr -d '[:space:]'); fi
  echo "${size:-112}"
}

# --gpus of every command: GPUS when set (cpu forces the CPU); unset, the commands choose (every visible GPU)
GPU_ARGS=()
if [ -n "$GPUS" ]; then GPU_ARGS=(--gpus "$GPUS"); fi

show_and_run() {
  printf '+'; printf ' %q' "$@"; printf '\n'
  if [ "$DRY_RUN" = 0 ]; then "$@"; fi
}

# train_row CONFIG NAME [key=value ...]: one row of the paper's tables
train_row() {
  local config="$1" name="$2"; shift 2
  local -a cmd=("$SHRINKTEANET" train --config "$config" --data "$DATA" --out "$OUT/$name")
  cmd+=("${GPU_ARGS[@]}")
  [ -n "${TEACHER_ARG:-}" ] && cmd+=(--teacher "$TEACHER_ARG")
  cmd+=("val_dir=$VAL" "$@")
  # shellcheck disable=SC2206
  [ -n "$EXTRA" ] && cmd+=($EXTRA)
  if [ "$DRY_RUN" = 1 ]; then
    printf '+'; printf ' %q' "${cmd[@]}"; printf '\n'
    # prove the resolved config is valid without training
    local -a ov=("val_dir=$VAL" "$@")
    # shellcheck disable=SC2206
    [ -n "$EXTRA" ] && ov+=($EXTRA)
    # the teacher checkpoint is checked when it exists (network, sizes, fc7 against the data);
    # before the teacher recipe has run, the rest is checked (--teacher-pending)
    local -a tv=()
    if [ -n "${TEACHER_ARG:-}" ]; then
      if [ -f "${TEACHER_ARG%,*}-symbol.json" ] && \
         [ -f "$(printf '%s-%04d.params' "${TEACHER_ARG%,*}" "$((10#${TEACHER_ARG##*,}))")" ]; then
        tv=("teacher=$TEACHER_ARG")
      else
        tv=(--teacher-pending); echo "dry-run: teacher $TEACHER_ARG not trained yet; checked without it"
      fi
    fi
    "$SHRINKTEANET" config "$config" "data_dir=$DATA" "${ov[@]}" "${tv[@]}" --json "${TMPDIR:-/tmp}/recipe-$name.json" | tail -n 1
    echo "dry-run: config $config resolves (${TMPDIR:-/tmp}/recipe-$name.json)"
    return 0
  fi
  printf '+'; printf ' %q' "${cmd[@]}"; printf '\n'
  "${cmd[@]}"
  if [ "${SKIP_EVAL:-0}" != 1 ]; then
    # shellcheck disable=SC2086
    MODEL="$(latest_ckpt "$OUT/$name/model")" IMAGE_SIZE="${IMAGE_SIZE:-$(row_image_size "$@" $EXTRA)}" \
      bash "$RECIPES_DIR/eval_all.sh"
  fi
}

# student rows need the teacher checkpoint
need_teacher() {
  TEACHER_ARG="${TEACHER:-$(teacher_default)}"
  echo "teacher: $TEACHER_ARG"
}

# lowres_row kt|kd|ktkd STUDENT: a low-resolution row; a mobile student has its own config, any other
# network is the teacher-architecture student of mfn_lowres_* with network=STUDENT
lowres_row() {
  local mode="$1" student="$2"
  case "$student" in
    mfn|mfnr|mv1|mv2) train_row "${student}_lowres_${mode}" "${student}_lowres_${mode}" "lowres_size=${LOWRES:-56}" ;;
    *) train_row "mfn_lowres_${mode}" "${student}_lowres_${mode}" "network=$student" "lowres_size=${LOWRES:-56}" ;;
  esac
}
