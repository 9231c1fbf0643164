#!/usr/bin/env bash
# Held-out scores of a world base and its Stage I / Stage II LoRAs, as docs/model.md reports them: text-to-image
# (256 prompts) and subject-driven (200 one-reference + 200 two-reference cases; the first 100 of each again with
# look-free captions), each skipped when its report exists. Two single-thread queues side by side (2 CPU cores:
# about 25 min at 64 px, 50 at 128). References are sized as Stage II's run trained them (its config.yaml).
# `.venv/bin/python scripts/subject_table.py EVAL_DIR` then prints the table.
#
#   scripts/evaluate_embedded.sh BASE_DIR STAGE1_RUN STAGE2_RUN EVAL_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 4 ] || { sed -n 2,7p "$0"; exit 2; }
BASE=$1; STAGE1=$2/final/dit_lora.safetensors; STAGE2=$3/final/dit_lora.safetensors; OUT=$4
read -r -a U <<< "${UNOFLUX:-.venv/bin/unoflux}"
export OMP_NUM_THREADS=1
long_side() { awk -v key="reference_long_side_$1:" '$1 == key {print $2}' "$2/final/config.yaml"; }
REFS="$(long_side single "$3"),$(long_side multi "$3")"
mkdir -p "$OUT"
t2i() { [ -f "$OUT/t2i/report.json" ] || "${U[@]}" evaluate world-t2i --model "$BASE" --dtype fp32 --out "$OUT/t2i" > "$OUT/t2i.log" 2>&1; }
subject() {  # name, then flags
  local name=$1; shift
  [ -f "$OUT/$name/report.json" ] || "${U[@]}" evaluate world-subject --out "$OUT/$name" --model "$BASE" --base-only \
    --ref-long-side "$REFS" "$@" > "$OUT/$name.log" 2>&1
}
( t2i
  subject subject-caption-only --caption-only
  subject subject-stage2 --lora "$STAGE2"
  subject lookfree-stage1 --look-free-captions --limit 100 --lora "$STAGE1" ) &
FIRST=$!
( subject subject-stage1 --lora "$STAGE1"
  subject lookfree-caption-only --look-free-captions --limit 100 --caption-only
  subject lookfree-stage2 --look-free-captions --limit 100 --lora "$STAGE2" ) &
wait $FIRST && wait $!   # either queue failing fails the script (its log: EVAL_DIR/NAME.log)
echo "reports in $OUT"
