"""Captions in varied natural language, deterministic from a seed.

Variety comes from synonyms, several templates and word orders; every caption still names the
look (size, colour, pattern, shape), placement and background, so the text fully determines
what a checker verifies.

With ``placeholders=True`` a scene caption names subject k (left to right, as pair records order their
references) with DreamO's placeholder ``[ref#k]`` right after its name ("a small orange striped square [ref#1]
on the left in the snow"); every wording choice is the same as without, so the two captions differ only there.

Scene captions also come *without looks* (``name_looks=False``): subjects are named by size and place
only ("a small figure on the left in the snow"). Reference training mixes these in so that a subject's
look has to come from its reference image, not from the caption."""

from __future__ import annotations

import numpy as np

from .specs import SceneSpec, SubjectSpec, TwoPanelSpec
from .subjects import Identity

SHAPE_WORDS: dict[str, list[str]] = {
    "circle": ["circle", "disc", "round blob"],
    "square": ["square", "block"],
    "triangle": ["triangle"],
    "star": ["star"],
    "heart": ["heart"],
    "diamond": ["diamond", "rhombus"],
    "cross": ["cross", "plus sign"],
    "moon": ["moon", "crescent"],
}
PATTERN_WORDS: dict[str, list[str]] = {
    "plain": ["plain", "solid", ""],
    "striped": ["striped", "stripy"],
    "dotted": ["dotted", "polka-dot", "spotted"],
    "checkered": ["checkered", "chequered", "checked"],
}
BACKGROUND_WORDS: dict[str, list[str]] = {
    "beach": ["on a sunny beach", "at the beach", "on the sand by the sea"],
    "snow": ["in the snow", "on a snowy field", "in a winter landscape"],
    "grass": ["on green grass", "in a meadow", "on a lawn"],
    "night": ["under a starry night sky", "at night", "on a dark starry night"],
    "desert": ["in the desert", "among sand dunes", "in a sandy desert"],
    "room": ["in a room", "indoors by a window", "in a cozy room"],
    "underwater": ["underwater", "under the sea", "in the ocean"],
    "city": ["in the city", "on a city street", "in front of tall buildings"],
}
PLACEMENT_WORDS: dict[str, list[str]] = {
    "left": ["on the left", "at the left side", "to the left"],
    "center": ["in the center", "in the middle", "at the center"],
    "right": ["on the right", "at the right side", "to the right"],
}
SIZE_WORDS: dict[str, list[str]] = {
    "small": ["small", "tiny", "little"],
    "medium": ["medium-sized", "mid-sized", "medium"],
    "large": ["large", "big", "huge"],
}
COUNT_WORDS = {2: "two", 3: "three"}
GENERIC_NOUNS = ["subject", "figure", "object", "thing"]


class _Writer:
    """Draws wording choices from one seeded generator."""

    def __init__(self, seed: int, name_looks: bool = True, placeholders: bool = False) -> None:
        self.rng = np.random.default_rng([seed, 11])
        self.name_looks, self.placeholders = name_looks, placeholders

    def pick(self, options: list[str]) -> str:
        return options[int(self.rng.integers(len(options)))]

    def look(self, identity: Identity, size: str | None = None) -> str:
        words = [self.pick(SIZE_WORDS[size])] if size else []
        if not self.name_looks:
            return " ".join(words + [self.pick(GENERIC_NOUNS)])
        pattern = self.pick(PATTERN_WORDS[identity.pattern])
        words += [identity.colour, pattern, self.pick(SHAPE_WORDS[identity.shape])]
        return " ".join(w for w in words if w)

    def name(self, subject: SubjectSpec, k: int) -> str:
        """Subject ``k`` (0-based, left to right) with its article, and its placeholder ``[ref#k+1]`` if asked."""
        phrase = _article(self.look(subject.identity, subject.size))
        return f"{phrase} {placeholder(k)}" if self.placeholders else phrase

    def short_look(self, identity: Identity) -> str:
        """Colour + shape: enough to refer back to a subject within one caption."""
        return f"{identity.colour} {identity.shape}"


def placeholder(k: int) -> str:
    """DreamO's T5 placeholder of reference ``k`` (0-based): ``[ref#1]`` for the first."""
    return f"[ref#{k + 1}]"


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _capitalise(text: str) -> str:
    return text[0].upper() + text[1:]


def describe_look(identity: Identity, seed: int = 0) -> str:
    """E.g. 'red striped star' (the category look only)."""
    return _Writer(seed).look(identity)


def caption_reference(identity: Identity, seed: int = 0) -> str:
    w = _Writer(seed)
    look = _article(w.look(identity))
    return w.pick(
        [
            f"{look} on a plain white background",
            f"a product photo of {look}",
            f"{look}, isolated on a light background",
            f"a studio shot of {look}",
        ]
    )


def _single(w: _Writer, subject: SubjectSpec, background: str) -> str:
    thing = w.name(subject, 0)
    where, bg = w.pick(PLACEMENT_WORDS[subject.placement]), w.pick(BACKGROUND_WORDS[background])
    verb = w.pick(["sits", "stands", "is", "appears"])
    templates = [
        f"{thing} {where} {bg}",
        f"{_capitalise(bg)}, {thing} {where}.",
        f"a picture of {thing} {bg}, {where}",
        f"{thing} {verb} {where} {bg}",
        f"{_capitalise(where)}, {thing} {verb} {bg}.",
    ]
    return w.pick(templates)


def _multi(w: _Writer, spec: SceneSpec) -> str:
    subjects = spec.subjects
    bg = w.pick(BACKGROUND_WORDS[spec.background])
    parts = [f"{w.name(s, k)} {w.pick(PLACEMENT_WORDS[s.placement])}" for k, s in enumerate(subjects)]
    listing = ", ".join(parts[:-1]) + " and " + parts[-1]
    if not w.name_looks:  # without looks, subjects (and references) are meant in left-to-right order
        return w.pick([f"{COUNT_WORDS[len(subjects)]} figures {bg}: {listing}", f"{_capitalise(bg)}, {listing}."])
    # One relation sentence: subjects are listed left to right, so the first is left of the second.
    a, b = subjects[0].identity, subjects[1].identity
    relation = w.pick(
        [
            f"the {w.short_look(a)} is left of the {w.short_look(b)}",
            f"the {w.short_look(b)} is right of the {w.short_look(a)}",
        ]
    )
    count = COUNT_WORDS[len(subjects)]
    return w.pick(
        [
            f"{count} figures {bg}: {listing}; {relation}",
            f"{_capitalise(bg)}, {listing}. {_capitalise(relation)}.",
            f"{listing} {bg}, and {relation}",
        ]
    )


def caption_scene(spec: SceneSpec, seed: int = 0, name_looks: bool = True, placeholders: bool = False) -> str:
    """The scene's caption; ``placeholders``: each subject named with its ``[ref#k]`` (DreamO; module docstring)."""
    w = _Writer(seed, name_looks, placeholders)
    if len(spec.subjects) == 1:
        return _single(w, spec.subjects[0], spec.background)
    return _multi(w, spec)


def _panel(w: _Writer, scene: SceneSpec) -> str:
    s = scene.subjects[0]
    size, where = w.pick(SIZE_WORDS[s.size]), w.pick(PLACEMENT_WORDS[s.placement])
    bg = w.pick(BACKGROUND_WORDS[scene.background])
    return w.pick([f"{size}, {where}, {bg}", f"{size} and {where} {bg}", f"{bg}, {size}, {where}"])


def caption_two_panel(spec: TwoPanelSpec, seed: int = 0) -> str:
    """In-context style: 'a two-panel image of the same <look>: on the left <scene A>; on the right <scene B>'."""
    w = _Writer(seed)
    look = w.look(spec.identity)
    left, right = _panel(w, spec.left), _panel(w, spec.right)
    opening = w.pick(
        ["a two-panel image of the same", "two side-by-side panels showing the same", "a diptych of the same"]
    )
    return w.pick(
        [
            f"{opening} {look}: on the left, {left}; on the right, {right}",
            f"{opening} {look}: left panel {left}; right panel {right}",
        ]
    )


def caption(spec: SceneSpec | TwoPanelSpec | Identity, seed: int = 0) -> str:
    if isinstance(spec, Identity):
        return caption_reference(spec, seed)
    if isinstance(spec, TwoPanelSpec):
        return caption_two_panel(spec, seed)
    return caption_scene(spec, seed)
