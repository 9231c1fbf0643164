"""The VAE ceiling of the held-out scores (docs/model.md, docs/world.md): held-out scenes rendered exactly,
passed through a model's VAE (encode, decode) and judged as the evaluations judge generated images. No
transformer can score above this through that VAE. Text-to-image: every 4th held-out prompt. Subject-driven:
the first 50 cases of each kind (identity match against same-look distractors, both subjects recognisable).
Images are rendered at the model's native size (unoflux.json).

    .venv/bin/python scripts/probes/vae_ceiling.py [MODEL_DIR]     (default: the embedded model)
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image

from unoflux.checkpoints.specs import EMBEDDED_MODEL_DIR, model_defaults
from unoflux.evaluate.subject import judge_case, summarize_subject
from unoflux.evaluate.world import summarize
from unoflux.family.vae import to_unit_range
from unoflux.world.checker import check
from unoflux.world.heldout import heldout_prompts, heldout_subject_pairs
from unoflux.world.render import render


@torch.no_grad()
def through_vae(vae: AutoencoderKL, image: Image.Image) -> Image.Image:
    x = to_unit_range(torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)[None])
    y = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
    return Image.fromarray(((y[0].permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", metavar="MODEL_DIR", help="a model folder (default: the embedded model)")
    model = parser.parse_args().model or str(EMBEDDED_MODEL_DIR)
    size = int(model_defaults(model).get("image_size", 64))
    vae = AutoencoderKL.from_pretrained(model, subfolder="vae", torch_dtype=torch.float32).eval()
    prompts = heldout_prompts()[::4]
    verdicts = [(p, check(through_vae(vae, render(p.spec, size).image), p.spec)) for p in prompts]
    pairs = heldout_subject_pairs()
    cases = [p for kind in (1, 2) for p in [p for p in pairs if len(p.references) == kind][:50]]
    subject = summarize_subject([judge_case(through_vae(vae, render(p.target, size).image), p) for p in cases])
    print(
        json.dumps(
            {
                "model": model,
                "size": size,
                "text_to_image": {"prompts": len(prompts), **summarize(verdicts)},
                "subject_driven": subject,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
