"""What computing USO's style tokens once per generation saves, at so400m's real size.

USO's reference code runs SigLIP-so400m (all 27 layers) and the projector inside the transformer's forward, at every
denoising step, for every style image; unoflux runs them once per style image per call (and keeps the tokens of
recent images across calls). This script builds a SigLIP vision tower with so400m's exact configuration (random
weights: the cost does not depend on them) and USO's projector at FLUX's width 3072, and times side by side in one
run, for ``--styles`` style images and ``--steps`` steps:

* the reference's pattern: ``steps x styles`` SigLIP + projector forwards;
* ours: ``styles`` forwards (``unoflux.methods.uso.StyleEncoder.encode``, cache cleared first).

It prints both times, their ratio and the seconds saved per generation. The transformer's own step time is not
part of it (FLUX.1-dev does not fit this machine); add your measured step time to judge the share.

Run: ``python scripts/bench_style_tokens.py --steps 25 --styles 1 --device cuda`` (default: CPU, 3 steps).
"""

from __future__ import annotations

import argparse
import time

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="denoising steps (USO's default is 25)")
    parser.add_argument("--styles", type=int, default=1, help="style images per generation")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from transformers import SiglipVisionConfig, SiglipVisionModel

    from unoflux.checkpoints.uso import siglip_processor_class
    from unoflux.methods.uso import StyleEncoder, StyleProjector

    device = torch.device(args.device)
    config = SiglipVisionConfig(  # google/siglip-so400m-patch14-384's vision tower
        hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16, image_size=384,
        patch_size=14,
    )  # fmt: skip
    vision = SiglipVisionModel(config).eval().requires_grad_(False).to(device)
    projector = StyleProjector(hidden=3072).eval().requires_grad_(False).to(device)
    processor = siglip_processor_class()(size={"height": 384, "width": 384})
    encoder = StyleEncoder(processor=processor, vision=vision, projector=projector)
    from PIL import Image

    images = [Image.new("RGB", (512 + 16 * k, 384), (40 * k, 90, 200)) for k in range(args.styles)]

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    with torch.no_grad():
        encoder.encode(images[0], device, torch.float32)  # warm-up
        encoder._cache.clear()
        sync()
        start = time.perf_counter()
        for _ in range(args.steps):  # the reference: inside Flux.forward, every step, every style image
            for image in images:
                pixels = processor(images=image, return_tensors="pt")["pixel_values"].to(device)
                projector(vision(pixel_values=pixels, output_hidden_states=True).hidden_states)
        sync()
        reference = time.perf_counter() - start
        start = time.perf_counter()
        for image in images:  # ours: once per style image per call
            encoder.encode(image, device, torch.float32)
        sync()
        ours = time.perf_counter() - start

    print(f"SigLIP-so400m + projector, {args.styles} style image(s), {args.steps} steps, {args.device}, float32")
    print(f"  reference pattern (every step): {reference:8.2f} s")
    print(f"  unoflux (once per call):        {ours:8.2f} s")
    print(f"  ratio {reference / ours:.1f}x; saved per generation: {reference - ours:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
