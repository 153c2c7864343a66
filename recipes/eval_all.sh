#!/usr/bin/env bash
# All evaluations of one model: verification .bin sets, MegaFace, IJB-C (where the data is there).
# MODEL=PREFIX,EPOCH; VAL (dir of lfw.bin, cfp_fp.bin, agedb_30.bin); MEGAFACE (devkit-layout root);
# IJB (folder holding IJBC/); REPORT_DIR (default: beside the model); IMAGE_SIZE (the model's input
# side; default the training set's, DATA/property, else 112).
source "$(dirname "$0")/_common.sh"
: "${MODEL:?set MODEL=PREFIX,EPOCH}"
prefix="${MODEL%,*}"
REPORT_DIR="${REPORT_DIR:-$(dirname "$prefix")/eval}"
IMAGE_SIZE="${IMAGE_SIZE:-$(row_image_size)}"
# GPUS (as the training recipes): the first GPU of the list; unset, gpu(0) when one is visible
show_and_run "$SHRINKTEANET" eval verification --model "$MODEL" --image-size "$IMAGE_SIZE" "${GPU_ARGS[@]}" --data-dir "$VAL" \
  --targets lfw,cfp_fp,agedb_30 --out "$REPORT_DIR/verification" --json "$REPORT_DIR/verification.json"
if [ -n "${MEGAFACE:-}" ]; then
  show_and_run "$SHRINKTEANET" eval megaface --model "$MODEL" --image-size "$IMAGE_SIZE" "${GPU_ARGS[@]}" --megaface-root "$MEGAFACE" \
    --out "$REPORT_DIR/megaface" --json "$REPORT_DIR/megaface.json"
fi
if [ -n "${IJB:-}" ]; then
  show_and_run "$SHRINKTEANET" eval ijb --model "$MODEL" --image-size "$IMAGE_SIZE" "${GPU_ARGS[@]}" --image-path "$IJB/IJBC" --target IJBC \
    --out "$REPORT_DIR/ijbc" --json "$REPORT_DIR/ijbc.json"
fi
