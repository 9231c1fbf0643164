"""Numerical parity of unoflux's USO method with the official USO inference code (bytedance/USO).

What it checks
--------------
Random FLUX-shaped weights with FLUX's head width (one 128-wide head, RoPE axes 16/56/56, a few blocks), a random
rank-8 USO LoRA, a random ``projector.safetensors`` and a SigLIP with so400m's 27 layers, 1152 width and 384 px /
patch 14 (729 tokens; thin MLPs so it runs on a CPU) are written in USO's official layouts: BFL
``flux1.safetensors`` / ``ae.safetensors``, T5 and CLIP folders, XLabs-layout ``dit_lora.safetensors``, the
projector's ``feature_embedder.*`` keys and a full ``SiglipModel`` folder with its image processor. Both
implementations load those same files:

* ours: ``unoflux.load_pipeline(ModelPaths(..., projector=..., siglip=...), device="cpu", dtype="fp32")``;
* the reference: ``uso.flux.model.Flux`` + ``uso.flux.util.set_lora`` + one ``load_state_dict`` of base, LoRA and
  projector (the missing/unexpected key lists must be empty), ``SiglipVisionModel`` + ``SiglipImageProcessor``
  attached as ``model.vision_encoder`` exactly as ``inference.py`` does, driven by ``USOPipeline.__call__`` /
  ``forward`` (built with ``object.__new__`` so nothing is downloaded).

Cases (USO's modes, inference.py's ``--image_paths CONTENT STYLE...``): subject (content only), style (one style,
no content), style + subject with an empty prompt, multi-style (two styles), and content + two styles with an empty
prompt. It compares the final packed latents (relative error, must be < ``--tol``) and the decoded 8-bit images
(max absolute difference, must be <= ``--max-pixel``, default 2). Sanity checks: the style changes the result, the
LoRA changes it, and the reference with the loaded weights differs from one with fresh random weights. It also
counts SigLIP forwards and times both sides: the reference reruns SigLIP and the projector at every step for every
style image, ours once per style image.

What is patched on the reference side (float32 only): the same as ``parity_uno.py`` (torchvision stand-in for
``to_tensor``, bf16 noise cast to float32, reference latents kept float32, posterior mean, ``proj_lora`` rebuilt
at this model's width, ``unpack`` wrapped to capture the final latents).

Run (from the repository root, reference extracted outside the repository)::

    mkdir -p /tmp/uso_ref && git -C /path/to/USO archive b6784d7 | tar -x -C /tmp/uso_ref
    pip install einops            # the reference needs it; unoflux does not
    python scripts/parity_uso.py --uso-repo /tmp/uso_ref

Exits 1 if any check fails.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported: the reference's loop has a bar

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import parity_uno as common  # noqa: E402  (the UNO script's reference-side helpers; USO's code is UNO's plus SigLIP)

SIGLIP_SO400M_SHAPE = dict(  # so400m's layer count, width, heads and token grid; thin MLPs to fit a CPU
    num_hidden_layers=27, hidden_size=1152, num_attention_heads=16, intermediate_size=64, image_size=384, patch_size=14
)


def build_reference_flux(ref, params, paths, lora_rank: int, load: bool = True):
    """The reference transformer as ``load_flow_model_only_lora`` builds it (projector included), float32, on CPU;
    ``load=False`` keeps the (seeded) random initialization: the "were the weights loaded" check."""
    from safetensors.torch import load_file

    model = ref.util.set_lora(ref.Flux(params), lora_rank, device="cpu")
    for block in model.single_blocks:  # 15360 hard-coded = FLUX.1's 3072 + 12288; rebuild at this width
        assert isinstance(block.processor, ref.SingleStreamBlockLoraProcessor)
        block.processor.proj_lora = ref.LoRALinearLayer(
            block.hidden_size + block.mlp_hidden_dim, block.hidden_size, lora_rank
        )
    if load:
        state = load_file(paths.flux)
        for extra in (paths.lora, paths.projector):  # USO loads base, LoRA and projector in one call
            tensors = load_file(extra)
            assert set(tensors).isdisjoint(state)
            state.update(tensors)
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
        if missing or unexpected:
            raise SystemExit(f"reference Flux load: missing {missing}, unexpected {unexpected}")
    return model.float().eval()


class UsoReference:
    """Drives the reference ``USOPipeline.forward`` as inference.py does, capturing the final latents."""

    def __init__(self, ref, model, ae, t5, clip, siglip_dir: str):
        from transformers import SiglipImageProcessor, SiglipVisionModel

        self.ref = ref
        self.pipe = object.__new__(ref.pipeline.USOPipeline)
        self.pipe.model, self.pipe.t5, self.pipe.clip, self.pipe.ae = model, t5, clip, common.ReferenceAE(ae, "keep")
        self.pipe.device, self.pipe.offload, self.pipe.use_fp8, self.pipe.model_type = "cpu", False, False, "flux-dev"
        self.processor = SiglipImageProcessor.from_pretrained(siglip_dir)
        model.vision_encoder = SiglipVisionModel.from_pretrained(siglip_dir).eval()  # as inference.py attaches it
        self.vision = model.vision_encoder
        self._patch()

    captured: list[torch.Tensor] = []

    def _patch(self) -> None:
        mod = self.ref.pipeline
        if getattr(mod, "_parity_patched", False):
            return
        original_noise, original_unpack = mod.get_noise, mod.unpack

        def get_noise(*args, **kwargs):  # the reference's own bf16 draw, cast for the float32 model
            return original_noise(*args, **kwargs).float()

        def unpack(x, height, width):
            UsoReference.captured.append(x.detach().clone())
            return original_unpack(x, height, width)

        mod.get_noise, mod.unpack, mod._parity_patched = get_noise, unpack, True

    def __call__(self, prompt, content, styles, long_side, *, width, height, steps, guidance, seed):
        siglip_inputs = [self.processor(img, return_tensors="pt") for img in styles]  # inference.py's loop
        ref_imgs = [self.ref.pipeline.preprocess_ref(content, long_side)] if content is not None else []
        self.captured.clear()
        image = self.pipe(
            prompt=prompt,
            width=width,
            height=height,
            guidance=guidance,
            num_steps=steps,
            seed=seed,
            ref_imgs=ref_imgs,
            pe="d",
            siglip_inputs=siglip_inputs,
        )
        assert len(self.captured) == 1
        return self.captured.pop().float(), image


def count_forwards(module: torch.nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    return calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uso-repo", type=Path, default=Path("/tmp/uso_ref"), help="bytedance/USO checkout")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--height", type=int, default=48)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--weights-seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--long-side", type=int, default=64, help="content long side (USO's content_ref; 512 there)")
    parser.add_argument("--prompt", default="a red clock on the beach")
    parser.add_argument("--tol", type=float, default=1e-4, help="max relative error of the final latents")
    parser.add_argument("--max-pixel", type=int, default=2, help="max abs difference of the 8-bit images")
    parser.add_argument("--workdir", type=Path, default=None, help="where to write the checkpoints (default: temp)")
    args = parser.parse_args(argv)

    torch.set_num_threads(min(2, torch.get_num_threads()))
    import diffusers
    import transformers

    transformers.logging.set_verbosity_error()
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    from unoflux import ModelPaths, load_pipeline
    from unoflux.checkpoints.files import write_safetensors
    from unoflux.testing import (
        random_uno_lora,
        random_uso_projector,
        save_official_layout,
        save_siglip,
        tiny_components,
        tiny_siglip,
    )

    ref = common.import_reference(args.uso_repo.resolve(), package="uso")

    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="unoflux-uso-parity-")
    root = args.workdir or Path(tmp.name)
    flux_shape = dict(attention_head_dim=128, num_attention_heads=1, axes_dims_rope=[16, 56, 56], num_layers=2,
                      num_single_layers=2)  # fmt: skip
    components = tiny_components(args.weights_seed, **flux_shape)
    transformer = components["transformer"]
    lora = random_uno_lora(transformer, rank=args.lora_rank, std=0.05)
    paths = save_official_layout(components, root, lora=lora)
    siglip = tiny_siglip(args.weights_seed + 1, **SIGLIP_SO400M_SHAPE)
    siglip_dir = save_siglip(siglip, root / "siglip")
    projector = write_safetensors(
        random_uso_projector(siglip, hidden=128, style_tokens=64, std=0.05), root / "projector.safetensors"
    )
    paths = ModelPaths(**{**vars(paths), "projector": str(projector), "siglip": str(siglip_dir)})
    print(f"checkpoints in {root}: flux1, ae, t5/, clip/, dit_lora (rank {args.lora_rank}), projector, siglip/")

    ours = load_pipeline(paths, device="cpu", dtype="fp32", use_environment=False)
    ours_nolora = load_pipeline(
        ModelPaths(**{**vars(paths), "lora": None}), device="cpu", dtype="fp32", use_environment=False
    )
    for p in (ours, ours_nolora):
        p.set_progress_bar_config(disable=True)
    ours_siglip_calls = count_forwards(ours.style_encoder.vision)

    params = common.flux_params(ref, transformer.config)
    ref_model = build_reference_flux(ref, params, paths, args.lora_rank)
    torch.manual_seed(1234)
    ref_random = build_reference_flux(ref, params, paths, args.lora_rank, load=False)
    ref_ae = common.build_reference_ae(ref, paths.ae, components["vae"].config)
    t5 = ref.HFEmbedder(paths.t5, max_length=512, torch_dtype=torch.float32)
    clip = ref.HFEmbedder(paths.clip, max_length=77, torch_dtype=torch.float32)
    run_ref = UsoReference(ref, ref_model, ref_ae, t5, clip, str(siglip_dir))
    run_ref_random = UsoReference(ref, ref_random, ref_ae, t5, clip, str(siglip_dir))
    ref_siglip_calls = count_forwards(run_ref.vision)

    content = common.random_image(80, 64, 1)
    style_a, style_b = common.random_image(96, 64, 3), common.random_image(50, 70, 4)
    cases = [  # name, prompt, content, styles (inference.py: --image_paths CONTENT STYLE...; "" = no content)
        ("subject", args.prompt, content, []),
        ("style", args.prompt, None, [style_a]),
        ("style+subject, empty prompt", "", content, [style_a]),
        ("multi-style", args.prompt, None, [style_a, style_b]),
        ("subject + 2 styles, empty prompt", "", content, [style_a, style_b]),
    ]
    settings = dict(width=args.width, height=args.height, steps=args.steps, guidance=args.guidance, seed=args.seed)
    ours_kw = dict(
        width=args.width,
        height=args.height,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        seed=args.seed,
        reference_long_side=args.long_side,
    )
    print(
        f"\n{args.width}x{args.height}, {args.steps} steps, guidance {args.guidance}, seed {args.seed}, content "
        f"{content.size} at long side {args.long_side}, styles {style_a.size} {style_b.size}, float32, CPU\n"
    )
    header = (
        f"{'case':>33} | {'rel err latents':>15} {'max|px|':>7} | {'style effect':>12} {'LoRA effect':>11} "
        f"{'vs rand ref':>11} | {'SigLIP runs ours/ref':>20} {'time ours/ref':>13}"
    )
    print(header)
    print("-" * len(header))
    failures = []
    for name, prompt, image, styles in cases:
        refs = [image] if image is not None else []
        ours_siglip_calls[0] = ref_siglip_calls[0] = 0
        ours.style_encoder._cache.clear()  # each case pays for its own style tokens
        start = time.perf_counter()
        out = ours(prompt, refs, style_images=styles, output_type="latent", **ours_kw).images.float()
        ours_time, ours_calls = time.perf_counter() - start, ours_siglip_calls[0]
        out_pil = ours(prompt, refs, style_images=styles, output_type="pil", **ours_kw).images[0]
        start = time.perf_counter()
        ref_latents, ref_pil = run_ref(prompt, image, styles, args.long_side, **settings)
        ref_time = time.perf_counter() - start
        ref_calls = ref_siglip_calls[0]
        err, px = common.rel_err(out, ref_latents), common.max_pixel_diff(out_pil, ref_pil)
        if styles:
            plain = ours(prompt, refs, output_type="latent", **ours_kw).images.float()
            style_effect = common.rel_err(plain, out)
            style_col = f"{style_effect:12.2e}"
            if style_effect <= args.tol:
                failures.append(f"{name}: the style has no effect ({style_effect:.1e})")
        else:
            style_col = f"{'-':>12}"
        nolora = ours_nolora(prompt, refs, style_images=styles, output_type="latent", **ours_kw).images.float()
        lora_effect = common.rel_err(nolora, out)
        random_latents, _ = run_ref_random(prompt, image, styles, args.long_side, **settings)
        rand_effect = common.rel_err(random_latents, ref_latents)
        print(
            f"{name:>33} | {err:15.2e} {px:>7} | {style_col} {lora_effect:11.2e} {rand_effect:11.2e} | "
            f"{f'{ours_calls}/{ref_calls}':>20} {f'{ours_time:.1f}/{ref_time:.1f} s':>13}"
        )
        if not err < args.tol:
            failures.append(f"{name}: relative error {err:.2e} >= {args.tol}")
        if px > args.max_pixel:
            failures.append(f"{name}: pixels differ by {px} > {args.max_pixel}")
        if lora_effect <= args.tol:
            failures.append(f"{name}: the LoRA has no effect ({lora_effect:.1e})")
        if rand_effect <= args.tol:
            failures.append(f"{name}: loaded reference equals a random one ({rand_effect:.1e})")
    print(
        "\nrel err latents: ||ours - ref|| / ||ref|| on the final packed latents (reference in float32);"
        "\nmax|px|: max abs difference of the decoded 8-bit images;"
        "\nstyle effect: ours with vs without the style images;"
        "\nLoRA effect: ours with vs without the LoRA; vs rand ref: reference with loaded vs fresh random weights;"
        "\nSigLIP runs: vision-tower forwards in one generation; time: one generation's wall time."
    )
    if tmp is not None:
        tmp.cleanup()
    if failures:
        print("\nFAILED:\n  " + "\n  ".join(failures))
        return 1
    print(f"\nPASSED: every relative error < {args.tol}, every pixel within {args.max_pixel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
