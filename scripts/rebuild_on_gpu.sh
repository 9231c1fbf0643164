#!/usr/bin/env bash
# Rebuild the shipped embedded model (v5) on one CUDA GPU, as it was built: world data, the family with its wider
# VAE, the v2 transformer, its v3 cool-down, the v4 continuation at batch 512 and v4's UNO stages (64 px); then v5:
# the 128 px world, v4's VAE decoder tuned at 128 px, the transformer moved to 128 px and cooled down, UNO Stage
# I -> II at 128 px, the decoder tuned again on whole two-panel images, the held-out scores and the fp16 export
# with the LoRA shipped in src/unoflux/embedded/uno-world.
# Every step resumes when interrupted (world shards, training checkpoints) and a finished export is not redone.
# As run on an H100 with 16 CPU cores: v2's world 8 min, VAE 2.5 min, base v2 10 min; v3 ran on 2 CPU cores (47
# min); v3's world 2.8 min, base v4 5 min, pairs 1.5 min, Stage I and II 2.5 min each; v5's world 2.5 min with its
# VAE tuning beside it (1.5 min), v5a 8 min, v5 3 min, Stage I and II 2.3 min each. (v1, sized for 2 CPU cores:
# rebuild_embedded.sh; the stages on 2 CPU cores: rebuild_uno_stages.sh.) UNOFLUX overrides the command (default
# .venv/bin/unoflux).
set -euo pipefail
cd "$(dirname "$0")/.."
read -r -a U <<< "${UNOFLUX:-.venv/bin/unoflux}"
WORKERS=${WORKERS:-$(nproc)}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
BASE=src/unoflux/embedded/uno-world
stamp() { echo "[$(date +%T)] $*"; }
build() { "${U[@]}" world build --size 64 --shard-size 1000 --workers "$WORKERS" --quiet "$@"; }
build128() { "${U[@]}" world build --size 128 --shard-size 1000 --workers "$WORKERS" --quiet "$@"; }  # a later --shard-size wins
export TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1  # v5 ran with TF32 matmuls

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
#    Sampling defaults (unoflux.json: guidance 1, true_cfg 3) from scripts/probes/guidance_sweep.py (docs/model.md).
if [ ! -f data/gpu/base-v3/model_index.json ]; then
  stamp base-v3
  "${U[@]}" train --config configs/base_t2i_v3.yaml --resume
  "${U[@]}" family export data/runs/base-v3/final data/gpu/base-v3
fi

# 4. v4: v3 trained on at batch 512 with the encoding cache, a fresh cosine to zero over 3100 steps (what one
#    10-minute device call allowed), exported in fp16.
if [ ! -f data/gpu/base-v4/model_index.json ]; then
  stamp base-v4
  "${U[@]}" train --config configs/gpu/base_t2i_v4.yaml --resume
  "${U[@]}" family export data/runs/base-v4/final data/gpu/base-v4
fi

# 5. v4's UNO Stage I -> Stage II (64 px; the CPU recipe at 4x the batch, for the steps a 2.3-minute budget
#    allowed each) and its held-out scores (2 CPU cores, 25 min): docs/model.md's v4 tables.
stamp stages-v4
"${U[@]}" train --config configs/gpu/stage1_world.yaml --resume
"${U[@]}" train --config configs/gpu/stage2_world.yaml --resume
scripts/evaluate_embedded.sh data/gpu/base-v4 data/runs/gpu-stage1 data/runs/gpu-stage2 data/eval/v4

# 6. v5's world at 128 px (the same records as v3's, multi-subject and two-panel scenes weighted up) and the
#    family moved to 128 px: v4 with its VAE decoder tuned there (encoder frozen: v4's latent space stays).
stamp world-128
build128 --out data/world128/scenes      --kind scenes      --count 16000 --seed 1
build128 --out data/world128/multi       --kind multi       --count 10000 --seed 2
build128 --out data/world128/two-panel   --kind two-panel   --count 10000 --seed 3
build128 --out data/world128/pairs       --kind pairs       --count 12000 --seed 4
build128 --out data/world128/multi-pairs --kind multi-pairs --count 6000  --seed 5
[ -f data/gpu/family-v5/model_index.json ] || "${U[@]}" family tune-vae data/gpu/base-v4 data/gpu/family-v5 \
  --data data/world128/scenes --size 128 --steps 3000 --batch 32

# 7. v5: v4's transformer trained on at 128 px (v5a: constant learning rate, 4096 steps of 512, where the first
#    device call's time ran out), then cooled down (1300 steps, a fresh cosine to zero); fp16 exports.
if [ ! -f data/gpu/base-v5/model_index.json ]; then
  stamp base-v5
  [ -f data/gpu/base-v5a/model_index.json ] || { "${U[@]}" train --config configs/gpu/base_t2i_v5a.yaml --resume
                                                 "${U[@]}" family export data/runs/base-v5a/final data/gpu/base-v5a; }
  "${U[@]}" train --config configs/gpu/base_t2i_v5.yaml --resume
  "${U[@]}" family export data/runs/base-v5/final data/gpu/base-v5
fi

# 8. v5's UNO Stage I -> Stage II at 128 px (references at 128 / 80 px: UNO's 512 / 320 scaled to the world).
stamp stages-v5
"${U[@]}" train --config configs/gpu/stage1_world128.yaml --resume
"${U[@]}" train --config configs/gpu/stage2_world128.yaml --resume
stamp trained

# 9. The decoder tuned again with whole two-panel images beside scenes (it ran on 2 CPU cores, 20 min, on a
#    small 128 px world of its own): a VAE that never saw a two-panel image whole decodes them badly.
build128 --out data/world128-local/scenes      --kind scenes    --count 3000 --seed 11 --shard-size 500
build128 --out data/world128-local/two-panel   --kind two-panel --count 300  --seed 3  --shard-size 300
build128 --out data/world128-local/two-panel-b --kind two-panel --count 1500 --seed 13 --shard-size 500
[ -f data/gpu/base-v5b/model_index.json ] || "${U[@]}" family tune-vae data/gpu/base-v5 data/gpu/base-v5b --size 128 \
  --steps 400 --batch 4 --lr 1e-4 --measure-images 96 \
  --data data/world128-local/scenes data/world128-local/two-panel data/world128-local/two-panel-b

# 10. Held-out scores (fp32; they ran on 2 CPU cores, 50 min) and the ship: the base exported with its
#     text-to-image scores, Stage II's LoRA shipped with its subject-driven scores.
scripts/evaluate_embedded.sh data/gpu/base-v5b data/runs/gpu128-stage1 data/runs/gpu128-stage2 data/eval/v5b
"${U[@]}" family export data/gpu/base-v5b $BASE --notes data/eval/v5b/t2i/report.json
"${U[@]}" family ship-lora data/runs/gpu128-stage2/final $BASE --notes data/eval/v5b/subject-stage2/report.json
# 11. MagCache's ratios for the shipped model (--magcache; added after v5 shipped, run on one CPU core, 1 min).
.venv/bin/python scripts/calibrate_magcache.py --model $BASE --calls 12 --threads 1 --write
stamp done
