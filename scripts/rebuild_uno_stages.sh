#!/usr/bin/env bash
# Rebuild the embedded model's subject-driven LoRA (UNO Stage I -> Stage II on the synthetic world) and every
# row of the subject-driven table in docs/model.md, from the shipped text-to-image base. Every step resumes
# when interrupted (world shards, training checkpoints); an evaluation is skipped when its report exists.
# As run: two single-thread jobs side by side on 2 CPU cores. This is how v3's stages were made (about 1 h 10 with
# their evaluations, at the model's sampling defaults: guidance 1, CFG 3); the mixing experiment ran on v2, the
# UnoPE ablation and the UNO-captions Stage I on v1 (reports: data/eval/v2, data/eval/v1; docs/model.md). The
# v4's stages ran on a GPU (scripts/rebuild_on_gpu.sh), v5's at 128 px too; this script's base is the configs'
# model, the 64 px v4 (data/gpu/base-v4), and its step 5 ships the CPU recipe's LoRA into that folder.
set -euo pipefail
cd "$(dirname "$0")/.."
U=".venv/bin/unoflux"
export OMP_NUM_THREADS=1   # one thread per process: oversubscribing 2 cores is 10x slower
BASE=$(sed -n 's/^model: *\([^ ]*\).*/\1/p' configs/stage1_world.yaml)   # the 64 px base v4 (data/gpu/base-v4)

# 1. World pairs: a reference shot of one subject + a scene with it; 2-3 reference shots + a scene with all.
$U world build --out data/world64/pairs       --kind pairs       --count 12000 --size 64 --seed 4 --shard-size 1000 --quiet
$U world build --out data/world64/multi-pairs --kind multi-pairs --count 6000  --size 64 --seed 5 --shard-size 1000 --quiet

# 2. Stage I (single-subject pairs, 2500 steps, 34 min), then Stage II from it (multi-subject pairs, 1500 steps).
#    The UnoPE ablation's diagonal run is Stage I's first 750 steps: its checkpoint-750, resumed to write final/.
$U train --config configs/stage1_world.yaml --resume
mkdir -p data/runs/unope-diagonal && cp -rn data/runs/stage1/checkpoint-750 data/runs/unope-diagonal/ 2>/dev/null || true
$U train --config configs/stage1_world.yaml --position-mode diagonal --max-steps 750 --output-dir data/runs/unope-diagonal --resume
$U train --config configs/stage2_world.yaml --resume
$U train --config configs/experiments/stage2_world_mixed.yaml --resume   # Stage II with single pairs mixed in

# 3. The UnoPE ablation: Stage I's recipe for 750 steps in each other mode; and the first Stage I recipe
#    (UNO's captions only, rank 32, lr 2e-4), which learned to ignore references.
for mode in none height width; do
  $U train --config configs/stage1_world.yaml --position-mode $mode --max-steps 750 --output-dir data/runs/unope-$mode --resume
done
$U train --config configs/experiments/stage1_world_uno_captions.yaml --resume

# 4. Held-out subject cases (200 with one reference, 200 with two), judged by the exact checker
#    (.venv/bin/python scripts/subject_table.py prints the table of docs/model.md from these reports).
evaluate() {  # out-dir, then flags
  local out=$1; shift
  [ -f "$out/report.json" ] || $U evaluate world-subject --out "$out" --model $BASE --base-only --ref-long-side 64,48 "$@"
}
evaluate data/eval/subject-caption-only --caption-only
evaluate data/eval/subject-stage1-uno-captions --lora data/runs/stage1-uno-captions/final/dit_lora.safetensors
evaluate data/eval/subject-stage1 --lora data/runs/stage1/final/dit_lora.safetensors
evaluate data/eval/subject-stage2 --lora data/runs/stage2/final/dit_lora.safetensors
evaluate data/eval/subject-stage2-mixed --lora data/runs/stage2-mixed/final/dit_lora.safetensors
for mode in none height width diagonal; do
  evaluate data/eval/unope-$mode --lora data/runs/unope-$mode/final/dit_lora.safetensors --position-mode $mode
done
# the same cases with captions that name no looks (first 100 of each kind): colour only from the references
evaluate data/eval/lookfree-caption-only --look-free-captions --limit 100 --caption-only
for run in stage1-uno-captions stage1 stage2 stage2-mixed; do
  evaluate data/eval/lookfree-$run --look-free-captions --limit 100 --lora data/runs/$run/final/dit_lora.safetensors
done
for mode in none height width diagonal; do
  evaluate data/eval/lookfree-unope-$mode --look-free-captions --limit 100 \
    --lora data/runs/unope-$mode/final/dit_lora.safetensors --position-mode $mode
done

# 5. Ship Stage II inside the embedded model (loaded by default; --base-only leaves it out).
$U family ship-lora data/runs/stage2/final $BASE --notes data/eval/subject-stage2/report.json
