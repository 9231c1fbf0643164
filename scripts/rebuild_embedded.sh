#!/usr/bin/env bash
# Rebuild the embedded text-to-image base (src/unoflux/embedded/uno-world) from nothing, as it was built.
# Every step resumes if interrupted (world shards, VAE state, training checkpoints). About 1h45 on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
U=".venv/bin/unoflux"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}   # one thread per process: oversubscribing 2 cores is 10x slower

# 1. The synthetic world at 64 px: single-subject scenes, 2-3-subject scenes, two-panel images.
$U world build --out data/world64/scenes    --kind scenes    --count 16000 --size 64 --seed 1 --shard-size 1000 --quiet
$U world build --out data/world64/multi     --kind multi     --count 6000  --size 64 --seed 2 --shard-size 1000 --quiet
$U world build --out data/world64/two-panel --kind two-panel --count 6000  --size 64 --seed 3 --shard-size 1000 --quiet

# 2. The model family: tokenizers fitted to world captions, frozen tiny T5/CLIP, the VAE trained on
#    the scenes (PSNR in data/family/family.json), a freshly initialised FLUX transformer.
$U family build --data data/world64/scenes --out data/family

# 3. Text-to-image training of the transformer (42 + 17 min, within the 60-minute stage budget), then
#    held-out evaluation. The second run continues from the first's EMA weights at a lower learning rate.
OMP_NUM_THREADS=2 $U train --config configs/base_t2i.yaml --resume
OMP_NUM_THREADS=2 $U train --config configs/base_t2i_continue.yaml --resume
OMP_NUM_THREADS=2 $U evaluate world-t2i --model data/runs/base2/final --out data/eval/base2

# 4. Ship it in fp16 with its config, commands and scores.
$U family export data/runs/base2/final src/unoflux/embedded/uno-world --notes data/eval/base2/report.json
