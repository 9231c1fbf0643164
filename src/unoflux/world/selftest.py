"""Measure the checker on freshly rendered scenes (where every answer is known)."""

from __future__ import annotations

import numpy as np

from .checker import check_scene
from .render import render_scene
from .sampling import distinct_looks, sample_scene

CRITERIA = ("shape", "colour", "pattern", "placement", "size")


def checker_accuracy(count: int = 200, size: int = 128, seed: int = 123) -> dict[str, float]:
    """Share of correct judgements: per scene (background, count, relation, all) and per subject
    (each criterion). Every fifth scene has two subjects and every tenth three."""
    rng = np.random.default_rng(seed)
    scene_hits = {"background": 0, "count": 0, "relation": 0, "all": 0}
    subject_hits = dict.fromkeys(CRITERIA, 0)
    subjects = 0
    for i in range(count):
        spec = sample_scene(rng, distinct_looks(rng, 1 + (i % 5 == 4) + (i % 10 == 9)))
        verdict = check_scene(render_scene(spec, size).image, spec, with_fidelity=False)
        scene_hits["background"] += verdict.background_ok
        scene_hits["count"] += verdict.count_ok
        scene_hits["relation"] += verdict.relation_ok
        scene_hits["all"] += verdict.all_ok
        for sv in verdict.subjects:
            subjects += 1
            for name in CRITERIA:
                subject_hits[name] += getattr(sv, f"{name}_ok")
    result = {f"scene_{k}": round(v / count, 4) for k, v in scene_hits.items()}
    result |= {f"subject_{k}": round(v / subjects, 4) for k, v in subject_hits.items()}
    return result | {"scenes": count, "subjects": subjects, "size": size}
