"""Peak memory and time of decoding one image with FLUX's VAE (its architecture, random weights), with and
without ``--vae-tiling`` (diffusers' tiled decode, 1024 px tiles), each in a fresh process so the peaks are
each run's own (VmHWM). Prints one row per size and mode, and the memory ratio.

    .venv/bin/python scripts/bench_vae_tiling.py [--sizes 1536 2048] [--dtype fp32]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from unoflux.bench import peak_rss  # before diffusers: unoflux quiets torchao's CPU-only import noise

# black-forest-labs/FLUX.1-dev vae/config.json (the architecture; the weights here are random)
FLUX_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512],
    layers_per_block=2,
    latent_channels=16,
    norm_num_groups=32,
    sample_size=1024,
    use_quant_conv=False,
    use_post_quant_conv=False,
    scaling_factor=0.3611,
    shift_factor=0.1159,
)


def measure(size: int, tiled: bool, dtype: str) -> dict:
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    torch.set_default_dtype(getattr(torch, {"fp32": "float32", "bf16": "bfloat16"}[dtype]))
    vae = AutoencoderKL(**FLUX_VAE).eval()
    if tiled:
        vae.enable_tiling()
    latents = torch.randn(1, 16, size // 8, size // 8, dtype=vae.dtype)
    before = peak_rss()
    start = time.perf_counter()
    with torch.no_grad():
        vae.decode(latents)
    return dict(size=size, tiled=tiled, seconds=time.perf_counter() - start, peak_bytes=peak_rss(), weights_peak=before)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1536, 2048])
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--worker", nargs=2, metavar=("SIZE", "TILED"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(measure(int(args.worker[0]), args.worker[1] == "1", args.dtype)))
        return
    print(f"FLUX VAE decode, random weights, {args.dtype} on CPU, one image; peak RSS of a fresh process each")
    print(f"{'size':>6} {'mode':>8} {'peak':>10} {'time':>8}")
    for size in args.sizes:
        rows = {}
        for tiled in (False, True):
            done = subprocess.run(
                [sys.executable, __file__, "--dtype", args.dtype, "--worker", str(size), str(int(tiled))],
                capture_output=True,
                text=True,
                check=True,
            )
            rows[tiled] = row = json.loads(done.stdout.strip().splitlines()[-1])
            mode = "tiled" if tiled else "whole"
            print(f"{size:>6} {mode:>8} {row['peak_bytes'] / 2**30:>7.2f} GiB {row['seconds']:>6.1f} s")
        print(f"{size:>6} {'ratio':>8} {rows[True]['peak_bytes'] / rows[False]['peak_bytes']:>9.2f}x")


if __name__ == "__main__":
    main()
