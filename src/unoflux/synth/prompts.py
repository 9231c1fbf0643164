"""Stage ``prompts``: templated two-panel prompts, each with its own generation seed.

UNO's synthesis asks a text-to-image DiT for "two panels of the same subject in two scenes". On the embedded world
each prompt is a world two-panel spec (a training identity in two backgrounds) with the world's in-context caption,
so later stages know exactly what should be drawn; with user vocabularies a subject and two different scenes are
expanded through a template (no LLM). Record ``i`` draws everything from ``(seed, i)``: a resumed run redraws the
same prompt.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..world.captions import caption_reference, caption_scene, caption_two_panel, describe_look
from ..world.sampling import sample_two_panel
from ..world.subjects import training_identity
from .config import DEFAULT_TEMPLATES, SynthConfig
from .manifest import Manifest

PROMPTS = "prompts.jsonl"
_STREAM = 21  # keeps this stage's random streams apart from the world builder's


def record_key(index: int) -> str:
    return f"{index:06d}"


def prompt_record(config: SynthConfig, index: int) -> dict:
    """The prompt record ``index`` of ``config`` (pure: the same config and index give the same record)."""
    rng = np.random.default_rng([config.seed, _STREAM, index])
    if config.world:
        identity = training_identity(rng)  # below the held-out seed range by construction
        spec = sample_two_panel(rng, identity)
        caption_seed = int(rng.integers(0, 2**31 - 1))
        return {
            "key": record_key(index),
            "index": index,
            "prompt": caption_two_panel(spec, caption_seed),
            "seed": int(rng.integers(0, 2**31 - 1)),
            "subject": describe_look(identity, caption_seed),
            "caption": caption_scene(spec.right, caption_seed),  # the target panel alone: the pair's training text
            "reference_caption": caption_reference(identity, caption_seed),
            "spec": spec.to_dict(),
        }
    subject = config.subjects[int(rng.integers(len(config.subjects)))]
    left, right = (config.scenes[int(i)] for i in rng.choice(len(config.scenes), size=2, replace=False))
    templates = config.templates or list(DEFAULT_TEMPLATES)
    template = templates[int(rng.integers(len(templates)))]
    return {
        "key": record_key(index),
        "index": index,
        "prompt": template.format(subject=subject, left=left, right=right),
        "seed": int(rng.integers(0, 2**31 - 1)),
        "subject": subject,
        "caption": f"{subject} {right}",
        "scenes": [left, right],
        "spec": None,
    }


def run_prompts(config: SynthConfig, progress: bool = True) -> Path:
    """Write ``prompts.jsonl`` (``config.count`` records), resuming after any that are already there."""
    manifest = Manifest(Path(config.output_dir) / PROMPTS)
    for index in range(config.count):
        if record_key(index) not in manifest:
            manifest.append(prompt_record(config, index))
    return manifest.path
