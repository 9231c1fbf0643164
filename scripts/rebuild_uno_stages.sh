#!/usr/bin/env bash
# Rebuild the embedded model's subject-driven LoRA (UNO Stage I -> Stage II on the synthetic world) and every
# row of the evaluation table in docs/model.md, from the shipped text-to-image base. Every step resumes when
# interrupted (world shards, training checkpoints); an evaluation is skipped when its report exists.
# About 2 h on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
U=".venv/bin/unoflux"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}   # one thread per process: oversubscribing 2 cores is 10x slower
BASE=src/unoflux/embedded/uno-world

# 1. World pairs: a reference shot of one subject + a scene with it; 2-3 reference shots + a scene with all.
$U world build --out data/world64/pairs       --kind pairs       --count 12000 --size 64 --seed 4 --shard-size 1000 --quiet
$U world build --out data/world64/multi-pairs --kind multi-pairs --count 6000  --size 64 --seed 5 --shard-size 1000 --quiet

# 2. Stage I (single-subject pairs), then Stage II from Stage I's LoRA (multi-subject pairs). Diagonal UnoPE.
OMP_NUM_THREADS=2 $U train --config configs/stage1_world.yaml --resume
OMP_NUM_THREADS=2 $U train --config configs/stage2_world.yaml --resume

# 3. The UnoPE ablation: Stage I's recipe, a shorter run per mode (the same steps for all four).
for mode in none height width diagonal; do
  $U train --config configs/stage1_world.yaml --position-mode $mode --max-steps 750 \
    --output-dir data/runs/unope-$mode --resume
done

# 4. Held-out subject cases (200 with one reference, 200 with two), judged by the exact checker.
evaluate() {  # out-dir, then flags
  local out=$1; shift
  [ -f "$out/report.json" ] || $U evaluate world-subject --out "$out" "$@"
}
evaluate data/eval/subject-caption-only --model $BASE --base-only --caption-only
evaluate data/eval/subject-base-with-refs --model $BASE --base-only
evaluate data/eval/subject-stage1 --model $BASE --lora data/runs/stage1/final/dit_lora.safetensors
evaluate data/eval/subject-stage2 --model $BASE --lora data/runs/stage2/final/dit_lora.safetensors
for mode in none height width diagonal; do
  evaluate data/eval/unope-$mode --model $BASE --lora data/runs/unope-$mode/final/dit_lora.safetensors --position-mode $mode
done
evaluate data/eval/stage2-t2i-check --model $BASE --lora data/runs/stage2/final/dit_lora.safetensors --caption-only

# 5. Ship Stage II inside the embedded model (loaded by default; --base-only leaves it out).
$U family ship-lora data/runs/stage2/final $BASE --notes data/eval/subject-stage2/report.json
