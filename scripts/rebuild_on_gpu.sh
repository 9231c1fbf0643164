#!/usr/bin/env bash
# Rebuild the shipped embedded model (v4) on one CUDA GPU, as it was built: world data, the family with its wider
# VAE, the v2 transformer, its v3 cool-down, the v4 continuation at batch 512, UNO Stage I -> II, the fp16 export
# with the LoRA shipped in src/unoflux/embedded/uno-world. Every step resumes when interrupted (world shards,
# training checkpoints) and a finished base export is not redone. As run on an H100 with 16 CPU cores: v2's
# world 8 min, VAE 2.5 min, base v2 10 min; v3 ran on 2 CPU cores (47 min); v3's world 2.8 min, base v4 5 min,
# pairs 1.5 min, Stage I and II 2.5 min each. (v1, sized for 2 CPU cores: rebuild_embedded.sh; the stages on 2
# CPU cores: rebuild_uno_stages.sh.) UNOFLUX overrides the command (default .venv/bin/unoflux).
set -euo pipefail
cd "$(dirname "$0")/.."
read -r -a U <<< "${UNOFLUX:-.venv/bin/unoflux}"
WORKERS=${WORKERS:-$(nproc)}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
BASE=src/unoflux/embedded/uno-world
stamp() { echo "[$(date +%T)] $*"; }
build() { "${U[@]}" world build --size 64 --shard-size 1000 --workers "$WORKERS" --quiet "$@"; }

# 1. The world at 64 px of v3, v4 and the stages (that of rebuild_embedded.sh). Records are seeded by index, so
#    it is the first half of v2's larger one (data/world64-v2, step 2).
stamp world
build --out data/world64/scenes      --kind scenes      --count 16000 --seed 1
build --out data/world64/multi       --kind multi       --count 6000  --seed 2
build --out data/world64/two-panel   --kind two-panel   --count 6000  --seed 3
build --out data/world64/pairs       --kind pairs       --count 12000 --seed 4
build --out data/world64/multi-pairs --kind multi-pairs --count 6000  --seed 5

# 2. v2: v1's tokenizers and text encoders, a wider VAE (64 channels at full resolution, 4.0M parameters; v1: 16
#    channels, 0.97M) trained 4000 steps at batch 64 (v1: 3000 at 8): PSNR 32.8 dB (v1 26.5); then the
#    transformer from scratch, 4000 steps of 128 along a 12000-step cosine (the session's GPU time ran out).
if [ ! -f data/gpu/base-v2/model_index.json ]; then
  build --out data/world64-v2/scenes    --kind scenes    --count 32000 --seed 1
  build --out data/world64-v2/multi     --kind multi     --count 12000 --seed 2
  build --out data/world64-v2/two-panel --kind two-panel --count 12000 --seed 3
  stamp family
  "${U[@]}" family build --data data/world64-v2/scenes --out data/family-v2 \
    --vae-channels 64,64,128,128 --vae-steps 4000 --vae-batch 64
  stamp base-v2
  "${U[@]}" train --config configs/gpu/base_t2i.yaml --resume
  "${U[@]}" family export data/runs/base-v2/final data/gpu/base-v2
fi

# 3. v3: v2 cooled down, 4500 steps of 32 with the cosine to zero (it ran on 2 CPU cores; the same config here).
#    Sampling defaults (unoflux.json: guidance 1, true_cfg 3) from scripts/guidance_sweep.py (docs/model.md).
if [ ! -f data/gpu/base-v3/model_index.json ]; then
  stamp base-v3
  "${U[@]}" train --config configs/base_t2i_v3.yaml --resume
  "${U[@]}" family export data/runs/base-v3/final data/gpu/base-v3
fi

# 4. v4, the shipped base: v3 trained on at batch 512 with the encoding cache, a fresh cosine to zero over
#    3100 steps (what one 10-minute device call allowed), exported in fp16 as the embedded base.
stamp base-v4
"${U[@]}" train --config configs/gpu/base_t2i_v4.yaml --resume
"${U[@]}" family export data/runs/base-v4/final data/gpu/base-v4
"${U[@]}" family export data/gpu/base-v4 $BASE

# 5. UNO Stage I -> Stage II on it (the CPU recipe at 4x the batch, for the steps a 2.3-minute budget allowed
#    each), Stage II shipped inside the model folder.
stamp stages
"${U[@]}" train --config configs/gpu/stage1_world.yaml --resume
"${U[@]}" train --config configs/gpu/stage2_world.yaml --resume
stamp trained

# 6. Held-out scores (fp32; they ran on 2 CPU cores, 25 min) and the ship: the base exported again with its
#    text-to-image scores, Stage II's LoRA shipped with its subject-driven scores.
scripts/evaluate_embedded.sh data/gpu/base-v4 data/runs/gpu-stage1 data/runs/gpu-stage2 data/eval/v4
"${U[@]}" family export data/gpu/base-v4 $BASE --notes data/eval/v4/t2i/report.json
"${U[@]}" family ship-lora data/runs/gpu-stage2/final $BASE --notes data/eval/v4/subject-stage2/report.json
stamp done
