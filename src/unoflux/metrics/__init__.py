"""Subject-fidelity and text-alignment metrics for subject-driven generation, as in DreamBench evaluation.

DINO (ViT-S/16 DINO by default; DINOv2 selectable), CLIP-I and CLIP-T (CLIP ViT-B/32 by default; any CLIP folder)
following the DreamBooth protocol (Ruiz et al., CVPR 2023), with every choice written down in
:mod:`unoflux.metrics.backbones`, :mod:`unoflux.metrics.scorer` and docs/metrics.md::

    from unoflux.metrics import Case, Scorer, mean_scores

    scorer = Scorer(dino="models/dino-vits16", clip="models/clip-vit-base-patch32")
    scores = scorer.score([Case("out/dog_0.png", ["dreambench/dog/00.jpg"], "a dog on the beach")])
    print(mean_scores(scores))  # {'dino': ..., 'clip_i': ..., 'clip_t': ..., 'dino_masked': None}
"""

from .backbones import (
    ClipBackbone,
    DinoBackbone,
    EvalTransform,
    clip_protocol_processor,
    dino_protocol_processor,
    load_clip,
    load_dino,
)
from .scorer import (
    METRICS,
    Case,
    CaseScore,
    Scorer,
    apply_mask,
    default_device,
    mean_scores,
    scale_clip_t,
    score_cases,
)

__all__ = [
    "METRICS",
    "Case",
    "CaseScore",
    "ClipBackbone",
    "DinoBackbone",
    "EvalTransform",
    "Scorer",
    "apply_mask",
    "clip_protocol_processor",
    "default_device",
    "dino_protocol_processor",
    "load_clip",
    "load_dino",
    "mean_scores",
    "scale_clip_t",
    "score_cases",
]
