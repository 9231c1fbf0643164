"""Extra peak memory of DreamO's routing constraint in one block, forward + backward, at FLUX.1-dev's shapes (24 heads
of 128; a 1024 px target = 64 x 64 tokens, two 512 px references = 32 x 32 tokens each, 512 T5 tokens, batch 1):
computed as the trainer does (the mean reference query first, train/routing.py) or by materialising each
reference's (heads x reference tokens x target tokens) logit map first. The block's q and k (what the hooks capture,
activations the model holds anyway) are made before the measurement; each mode runs in its own process and reports
its peak resident memory (VmHWM, reset after the setup) above the memory before it.

    .venv/bin/python scripts/probes/routing_memory.py [--heads 24 --target 64 --ref 32]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys

MODES = ("mean-query", "full-maps")


def _status(field: str) -> float:
    """A /proc/self/status field in MiB."""
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field)) / 1024


def run(mode: str, args) -> dict:
    import torch
    from diffusers.models.embeddings import FluxPosEmbed

    from unoflux.conditioning import sequence_position_ids
    from unoflux.train.routing import RoutingCapture, _rotated

    torch.manual_seed(0)
    n_target, counts, text = args.target**2, [args.ref**2] * 2, 512
    tokens = n_target + sum(counts)
    ids = torch.cat([torch.zeros(text, 3), sequence_position_ids((args.target,) * 2, [(args.ref,) * 2] * 2)])
    rope = FluxPosEmbed(theta=10000, axes_dim=[16, 56, 56])(ids)
    q = torch.randn(1, tokens, args.heads, 128, requires_grad=True)
    k = torch.randn(1, tokens, args.heads, 128, requires_grad=True)
    capture = RoutingCapture.__new__(RoutingCapture)  # filled by hand: what the hooks would have captured
    capture.blocks, capture.queries, capture.keys, capture.rope = [0], {0: q}, {0: k}, rope
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # resets VmHWM to the current RSS
    before = _status("VmRSS")
    if mode == "mean-query":
        loss = capture.response_maps(n_target, counts).square().sum()
    else:  # the same maps, from every (reference token, target token) logit
        keys = _rotated(k, 0, n_target, rope).float()
        loss, start = 0.0, n_target
        for count in counts:
            queries = _rotated(q, start, start + count, rope).float()
            logits = torch.einsum("blhd,bnhd->bhln", queries, keys) / math.sqrt(keys.shape[-1])
            loss = loss + logits.mean(dim=(1, 2)).square().sum()
            start += count
    loss.backward()
    return {"mode": mode, "extra_peak_mib": round(_status("VmHWM") - before, 1), "q_or_k_mib": q.numel() * 4 / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", type=int, default=24)
    parser.add_argument("--target", type=int, default=64, help="target tokens per side")
    parser.add_argument("--ref", type=int, default=32, help="tokens per side of each of the two references")
    parser.add_argument("--mode", choices=MODES, help="(internal) run one mode in this process")
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(run(args.mode, args)))
        return
    for mode in MODES:
        command = [sys.executable, __file__, *sys.argv[1:], "--mode", mode]
        out = subprocess.run(command, check=True, capture_output=True, text=True)
        print(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
