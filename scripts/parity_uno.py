"""Numerical parity of unoflux with the official UNO inference code (bytedance/UNO).

What it checks
--------------
Tiny random FLUX-shaped weights (``unoflux.testing.tiny_components``) plus a random UNO LoRA are written
in the official layouts (BFL ``flux1.safetensors`` / ``ae.safetensors``, transformers T5 and CLIP
folders, XLabs-layout ``dit_lora.safetensors``). Both implementations load those same files:

* ours: ``unoflux.load_pipeline(paths, device="cpu", dtype="fp32")``;
* the reference: ``uno.flux.model.Flux`` + ``uno.flux.util.set_lora`` + ``load_state_dict`` (the
  missing/unexpected key lists must be empty), ``uno.flux.modules.autoencoder.AutoEncoder`` and
  ``HFEmbedder`` for T5/CLIP, everything in float32, driven by the reference's own
  ``UNOPipeline.__call__``/``forward`` (built with ``object.__new__`` so nothing is downloaded).

For 0, 1 and 2 reference images (different sizes and aspects) and every position mode
(``diagonal/height/width/none`` <-> reference ``pe`` ``d/h/w/o``) with the same prompt, seed, size, steps
and guidance, it compares the final packed latents (relative error ``||ours - ref|| / ||ref||``, must be
< ``--tol``, default 1e-4) and the decoded images (max absolute pixel difference, reported).

Sanity checks, so the parity cannot pass trivially: the LoRA changes the result (ours with vs without
the LoRA), the position mode changes the result, and the reference with the loaded weights differs from
a reference model with fresh random weights.

What is patched on the reference side (float32 only; see the ``patch_reference`` docstring)
-------------------------------------------------------------------------------------------
* ``torchvision`` (imported only for ``to_tensor``) is replaced by a numpy stand-in;
* ``get_noise`` keeps the reference's own bf16 draw on a seeded CPU generator, then casts to float32
  (our default draws the same bf16 noise and casts it to the compute dtype);
* the reference casts reference latents to bf16 after ``ae.encode`` (its model runs in bf16); with a
  float32 model that cast would be a dtype error, so it is made a no-op (an extra column shows the
  error if it is kept as a bf16 round trip instead);
* the AE posterior returns its mean (``ae.reg.sample = False``): the reference samples it with the
  unseeded global RNG, we use the mean;
* ``SingleStreamBlockLoraProcessor.proj_lora`` hard-codes 15360 inputs (= 3072 + 12288, FLUX.1's
  hidden + MLP width); for the tiny model it is rebuilt with hidden + MLP inputs (32 + 128);
* ``unpack`` is wrapped to capture the final latents before decoding.

Run (from the repository root, reference extracted outside the repository)::

    mkdir -p /tmp/uno_ref && git -C /path/to/UNO archive d305981 | tar -x -C /tmp/uno_ref
    pip install einops            # the reference needs it; unoflux does not
    python scripts/parity_uno.py --uno-repo /tmp/uno_ref

Exits 1 if any relative error is >= ``--tol`` or a sanity check fails.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported: the reference's loop has a bar

import numpy as np
import torch
from PIL import Image

PE = {"diagonal": "d", "height": "h", "width": "w", "none": "o"}


# --------------------------------------------------------------------------------- reference import
# (the reference-side helpers live in the package, shared with `unoflux bench --against-reference`)
from unoflux.uno_reference import (  # noqa: E402, F401  (ReferenceAE: parity_uso.py reads it from here)
    ReferenceAE,
    ReferenceRunner,
    build_reference_ae,
    build_reference_flux,
    flux_params,
    import_reference,
)


# ---------------------------------------------------------------------------------------- helpers
def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def max_pixel_diff(a: Image.Image, b: Image.Image) -> int:
    x, y = np.asarray(a, dtype=np.int16), np.asarray(b, dtype=np.int16)
    if x.shape != y.shape:
        return 10**6
    return int(np.abs(x - y).max())


def random_image(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uno-repo", type=Path, default=Path("/tmp/uno_ref"), help="bytedance/UNO checkout")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--height", type=int, default=48)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--weights-seed", type=int, default=0, help="seed of the tiny random weights")
    parser.add_argument("--lora-rank", type=int, default=4)
    parser.add_argument("--lora-std", type=float, default=0.2, help="std of the random LoRA weights")
    parser.add_argument("--long-side", type=int, default=64, help="reference long side (both implementations)")
    parser.add_argument("--prompt", default="a red clock on the beach")
    parser.add_argument("--tol", type=float, default=1e-4, help="max relative error of the final latents")
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
    from unoflux.testing import random_uno_lora, save_official_layout, tiny_components

    ref = import_reference(args.uno_repo.resolve())

    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="unoflux-parity-")
    root = args.workdir or Path(tmp.name)
    components = tiny_components(args.weights_seed)
    lora = random_uno_lora(components["transformer"], rank=args.lora_rank, std=args.lora_std)
    paths = save_official_layout(components, root, lora=lora)
    tcfg, vcfg = components["transformer"].config, components["vae"].config
    print(f"checkpoints in {root}: {Path(paths.flux).name}, {Path(paths.ae).name}, t5/, clip/, {Path(paths.lora).name}")

    # ours
    ours = load_pipeline(paths, device="cpu", dtype="fp32", use_environment=False)
    ours_nolora = load_pipeline(
        ModelPaths(flux=paths.flux, ae=paths.ae, t5=paths.t5, clip=paths.clip),
        device="cpu",
        dtype="fp32",
        use_environment=False,
    )
    for p in (ours, ours_nolora):
        p.set_progress_bar_config(disable=True)

    # reference
    params = flux_params(ref, tcfg)
    ref_model = build_reference_flux(ref, params, paths.flux, paths.lora, args.lora_rank)
    torch.manual_seed(1234)
    ref_random = build_reference_flux(ref, params, None, paths.lora, args.lora_rank)
    ref_ae = build_reference_ae(ref, paths.ae, vcfg)
    t5 = ref.HFEmbedder(paths.t5, max_length=512, torch_dtype=torch.float32)
    clip = ref.HFEmbedder(paths.clip, max_length=77, torch_dtype=torch.float32)
    assert clip.is_clip and not t5.is_clip, "HFEmbedder tells CLIP apart by 'clip' in the folder path"
    run_ref = ReferenceRunner(ref, ref_model, ref_ae, t5, clip)
    run_ref_random = ReferenceRunner(ref, ref_random, ref_ae, t5, clip)

    images = [random_image(80, 64, 1), random_image(48, 96, 2)]
    common = dict(width=args.width, height=args.height, steps=args.steps, guidance=args.guidance, seed=args.seed)
    ours_kw = dict(
        width=args.width,
        height=args.height,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        seed=args.seed,
        reference_long_side=args.long_side,
    )

    print(
        f"\nprompt {args.prompt!r}, {args.width}x{args.height}, {args.steps} steps, guidance {args.guidance}, "
        f"seed {args.seed}, references {[im.size for im in images]} at long side {args.long_side}, float32, CPU\n"
    )
    header = (
        f"{'refs':>4} {'mode':>8} {'pe':>2} {'img tok':>7} | {'rel err latents':>15} {'max|px|':>7} | "
        f"{'ref bf16-refs':>13} | {'LoRA effect':>11} {'pe effect':>9} {'vs rand ref':>11}"
    )
    print(header)
    print("-" * len(header))
    failures = []
    for n_refs in (0, 1, 2):
        refs = images[:n_refs]
        diagonal_latents = None
        for mode, pe in PE.items():
            out = ours(args.prompt, refs, position_mode=mode, output_type="latent", **ours_kw).images.float()
            out_pil = ours(args.prompt, refs, position_mode=mode, output_type="pil", **ours_kw).images[0]
            ref_latents, ref_pil = run_ref(args.prompt, refs, args.long_side, pe, **common)
            err, px = rel_err(out, ref_latents), max_pixel_diff(out_pil, ref_pil)
            if n_refs:
                rounded, _ = run_ref(args.prompt, refs, args.long_side, pe, ref_latents="round", **common)
                bf16_col = f"{rel_err(out, rounded):13.2e}"
            else:
                bf16_col = f"{'-':>13}"
            nolora = ours_nolora(args.prompt, refs, position_mode=mode, output_type="latent", **ours_kw).images
            lora_effect = rel_err(nolora.float(), out)
            random_latents, _ = run_ref_random(args.prompt, refs, args.long_side, pe, **common)
            rand_effect = rel_err(random_latents, ref_latents)
            if mode == "diagonal":
                diagonal_latents = out
                pe_col = f"{'-':>9}"
            else:
                pe_effect = rel_err(out, diagonal_latents)
                pe_col = f"{pe_effect:9.2e}"
                # the 'none'/'height'/'width' modes must move references away from diagonal's ids
                if n_refs and pe_effect <= args.tol:
                    failures.append(f"{n_refs} refs {mode}: position mode has no effect ({pe_effect:.1e})")
            tokens = out.shape[1] + sum(
                (w // 16) * (h // 16) for w, h in (ref.pipeline.preprocess_ref(im, args.long_side).size for im in refs)
            )
            print(
                f"{n_refs:>4} {mode:>8} {pe:>2} {tokens:>7} | {err:15.2e} {px:>7} | {bf16_col} | "
                f"{lora_effect:11.2e} {pe_col} {rand_effect:11.2e}"
            )
            if not err < args.tol:
                failures.append(f"{n_refs} refs {mode}: relative error {err:.2e} >= {args.tol}")
            if lora_effect <= args.tol:
                failures.append(f"{n_refs} refs {mode}: the LoRA has no effect ({lora_effect:.1e})")
            if rand_effect <= args.tol:
                failures.append(f"{n_refs} refs {mode}: loaded reference equals a random one ({rand_effect:.1e})")
    print(
        "\nrel err latents: ||ours - ref|| / ||ref|| on the final packed latents (reference in float32);"
        "\nmax|px|: max abs difference of the decoded 8-bit images;"
        "\nref bf16-refs: same, with the reference's bf16 cast of reference latents kept as a bf16 round trip;"
        "\nLoRA effect: ours with vs without the LoRA; pe effect: this mode vs diagonal (ours);"
        "\n  (an effect > tol means the parity check would catch an implementation that ignored it);"
        "\nvs rand ref: reference with loaded weights vs reference with fresh random weights."
    )
    if tmp is not None:
        tmp.cleanup()
    if failures:
        print("\nFAILED:\n  " + "\n  ".join(failures))
        return 1
    print(f"\nPASSED: every relative error < {args.tol}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
