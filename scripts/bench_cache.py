"""Training step time with and without the encoding cache (``cache_encodings``), side by side in one run, on
the embedded model's Stage I recipe (configs/stage1_world.yaml: 64 px world pairs, batch 16, LoRA rank 128)
over a small freshly built pairs set, one thread. Prints ms per step, the ratio, and the cache's one-off
build time per image.

    .venv/bin/python scripts/bench_cache.py [--steps 30] [--records 512] [--config configs/stage1_world.yaml]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from unoflux.train.trainer import Trainer


def ms_per_step(trainer: Trainer, steps: int, warmup: int = 3) -> float:
    batches = iter(trainer.data)
    for _ in range(warmup):  # first steps allocate; not timed
        trainer.train_step(batches)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(batches)
    return (time.perf_counter() - start) / steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/stage1_world.yaml")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--records", type=int, default=512, help="pairs built for the benchmark")
    args = parser.parse_args()
    import torch  # after parsing: --help stays fast

    from unoflux.train.config import TrainConfig
    from unoflux.train.trainer import Trainer
    from unoflux.world.build import BuildConfig, build_dataset

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "pairs"
        build_dataset(data, BuildConfig(kind="pairs", count=args.records, size=64, seed=4), progress=False)
        base = TrainConfig.from_yaml(args.config).replace(
            data=[str(data)], output_dir=str(Path(tmp) / "run"), validate_every=0, checkpoint_every=0, num_workers=0
        )
        plain = ms_per_step(Trainer(base.replace(cache_encodings=False), []), args.steps)
        start = time.perf_counter()
        cached_trainer = Trainer(base.replace(cache_encodings=True), [])
        build_s = time.perf_counter() - start
        cached = ms_per_step(cached_trainer, args.steps)
    print(f"{args.config}: batch {base.batch_size}, {args.steps} steps, 1 thread")
    print(f"  encoded every step: {plain:7.1f} ms/step")
    print(f"  cached:             {cached:7.1f} ms/step   ({plain / cached:.2f}x faster)")
    print(
        f"  cache build (incl. model load): {build_s:.1f} s for {args.records} pairs "
        f"({build_s / args.records * 1000:.1f} ms per pair)"
    )


if __name__ == "__main__":
    main()
