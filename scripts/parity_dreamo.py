"""Numerical parity of unoflux's DreamO method with the official DreamO pipeline (bytedance/DreamO).

What it checks
--------------
Random FLUX-shaped weights with FLUX's head width (one 128-wide head, RoPE axes 16/56/56, 2 + 2 blocks) are written
in the official layouts (BFL ``flux1.safetensors`` / ``ae.safetensors``, T5 and CLIP folders) beside a folder laid
out as ``ByteDance/DreamO`` publishes it (``dreamo.safetensors`` with its T5 / task / index embeddings in DreamO's
LoRA layout, ``dreamo_cfg_distill.safetensors``, ``v1.1/dreamo_sft_lora.safetensors`` and
``v1.1/dreamo_dpo_lora.safetensors``) and a FLUX.1-Turbo-Alpha-format LoRA (``unoflux.testing.save_dreamo_layout``).

* ours: ``unoflux.load_pipeline(ModelPaths(..., dreamo=DIR, turbo=FILE), device="cpu", dtype="fp32")``, adapters
  kept (and, as a second column, fused);
* the reference: ``DreamOPipeline`` built from the same files, loaded by its own ``load_dreamo_model`` (v1.1, turbo
  on: the main, cfg, turbo, sft and dpo LoRAs, its ``_prepare_t5``, ``set_adapters`` + ``fuse_lora``) with
  ``hf_hub_download`` answered from the local folder, and run by its own ``__call__`` with ``ref_conds`` as
  ``dreamo_generator.py`` builds them and a CPU generator seeded as its app does.

Cases: text only, one subject (ip), two references of different tasks (id + ip, try-on), a style reference (with
DreamO's "generate a same style image." prefix), true CFG (one subject, a negative prompt, scale 2.5, every step)
and true CFG in DreamO's window (steps 1 and 2 of 4, negative guidance 3.5). It
compares the final packed latents (relative error, < ``--tol``) and the decoded 8-bit images (<= ``--max-pixel``,
default 2); sanity checks: the references change the result, and the reference with the loaded weights differs from
the base without DreamO's LoRAs.

What is changed on the reference side (all documented in docs/dreamo.md):
* ``cv2`` and ``torchvision`` (imported by ``dreamo.utils`` for preprocessing helpers this script does not call)
  are stand-in modules while the reference is imported;
* ``dreamo_pipeline`` replaces ``FluxTransformer2DModel.forward`` for the whole process on import; the script puts
  diffusers' forward back and gives the patched forward to the reference's transformer instance only. That forward
  calls single blocks with the concatenated ``[text, image]`` sequence (diffusers 0.33's API); current diffusers'
  single blocks take the two streams apart and concatenate them inside, so each single block is wrapped to split
  the sequence at the text length and join the outputs again (the same maths, a different call);
* the VAE posterior returns its mean (DreamO samples it with the unseeded global RNG); the pipeline's ``offload``
  attribute is set (its Generator sets it);
* DreamO's references are given preprocessed (final size, multiples of 16), as its pipeline receives them.

Run (from the repository root, reference extracted outside the repository)::

    mkdir -p /tmp/dreamo_ref && git -C /path/to/DreamO archive 461e35b | tar -x -C /tmp/dreamo_ref
    pip install einops            # the reference needs it; unoflux does not
    python scripts/parity_dreamo.py --dreamo-repo /tmp/dreamo_ref

Exits 1 if any check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import types
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import parity_uno as common  # noqa: E402  (rel_err, max_pixel_diff, random_image)

FLUX_HEAD_WIDTH = dict(attention_head_dim=128, num_attention_heads=1, axes_dims_rope=[16, 56, 56], num_layers=2,
                       num_single_layers=2)  # fmt: skip


def _stubs() -> dict[str, types.ModuleType]:
    cv2 = types.ModuleType("cv2")
    cv2.INTER_AREA = 3
    tv = types.ModuleType("torchvision")
    tv_utils = types.ModuleType("torchvision.utils")
    tv_utils.make_grid = None
    tv.utils = tv_utils
    return {"cv2": cv2, "torchvision": tv, "torchvision.utils": tv_utils}


def import_reference(repo: Path):
    if not (repo / "dreamo" / "dreamo_pipeline.py").is_file():
        sys.exit(f"{repo} does not look like a bytedance/DreamO checkout (no dreamo/dreamo_pipeline.py)")
    import diffusers  # noqa: F401  (before the stand-ins: they probe for torchvision)
    import transformers  # noqa: F401
    from diffusers import FluxTransformer2DModel

    stubs = _stubs()
    if any(name in sys.modules for name in stubs):
        sys.exit("cv2 or torchvision is imported already; run this script where they are not installed")
    original_forward = FluxTransformer2DModel.forward
    sys.modules.update(stubs)
    sys.path.insert(0, str(repo))
    try:
        import dreamo.dreamo_pipeline as ref_pipeline
    finally:
        for name in stubs:
            sys.modules.pop(name, None)
        patched = FluxTransformer2DModel.forward
        FluxTransformer2DModel.forward = original_forward  # ours keeps diffusers' forward
    return ref_pipeline, patched


class LegacySingleBlock(torch.nn.Module):
    """A current diffusers single block answering diffusers 0.33's call: ``[text, image]`` in, ``[text, image]``
    out; the split point is the text length of the running call."""

    def __init__(self, block):
        super().__init__()
        self.block, self.text_length = block, 0

    def forward(self, hidden_states, temb, image_rotary_emb=None, joint_attention_kwargs=None):
        n = self.text_length
        text, image = self.block(
            hidden_states=hidden_states[:, n:],
            encoder_hidden_states=hidden_states[:, :n],
            temb=temb,
            image_rotary_emb=image_rotary_emb,
            joint_attention_kwargs=joint_attention_kwargs,
        )
        return torch.cat([text, image], dim=1)


def give_reference_forward(transformer, patched_forward) -> None:
    shims = torch.nn.ModuleList(LegacySingleBlock(b) for b in transformer.single_transformer_blocks)
    transformer.single_transformer_blocks = shims

    def forward(*args, **kwargs):
        for shim in shims:
            shim.text_length = kwargs["encoder_hidden_states"].shape[1]
        return patched_forward(transformer, *args, **kwargs)

    transformer.forward = forward


def posterior_mean(vae) -> None:
    encode = vae.encode

    def mean_encode(x, return_dict=True):
        out = encode(x, return_dict=return_dict)
        dist = out.latent_dist if return_dict else out[0]
        dist.sample = lambda generator=None: dist.mode()
        return out

    vae.encode = mean_encode


@contextlib.contextmanager
def local_hub(ref_pipeline, folder: Path, turbo: str):
    """DreamO's loader downloads into ``models/`` and reads from there: answer it from the local files."""
    work = Path(tempfile.mkdtemp(prefix="dreamo-models-"))
    (work / "models").symlink_to(folder.resolve())
    original, cwd = ref_pipeline.hf_hub_download, os.getcwd()

    def hf_hub_download(repo_id, filename, local_dir=None, **kwargs):
        return turbo if "Turbo" in repo_id else str(Path("models") / filename)

    ref_pipeline.hf_hub_download = hf_hub_download
    os.chdir(work)
    try:
        yield
    finally:
        os.chdir(cwd)
        ref_pipeline.hf_hub_download = original


def to_tensor(image) -> torch.Tensor:  # dreamo_generator: HWC uint8 RGB -> /255 -> 2x - 1, [1, 3, h, w]
    return torch.from_numpy(np.asarray(image, np.float32) / 255 * 2 - 1).permute(2, 0, 1)[None]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dreamo-repo", type=Path, default=Path("/tmp/dreamo_ref"), help="bytedance/DreamO checkout")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--height", type=int, default=48)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--guidance", type=float, default=4.5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--tol", type=float, default=1e-4, help="max relative error of the final latents")
    parser.add_argument("--max-pixel", type=int, default=2, help="max abs difference of the 8-bit images")
    args = parser.parse_args(argv)

    torch.set_num_threads(min(2, torch.get_num_threads()))
    import diffusers
    import transformers

    transformers.logging.set_verbosity_error()
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    from unoflux import ModelPaths, load_pipeline
    from unoflux.references import Reference
    from unoflux.testing import save_dreamo_layout, tiny_components

    ref_pipeline, patched_forward = import_reference(args.dreamo_repo.resolve())
    root = Path(tempfile.mkdtemp(prefix="unoflux-dreamo-parity-"))
    paths, folder = save_dreamo_layout(tiny_components(0, **FLUX_HEAD_WIDTH), root)
    dreamo_paths = ModelPaths(**{**vars(paths), "dreamo": str(folder)})
    print(f"checkpoints in {root}: flux1, ae, t5/, clip/, DreamO/ (main, cfg, v1.1 sft + dpo), turbo")

    ours = load_pipeline(dreamo_paths, device="cpu", dtype="fp32", use_environment=False)
    fused = load_pipeline(dreamo_paths, device="cpu", dtype="fp32", use_environment=False, fuse_lora=True)
    base = load_pipeline(ModelPaths(flux=paths.flux, ae=paths.ae, t5=paths.t5, clip=paths.clip), device="cpu",
                         dtype="fp32", use_environment=False)  # fmt: skip
    for p in (ours, fused, base):
        p.set_progress_bar_config(disable=True)

    c = tiny_components(0, **FLUX_HEAD_WIDTH)  # the same weights, a second copy for the reference to patch
    ref = ref_pipeline.DreamOPipeline(c["scheduler"], c["vae"], c["text_encoder"], c["tokenizer"],
                                      c["text_encoder_2"], c["tokenizer_2"], c["transformer"])  # fmt: skip
    with local_hub(ref_pipeline, folder, paths.turbo):
        ref.load_dreamo_model("cpu", use_turbo=True, version="v1.1")
    ref.offload = False
    give_reference_forward(ref.transformer, patched_forward)
    posterior_mean(ref.vae)
    ref.set_progress_bar_config(disable=True)

    face = common.random_image(32, 32, 1)  # an "aligned face crop" (id refs are not resized)
    garment = common.random_image(64, 16, 2)  # area 32 x 32 and multiples of 16: preprocessed for ref_res 32
    subject = common.random_image(32, 32, 3)
    style = common.random_image(32, 32, 4)
    style_prompt = "generate a same style image. a cat on the beach"
    cases = [  # name, prompt, [(image, task)], true CFG scale
        ("text only", "a cat on the beach", [], 1.0),
        ("one subject (ip)", "a [ref#1] on the beach", [(subject, "ip")], 1.0),
        ("id + ip (try-on)", "[ref#1] wears [ref#2]", [(face, "id"), (garment, "ip")], 1.0),
        ("style", style_prompt, [(style, "style")], 1.0),
        ("true CFG 2.5", "a [ref#1] on the beach", [(subject, "ip")], 2.5),
        ("true CFG, DreamO's window", "a [ref#1] on the beach", [(subject, "ip")], 2.5),
    ]
    # the window case: CFG on steps [1, 3) only, the negative branch at DreamO's neg_guidance 3.5
    window = {"true CFG, DreamO's window": (1, 3, 3.5)}
    roles = {"ip": "subject", "id": "id", "style": "style"}
    size = dict(width=args.width, height=args.height)
    print(
        f"\n{args.width}x{args.height}, {args.steps} steps, guidance {args.guidance}, seed {args.seed}, float32, CPU\n"
    )
    header = f"{'case':>25} | {'rel err latents':>15} {'fused':>9} {'max|px|':>7} | {'refs effect':>11} {'vs base':>9}"
    print(header)
    print("-" * len(header))
    failures = []
    for name, prompt, refs, cfg in cases:
        negative = "blurry, lowres" if cfg > 1 else ""
        ours_refs = [Reference(image, roles[task]) for image, task in refs]
        start, end, neg_guidance = window.get(name, (0, args.steps, args.guidance))
        common_ours = dict(num_inference_steps=args.steps, guidance_scale=args.guidance, seed=args.seed,
                           reference_long_side=32, true_cfg_scale=cfg, negative_prompt=negative, true_cfg_start=start,
                           true_cfg_end=end, negative_guidance=neg_guidance, **size)  # fmt: skip
        out = ours(prompt, ours_refs, output_type="latent", **common_ours).images.float()
        out_pil = ours(prompt, ours_refs, **common_ours).images[0]
        out_fused = fused(prompt, ours_refs, output_type="latent", **common_ours).images.float()

        def run_reference(output_type, refs=refs, prompt=prompt, negative=negative, cfg=cfg, start=start, end=end,
                          neg_guidance=neg_guidance):  # fmt: skip
            ref_conds = [{"img": to_tensor(image), "task": task, "idx": k} for k, (image, task) in enumerate(refs, 1)]
            return ref(
                prompt=prompt,
                num_inference_steps=args.steps,
                guidance_scale=args.guidance,
                ref_conds=ref_conds,
                generator=torch.Generator(device="cpu").manual_seed(args.seed),
                true_cfg_scale=cfg,
                true_cfg_start_step=start,
                true_cfg_end_step=end,
                negative_prompt=negative,
                neg_guidance_scale=neg_guidance,
                first_step_guidance_scale=args.guidance,  # as DreamO's app passes it
                output_type=output_type,
                **size,
            ).images

        ref_latents = run_reference("latent").float()
        ref_pil = run_reference("pil")[0]
        err, err_fused = common.rel_err(out, ref_latents), common.rel_err(out_fused, ref_latents)
        px = common.max_pixel_diff(out_pil, ref_pil)
        refs_effect = "-"
        if refs:
            without = ours(prompt, [], output_type="latent", **common_ours).images.float()
            effect = common.rel_err(without, out)
            refs_effect = f"{effect:.2e}"
            if effect <= args.tol:
                failures.append(f"{name}: the references have no effect ({effect:.1e})")
        vs_base = common.rel_err(base(prompt, [], output_type="latent", **common_ours).images.float(), ref_latents)
        print(f"{name:>25} | {err:15.2e} {err_fused:9.2e} {px:>7} | {refs_effect:>11} {vs_base:9.2e}")
        for label, e in (("", err), ("fused ", err_fused)):
            if not e < args.tol:
                failures.append(f"{name}: {label}relative error {e:.2e} >= {args.tol}")
        if px > args.max_pixel:
            failures.append(f"{name}: pixels differ by {px} > {args.max_pixel}")
        if vs_base <= args.tol:
            failures.append(f"{name}: the reference equals the base without DreamO ({vs_base:.1e})")
    print(
        "\nrel err latents: ||ours - ref|| / ||ref|| on the final packed latents (adapters kept; fused: ours fused);"
        "\nmax|px|: max abs difference of the decoded 8-bit images (DreamO rounds, UNO's conversion truncates);"
        "\nrefs effect: ours with vs without the references; vs base: FLUX without DreamO's LoRAs vs the reference."
    )
    if failures:
        print("\nFAILED:\n  " + "\n  ".join(failures))
        return 1
    print(f"\nPASSED: every relative error < {args.tol}, every pixel within {args.max_pixel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
