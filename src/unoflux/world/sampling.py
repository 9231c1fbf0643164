"""Random scene specs from a numpy Generator (the builder, the held-out set and the tests share these)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .render import boxes_overlap, layout_boxes
from .specs import SceneSpec, SubjectSpec, TwoPanelSpec
from .subjects import Identity, training_identity
from .vocab import BACKGROUNDS, PLACEMENTS, SIZES

IdentitySource = Callable[[np.random.Generator], Identity]


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def sample_scene(rng: np.random.Generator, identities: Sequence[Identity], background: str | None = None) -> SceneSpec:
    """A scene with the given identities (1 to 3) at distinct placements, sizes chosen so that
    no two subjects overlap."""
    count = len(identities)
    background = background or _pick(rng, BACKGROUNDS)
    placements = sorted(rng.choice(list(PLACEMENTS), size=count, replace=False).tolist(), key=list(PLACEMENTS).index)
    seed = int(rng.integers(0, 2**31 - 1))
    for _ in range(50):
        sizes = [_pick(rng, list(SIZES)) for _ in range(count)]
        subjects = tuple(SubjectSpec(i, p, s) for i, p, s in zip(identities, placements, sizes))
        spec = SceneSpec(background, subjects, seed)
        if count == 1 or not boxes_overlap(layout_boxes(spec)):
            return spec
    # Small subjects always fit side by side.
    return SceneSpec(background, tuple(SubjectSpec(i, p, "small") for i, p in zip(identities, placements)), seed)


def sample_two_panel(rng: np.random.Generator, identity: Identity) -> TwoPanelSpec:
    """The same identity in two scenes with different backgrounds."""
    left_bg, right_bg = rng.choice(list(BACKGROUNDS), size=2, replace=False).tolist()
    return TwoPanelSpec(sample_scene(rng, [identity], left_bg), sample_scene(rng, [identity], right_bg))


def distinct_looks(rng: np.random.Generator, count: int, source: IdentitySource = training_identity) -> list[Identity]:
    """`count` identities whose category looks differ, so that text can tell them apart."""
    chosen: list[Identity] = []
    while len(chosen) < count:
        candidate = source(rng)
        if all(candidate.look != c.look and candidate.colour != c.colour for c in chosen):
            chosen.append(candidate)
    return chosen
