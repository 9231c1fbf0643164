#!/usr/bin/env bash
# Rebuild the embedded text-to-image base v2 on one CUDA GPU, as it was built: world data, the family with its
# wider VAE, the transformer, its fp16 export (data/gpu/base-v2, which v3 cools down: step 4). Every step
# resumes when interrupted. As run on an H100 with 16 CPU cores: world 8 min, VAE 2.5 min, base 10 min. (v1,
# sized for 2 CPU cores: rebuild_embedded.sh.) UNOFLUX overrides the command (default .venv/bin/unoflux).
set -euo pipefail
cd "$(dirname "$0")/.."
read -r -a U <<< "${UNOFLUX:-.venv/bin/unoflux}"
WORKERS=${WORKERS:-$(nproc)}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
BASE=src/unoflux/embedded/uno-world
stamp() { echo "[$(date +%T)] $*"; }

# 1. The world at 64 px (the first 16000 scenes are v1's: records are seeded by index).
stamp world
build() { "${U[@]}" world build --size 64 --shard-size 1000 --workers "$WORKERS" --quiet "$@"; }
build --out data/world64/scenes      --kind scenes      --count 32000 --seed 1
build --out data/world64/multi       --kind multi       --count 12000 --seed 2
build --out data/world64/two-panel   --kind two-panel   --count 12000 --seed 3
build --out data/world64/pairs       --kind pairs       --count 12000 --seed 4
build --out data/world64/multi-pairs --kind multi-pairs --count 6000  --seed 5

# 2. The family: v1's tokenizers and text encoders, a wider VAE (64 channels at full resolution, 4.0M
#    parameters; v1: 16 channels, 0.97M) trained 4000 steps at batch 64 (v1: 3000 at 8): PSNR 32.8 dB (v1 26.5).
stamp family
"${U[@]}" family build --data data/world64/scenes --out data/family-v2 \
  --vae-channels 64,64,128,128 --vae-steps 4000 --vae-batch 64

# 3. The v2 text-to-image base and its fp16 export, the starting point of v3.
stamp base
"${U[@]}" train --config configs/gpu/base_t2i.yaml --resume
"${U[@]}" family export data/runs/base-v2/final data/gpu/base-v2
stamp done

# 4. v3, the shipped base: v2 cooled down on 2 CPU cores (47 min) on the world of scripts/rebuild_embedded.sh
#    (16000 / 6000 / 6000 images; this script builds a larger world under the same names, so build that one in
#    a checkout of its own, or point the config's data: at it), then exported with its held-out scores:
#      OMP_NUM_THREADS=2 unoflux train --config configs/base_t2i_v3.yaml
#      unoflux family export data/runs/base-v3/final src/unoflux/embedded/uno-world
#      unoflux evaluate world-t2i --out data/eval/base-v3 --model src/unoflux/embedded/uno-world --dtype fp32
#      unoflux family export data/runs/base-v3/final src/unoflux/embedded/uno-world --notes data/eval/base-v3/report.json
#    Its sampling defaults (unoflux.json: guidance 1, true_cfg 3) come from scripts/guidance_sweep.py.
# 5. UNO Stage I -> Stage II from this base and the subject-driven table: scripts/rebuild_uno_stages.sh (2 cores).
