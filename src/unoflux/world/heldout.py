"""The fixed held-out evaluation set, built only from held-out identities with fixed seeds.

- `heldout_prompts()`: 256 text-to-image prompts (160 single-subject, 48 multi-subject, 48 two-panel).
- `heldout_subject_pairs()`: 400 subject-driven cases (200 single-reference, 200 two-reference):
  reference identities, whose reference shots a model is given, plus a target scene and caption.
- `tuning_prompts()`: prompts drawn the same way from *training* identities with their own seeds, for
  choosing sampler settings (guidance, CFG, time shift) without looking at the held-out set.
Nothing here depends on anything but this file and the world's vocabulary, so the set never moves.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .captions import caption, caption_scene
from .sampling import distinct_looks, sample_scene, sample_two_panel
from .specs import SceneSpec, TwoPanelSpec
from .subjects import Identity, heldout_identities, training_identity

_SEED = 20_240_601
SINGLE_COUNT, MULTI_COUNT, TWO_PANEL_COUNT = 160, 48, 48
PAIR_COUNT, MULTI_PAIR_COUNT = 200, 200


@dataclass(frozen=True)
class HeldoutPrompt:
    id: str
    kind: str  # "single", "multi" or "two_panel"
    spec: SceneSpec | TwoPanelSpec
    caption: str
    seed: int  # the generation seed to use for this prompt

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "kind": self.kind,
            "spec": self.spec.to_dict(),
            "caption": self.caption,
            "seed": self.seed,
        }


@dataclass(frozen=True)
class SubjectPair:
    id: str
    references: tuple[Identity, ...]  # render each with render_reference to get the model's inputs
    target: SceneSpec
    caption: str
    seed: int

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "references": [r.to_dict() for r in self.references],
            "target": self.target.to_dict(),
            "caption": self.caption,
            "seed": self.seed,
        }


def _heldout_source(identities: tuple[Identity, ...]):
    return lambda rng: identities[int(rng.integers(len(identities)))]


@lru_cache(maxsize=1)
def heldout_prompts() -> tuple[HeldoutPrompt, ...]:
    identities = heldout_identities()
    rng = np.random.default_rng(_SEED)
    prompts = []
    for i in range(SINGLE_COUNT):
        spec = sample_scene(rng, [identities[i % len(identities)]])
        prompts.append(HeldoutPrompt(f"single-{i:03d}", "single", spec, caption(spec, _SEED + i), i))
    for i in range(MULTI_COUNT):
        spec = sample_scene(rng, distinct_looks(rng, 2 + i % 2, _heldout_source(identities)))
        prompts.append(HeldoutPrompt(f"multi-{i:03d}", "multi", spec, caption(spec, _SEED + 1000 + i), 1000 + i))
    for i in range(TWO_PANEL_COUNT):
        spec = sample_two_panel(rng, identities[(7 * i) % len(identities)])
        prompts.append(
            HeldoutPrompt(f"two-panel-{i:03d}", "two_panel", spec, caption(spec, _SEED + 2000 + i), 2000 + i)
        )
    return tuple(prompts)


def subject_caption(pair: SubjectPair, placeholders: bool = False) -> str:
    """The pair's held-out caption (``pair.caption``), with ``placeholders`` naming reference k's subject with
    DreamO's ``[ref#k]`` (the same words otherwise: models trained on placeholder captions, issue 22)."""
    return caption_scene(pair.target, _SEED + pair.seed, placeholders=placeholders)


@lru_cache(maxsize=1)
def heldout_subject_pairs() -> tuple[SubjectPair, ...]:
    identities = heldout_identities()
    rng = np.random.default_rng(_SEED + 1)
    pairs = []
    for i in range(PAIR_COUNT):
        target = sample_scene(rng, [identities[i % len(identities)]])
        pairs.append(
            SubjectPair(
                f"pair-{i:03d}", (target.subjects[0].identity,), target, caption(target, _SEED + 3000 + i), 3000 + i
            )
        )
    rng = np.random.default_rng(_SEED + 2)  # its own stream: either count can change without moving the other
    for i in range(MULTI_PAIR_COUNT):
        chosen = distinct_looks(rng, 2, _heldout_source(identities))
        target = sample_scene(rng, chosen)
        pairs.append(
            SubjectPair(
                f"multi-pair-{i:03d}",
                tuple(s.identity for s in target.subjects),
                target,
                caption(target, _SEED + 4000 + i),
                4000 + i,
            )
        )
    return tuple(pairs)


_TUNING_SEED = 20_251_123


@lru_cache(maxsize=4)
def tuning_prompts(single: int = 64, multi: int = 112, two_panel: int = 112) -> tuple[HeldoutPrompt, ...]:
    """Prompts of the held-out kinds from training identities (weighted to the weak kinds by default):
    what sampler settings are tuned on, so the held-out scores stay an unbiased test of the choice."""
    rng = np.random.default_rng(_TUNING_SEED)
    prompts = []
    for i in range(single):
        spec = sample_scene(rng, [training_identity(rng)])
        prompts.append(
            HeldoutPrompt(f"tune-single-{i:03d}", "single", spec, caption(spec, _TUNING_SEED + i), 10_000 + i)
        )
    for i in range(multi):
        spec = sample_scene(rng, distinct_looks(rng, 2 + i % 2, training_identity))
        prompts.append(
            HeldoutPrompt(f"tune-multi-{i:03d}", "multi", spec, caption(spec, _TUNING_SEED + 1000 + i), 11_000 + i)
        )
    for i in range(two_panel):
        spec = sample_two_panel(rng, training_identity(rng))
        prompts.append(
            HeldoutPrompt(
                f"tune-two-panel-{i:03d}", "two_panel", spec, caption(spec, _TUNING_SEED + 2000 + i), 12_000 + i
            )
        )
    return tuple(prompts)
