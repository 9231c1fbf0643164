"""Scene specifications: what a renderer draws, a caption says and a checker verifies."""

from __future__ import annotations

from dataclasses import dataclass

from .subjects import Identity
from .vocab import BACKGROUNDS, PLACEMENTS, SIZES


@dataclass(frozen=True)
class SubjectSpec:
    identity: Identity
    placement: str  # a key of vocab.PLACEMENTS
    size: str  # a key of vocab.SIZES

    def __post_init__(self) -> None:
        if self.placement not in PLACEMENTS:
            raise ValueError(f"unknown placement {self.placement!r}; choose from {list(PLACEMENTS)}")
        if self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r}; choose from {list(SIZES)}")

    def to_dict(self) -> dict:
        return {"identity": self.identity.to_dict(), "placement": self.placement, "size": self.size}

    @classmethod
    def from_dict(cls, data: dict) -> SubjectSpec:
        return cls(Identity.from_dict(data["identity"]), data["placement"], data["size"])


@dataclass(frozen=True)
class SceneSpec:
    """A background with one to three subjects, listed left to right by placement."""

    background: str
    subjects: tuple[SubjectSpec, ...]
    seed: int  # background texture and small layout jitter

    def __post_init__(self) -> None:
        if self.background not in BACKGROUNDS:
            raise ValueError(f"unknown background {self.background!r}; choose from {list(BACKGROUNDS)}")
        if not 1 <= len(self.subjects) <= 3:
            raise ValueError(f"a scene has 1 to 3 subjects, got {len(self.subjects)}")
        placements = [s.placement for s in self.subjects]
        if len(set(placements)) != len(placements):
            raise ValueError(f"two subjects share a placement: {placements}")

    def to_dict(self) -> dict:
        return {
            "type": "scene",
            "background": self.background,
            "seed": self.seed,
            "subjects": [s.to_dict() for s in self.subjects],
        }

    @classmethod
    def from_dict(cls, data: dict) -> SceneSpec:
        return cls(data["background"], tuple(SubjectSpec.from_dict(s) for s in data["subjects"]), int(data["seed"]))


@dataclass(frozen=True)
class TwoPanelSpec:
    """The same single subject in two scenes, side by side (the in-context training format)."""

    left: SceneSpec
    right: SceneSpec

    def __post_init__(self) -> None:
        if len(self.left.subjects) != 1 or len(self.right.subjects) != 1:
            raise ValueError("each panel of a two-panel image shows exactly one subject")
        if self.left.subjects[0].identity != self.right.subjects[0].identity:
            raise ValueError("both panels must show the same identity")

    @property
    def identity(self) -> Identity:
        return self.left.subjects[0].identity

    def to_dict(self) -> dict:
        return {"type": "two_panel", "left": self.left.to_dict(), "right": self.right.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> TwoPanelSpec:
        return cls(SceneSpec.from_dict(data["left"]), SceneSpec.from_dict(data["right"]))


def spec_from_dict(data: dict) -> SceneSpec | TwoPanelSpec:
    """Inverse of `to_dict` for either spec kind (dispatches on the "type" field)."""
    kind = data.get("type", "scene")
    if kind == "scene":
        return SceneSpec.from_dict(data)
    if kind == "two_panel":
        return TwoPanelSpec.from_dict(data)
    raise ValueError(f"unknown spec type {kind!r}; expected 'scene' or 'two_panel'")
