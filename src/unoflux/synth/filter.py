"""Stage ``filter-similarity``: score each pair's subject consistency and keep those at or above a threshold.

Backends (``similarity`` in the config):

- ``world``: the exact checker's identity score (:func:`world_judgement`): above 0 when both panels single out the
  same identity among the prompt's and its same-look distractors;
- ``dinov2``: the cosine similarity of the reference crop's and the target crop's DINOv2 embeddings (UNO's first
  filter), through :class:`unoflux.metrics.Scorer`.

Which pairs are kept: those scoring at least ``threshold``, or with ``top_k`` the ``top_k`` best-scoring pairs
whose subjects were located in both panels (:func:`top_k_records`: highest score first, ties by the smaller key;
a pair the detector located in neither or one panel only is never kept). A top-k decision needs every score, so
then each pair's score goes to ``similarity.jsonl`` as it is made (resumable like any manifest) and
``filtered.jsonl`` is written once, atomically, from all of them (every record with its ``rank`` and ``kept``):
it exists only complete and final, a kill before or during that write leaves it absent or as before, and the
re-run writes the same bytes, so the later stages always see the top-k kept set.

On the world every record also carries the checker's truth (``truth``): a pair is consistent when both panels show
the prompted look, the same look and the same identity. The report measures each filter's precision and recall
against it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..images import atomic_write
from ..world.checker import check_two_panel, identity_match
from ..world.specs import TwoPanelSpec
from ..world.subjects import same_look_distractors
from .config import SynthConfig
from .generate import stage_inputs
from .manifest import Manifest, manifest_line
from .split import PAIRS, SIDES

FILTERED = "filtered.jsonl"
SCORED = "similarity.jsonl"  # with top_k: every pair's score as it is made, before the ranking decides
DISTRACTORS = 7  # same-look identities a panel's subject must beat (as the world evaluation counts identity)


def candidate_profile(pixels: np.ndarray, background: str, box, identity) -> np.ndarray:
    """A found subject's fidelity to ``identity`` (first) and to its :data:`DISTRACTORS` same-look look-alikes."""
    own, others = identity_match(pixels, background, box, identity, same_look_distractors(identity, DISTRACTORS))
    return np.array([own, *others])


def identity_agreement(profiles: list[np.ndarray]) -> tuple[float, int | None]:
    """(margin, candidate) for two subjects' candidate profiles: the candidate both like best (largest summed
    fidelity) and the margin by which it beats every other one, in the subject where that margin is smaller;
    (-1, None) unless both subjects were found (two profiles)."""
    if len(profiles) != 2:
        return -1.0, None
    best = int(np.argmax(profiles[0] + profiles[1]))
    return min(float(p[best] - np.delete(p, best).max()) for p in profiles), best


def world_judgement(source: Image.Image, spec: TwoPanelSpec) -> tuple[float, dict]:
    """(identity score, truth) of a two-panel image against the spec it was prompted with.

    Each found subject is compared with a set of candidate identities of the prompt's look: the prompt's own and
    :data:`DISTRACTORS` look-alikes (their fidelity, :func:`unoflux.world.checker.identity_match`). The score is
    the margin by which the candidate both panels like best (the largest summed fidelity) beats every other
    candidate, in the panel where that margin is smaller (-1 when a panel's subject is not found): above 0 both
    panels single out the same identity. A text prompt names the look, never the seed-drawn details, so the same
    identity in both panels (``same_identity``) is what a pair needs; ``identity_ok`` says whether it is also the
    prompt's own.
    """
    pixels = np.asarray(source.convert("RGB"))
    verdict = check_two_panel(pixels, spec)
    side = pixels.shape[0]
    panels = (pixels[:, :side], pixels[:, side : 2 * side])
    profiles = []  # per panel: fidelity to every candidate, the prompt's identity first
    for panel, scene in zip(panels, (verdict.left, verdict.right)):
        subject = scene.subjects[0]
        if subject.found:
            profiles.append(candidate_profile(panel, scene.background, subject.box, spec.identity))
    score, best = identity_agreement(profiles)
    look_ok = all(scene.subjects[0].look_ok for scene in (verdict.left, verdict.right))
    same_identity = score > 0
    truth = {
        "found": len(profiles) == 2,
        "look_ok": look_ok,
        "same_look": verdict.same_look,
        "same_identity": same_identity,
        "identity_ok": same_identity and best == 0,
        "consistent": look_ok and verdict.same_look and same_identity,
        "panel_similarity": verdict.panel_similarity,
    }
    return round(score, 4), truth


def _world_truth(config: SynthConfig, record: dict) -> tuple[float, dict]:
    with Image.open(Path(config.output_dir) / record["source"]) as image:
        return world_judgement(image, TwoPanelSpec.from_dict(record["spec"]))


def located(record: dict) -> bool:
    """Whether the locator found the pair's subject in both panels (only the detector can miss one)."""
    return all(record.get(f"{side}_located", True) for side in SIDES)


def top_k_records(records: list[dict], k: int) -> list[dict]:
    """``records`` (scored pairs, in their order) with ``rank`` (1 = the best score among the located pairs, ties
    broken by the smaller key; None for a pair not located in both panels) and ``kept`` (rank at most ``k``)."""
    ranked = sorted((r for r in records if located(r)), key=lambda r: (-r["score"], r["key"]))
    ranks = {r["key"]: i for i, r in enumerate(ranked, start=1)}
    return [{**r, "rank": ranks.get(r["key"]), "kept": r["key"] in ranks and ranks[r["key"]] <= k} for r in records]


def run_filter_similarity(config: SynthConfig, progress: bool = True) -> Path:
    """Write ``filtered.jsonl``: every pair with its ``score``, ``kept`` and (world) ``truth`` (with ``top_k``,
    also its ``rank``; the scores first go to ``similarity.jsonl``, see the module's docstring).

    DINOv2 scores are computed ``batch_size`` pairs at a time in fixed batches of the pair list (a batch a kill
    interrupted is scored again whole), so a resumed run gives the same numbers as an uninterrupted one.
    """
    out = Path(config.output_dir)
    pairs = stage_inputs(config, PAIRS, "filter-similarity")
    manifest = Manifest(out / (SCORED if config.top_k else FILTERED))
    batches = [pairs[i : i + config.batch_size] for i in range(0, len(pairs), config.batch_size)]
    todo = [batch for batch in batches if any(r["key"] not in manifest for r in batch)]
    scorer = None
    if todo and config.similarity == "dinov2":
        from ..metrics import Scorer

        scorer = Scorer(dino=config.dino, device=config.device, batch_size=2 * config.batch_size, progress=False)
    for batch in tqdm(todo, desc="filter-similarity", unit="batch", disable=not progress):
        judged = [_world_truth(config, r) if r.get("spec") else (None, None) for r in batch]
        if scorer is not None:
            scores = scorer.dino_pairs([out / r["reference"] for r in batch], [out / r["target_crop"] for r in batch])
            scores = [round(s, 6) for s in scores]
        else:
            scores = [score for score, _ in judged]
        for record, score, (_, truth) in zip(batch, scores, judged, strict=True):
            if record["key"] in manifest:
                continue
            scored = {**record, "similarity": config.similarity, "score": score, "truth": truth}
            if not config.top_k:
                scored["kept"] = bool(score >= config.threshold)
            manifest.append(scored)
    if not config.top_k:
        return manifest.path
    by_key = {r["key"]: r for r in manifest.records}
    text = "".join(manifest_line(r) for r in top_k_records([by_key[p["key"]] for p in pairs], config.top_k))
    for leftover in out.glob(f".{FILTERED}.*.part"):  # a write a kill interrupted
        leftover.unlink(missing_ok=True)
    return atomic_write(out / FILTERED, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
