#!/usr/bin/env bash
# The UnoPE ablation (the paper's Table: none / height / width / diagonal) on the embedded base: Stage I's CPU
# recipe (configs/stage1_world.yaml) for 750 steps in each position mode, each scored on the first 100 one- and
# 100 two-reference held-out cases with look-free captions (colour can only come from the references). Two
# single-thread queues side by side on 2 CPU cores: about 45 min. Resumes; a finished report is not redone.
#
#   scripts/probes/unope_ablation.sh [RUNS_DIR] [EVAL_DIR]     (defaults: data/runs/unope, data/eval/unope)
#
# The base is the config's model: the 64 px base v4 (data/gpu/base-v4), which the ablation in docs/model.md ran on.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-data/runs/unope}; EVAL=${2:-data/eval/unope}
BASE=$(sed -n 's/^model: *\([^ ]*\).*/\1/p' configs/stage1_world.yaml)   # evaluate on what was trained on
read -r -a U <<< "${UNOFLUX:-.venv/bin/unoflux}"
export OMP_NUM_THREADS=1
mkdir -p "$RUNS" "$EVAL"
one() {  # mode: train on the config's model, then score
  local mode=$1
  [ -f "$RUNS/$mode/final/dit_lora.safetensors" ] || "${U[@]}" train --config configs/stage1_world.yaml \
    --position-mode "$mode" --max-steps 750 --output-dir "$RUNS/$mode" --resume > "$RUNS/$mode.log" 2>&1
  [ -f "$EVAL/lookfree-unope-$mode/report.json" ] || "${U[@]}" evaluate world-subject --model "$BASE" --base-only \
    --ref-long-side 64,48 --look-free-captions --limit 100 --position-mode "$mode" \
    --lora "$RUNS/$mode/final/dit_lora.safetensors" --out "$EVAL/lookfree-unope-$mode" > "$EVAL/$mode.log" 2>&1
}
( one none; one width ) &
FIRST=$!
( one height; one diagonal ) &
wait $FIRST && wait $!
for mode in none height width diagonal; do
  .venv/bin/python -c "import json,sys; s=json.load(open(sys.argv[1]))['summary']['by_kind']; \
print(f'{sys.argv[2]:9s} look-free colour, 1 ref: {s[\"one\"][\"colour\"]:5.1f}   2 refs: {s[\"two\"][\"colour\"]:5.1f}')" \
    "$EVAL/lookfree-unope-$mode/report.json" "$mode"
done
