"""A procedurally generated world for training and exactly scoring subject-driven generation.

numpy + PIL only. See docs/world.md.
"""

from .captions import caption, caption_reference, caption_scene, caption_two_panel, describe_look
from .checker import (
    SceneVerdict,
    SubjectVerdict,
    TwoPanelVerdict,
    check,
    check_scene,
    check_two_panel,
    subject_fidelity,
)
from .heldout import HeldoutPrompt, SubjectPair, heldout_prompts, heldout_subject_pairs
from .render import Rendered, RenderedSubject, render, render_reference, render_scene, render_two_panel, single
from .specs import SceneSpec, SubjectSpec, TwoPanelSpec, spec_from_dict
from .subjects import (
    HELDOUT_SEED_START,
    Identity,
    heldout_identities,
    heldout_seeds,
    make_identity,
    sample_training_identities,
    training_identity,
)
from .vocab import BACKGROUNDS, COLOURS, PATTERNS, PLACEMENTS, SHAPES, SIZES

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "PATTERNS",
    "PLACEMENTS",
    "SHAPES",
    "SIZES",
    "HELDOUT_SEED_START",
    "Identity",
    "make_identity",
    "heldout_identities",
    "heldout_seeds",
    "training_identity",
    "sample_training_identities",
    "SubjectSpec",
    "SceneSpec",
    "TwoPanelSpec",
    "spec_from_dict",
    "Rendered",
    "RenderedSubject",
    "render",
    "render_reference",
    "render_scene",
    "render_two_panel",
    "single",
    "caption",
    "caption_reference",
    "caption_scene",
    "caption_two_panel",
    "describe_look",
    "SubjectVerdict",
    "SceneVerdict",
    "TwoPanelVerdict",
    "check",
    "check_scene",
    "check_two_panel",
    "subject_fidelity",
    "HeldoutPrompt",
    "SubjectPair",
    "heldout_prompts",
    "heldout_subject_pairs",
]
