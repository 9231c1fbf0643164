"""Scores of a benchmark run: per image (scores.csv), per prompt, per subject and overall with 95% bootstrap
confidence intervals (summary.json), and the paired comparison of two runs.

Statistics (docs/evaluation.md says the same):

- Per prompt means per DreamBooth prompt (``a <subject> in the snow``): the object and live-subject lists share
  their first ten and last five prompts, so those groups hold both kinds.
- An image's DINO / CLIP-I is the mean over its subject's real images (:mod:`unoflux.metrics`); with two subjects,
  the mean of the two subjects' values. Overall, per prompt and per subject: the mean over images.
- 95% intervals: percentile bootstrap, resampling benchmark items (a subject-prompt pair with all its images, so
  images of one prompt are not counted as independent), 1000 resamples, seed 0.
- Comparing runs A and B: images paired by (item, image index), the mean difference A - B with a paired bootstrap
  interval (items resampled), and a two-sided paired sign-flip permutation test on the items' mean differences
  (10000 draws, seed 0; exact enumeration when there are at most 16 items).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UnofluxError
from ..images import atomic_write, load_image
from .dreambench import Benchmark, prompt_group, relative_path

METRIC_NAMES = ("dino", "clip_i", "clip_t", "dino_masked")
METRIC_LABELS = {"dino": "DINO", "clip_i": "CLIP-I", "clip_t": "CLIP-T", "dino_masked": "DINO (masked)"}
RESAMPLES = 1000
PERMUTATIONS = 10000


@dataclass
class ImageScore:
    """One generated image's scores (``None``: not scored, see ``error``)."""

    item: int  # index in the benchmark's items (the batch's ``{item}_{image}.png``)
    item_id: str
    image: int
    path: str  # the generated image, relative to the run folder
    subjects: list[str]
    prompt_index: int
    prompt: str
    prompt_group: str = ""  # the DreamBooth prompt it came from ("a <subject> in the snow"); "" if unknown
    seed: int | None = None
    dino: float | None = None
    clip_i: float | None = None
    clip_t: float | None = None
    dino_masked: float | None = None
    per_subject: dict[str, dict[str, float | None]] = field(default_factory=dict)  # with several subjects
    error: str | None = None


def generated_path(images_dir: Path, item: int, image: int) -> Path:
    return images_dir / f"{item}_{image}.png"


def readable_subject_images(benchmark: Benchmark, masks_dir: Path | None = None) -> tuple[dict, list[dict]]:
    """Each subject's real images that open (``{subject: [(path, mask or None), ...]}``) and the ones that do not,
    with why: one bad photo drops out of the scoring set and is listed, it does not stop the run."""
    usable, unreadable = {}, []
    for name in benchmark.subjects:
        kept = []
        for path in benchmark.subject_images(name):
            try:
                load_image(path, "real image")
            except UnofluxError as err:
                unreadable.append({"image": str(path), "error": str(err)})
                continue
            mask = masks_dir / name / f"{path.stem}.png" if masks_dir is not None else None
            kept.append((path, mask if mask is not None and mask.is_file() else None))
        usable[name] = kept
    return usable, unreadable


def score_benchmark(
    benchmark: Benchmark,
    images_dir: str | Path,
    images_per_prompt: int,
    scorer,
    run_dir: str | Path,
    masks_dir: str | Path | None = None,
    generated_masks_dir: str | Path | None = None,
) -> tuple[list[ImageScore], list[dict]]:
    """Score every ``{i}_{j}.png`` of the benchmark in ``images_dir`` with ``scorer`` (a
    :class:`unoflux.metrics.Scorer`) -> (one :class:`ImageScore` per image, unreadable real images). A missing or
    unreadable generated image is an :class:`ImageScore` with its ``error``, never a stopped run."""
    from ..metrics import Case

    images_dir, run_dir = Path(images_dir), Path(run_dir)
    masks_dir = Path(masks_dir) if masks_dir is not None else None
    gen_masks = Path(generated_masks_dir) if generated_masks_dir is not None else None
    real, unreadable = readable_subject_images(benchmark, masks_dir)
    results, cases, owners = [], [], []  # owners[k]: (result index, subject) of cases[k]
    for i, item in enumerate(benchmark.items):
        for j in range(images_per_prompt):
            png = generated_path(images_dir, i, j)
            result = ImageScore(
                i, item.id, j, relative_path(png, run_dir), item.subjects, item.prompt_index, item.prompt,
                prompt_group(item.template) if item.template else f"prompt {item.prompt_index}",
            )  # fmt: skip
            result.seed = _seed_of(png)
            results.append(result)
            if not png.is_file():
                result.error = f"generated image {str(png)!r} does not exist"
                continue
            mask = gen_masks / png.name if gen_masks is not None and (gen_masks / png.name).is_file() else None
            for name in item.subjects:
                if not real[name]:
                    result.error = f"subject {name!r} has no readable real image to score against"
                    break
                references, reference_masks = zip(*real[name], strict=True)
                any_mask = mask is not None or any(m is not None for m in reference_masks)
                cases.append(
                    Case(
                        png,
                        list(references),
                        item.prompt,
                        generated_mask=mask,
                        reference_masks=list(reference_masks) if any_mask else None,
                    )
                )
                owners.append((len(results) - 1, name))
    scored = scorer.score(cases, errors="record") if cases else []
    by_result: dict[int, list] = {}
    for (index, name), score in zip(owners, scored, strict=True):
        by_result.setdefault(index, []).append((name, score))
    for index, parts in by_result.items():
        result = results[index]
        failed = [s.error for _, s in parts if s.error]
        if failed:
            result.error = failed[0]
            continue
        for metric in METRIC_NAMES:
            values = [getattr(s, metric) for _, s in parts]
            setattr(result, metric, None if any(v is None for v in values) else float(np.mean(values)))
        if len(parts) > 1:
            result.per_subject = {
                name: {m: getattr(s, m) for m in ("dino", "clip_i", "dino_masked")} for name, s in parts
            }
    return results, unreadable


def _seed_of(png: Path) -> int | None:
    meta = png.with_suffix(".json")
    try:
        return int(json.loads(meta.read_text())["seed"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ------------------------------------------------------------------------------------------------ statistics
def bootstrap_mean(
    groups: list[list[float]], resamples: int = RESAMPLES, seed: int = 0
) -> dict[str, float | int | None]:
    """The mean over all values and its 95% percentile-bootstrap interval, resampling ``groups`` (one per benchmark
    item) with replacement. ``{"mean", "ci_low", "ci_high", "n"}``; ``None`` where there are no values."""
    groups = [g for g in groups if g]
    n = sum(len(g) for g in groups)
    if not n:
        return {"mean": None, "ci_low": None, "ci_high": None, "n": 0}
    sums = np.array([sum(g) for g in groups], dtype=np.float64)
    counts = np.array([len(g) for g in groups], dtype=np.float64)
    draws = np.random.default_rng(seed).integers(0, len(groups), size=(resamples, len(groups)))
    means = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"mean": float(sums.sum() / counts.sum()), "ci_low": float(low), "ci_high": float(high), "n": n}


def _groups(scores: list[ImageScore], metric: str, subject: str | None = None) -> list[list[float]]:
    by_item: dict[int, list[float]] = {}
    for s in scores:
        if subject is not None and subject in s.per_subject:
            value = s.per_subject[subject].get(metric, getattr(s, metric))
        else:
            value = getattr(s, metric)
        if value is not None:
            by_item.setdefault(s.item, []).append(value)
    return list(by_item.values())


def metrics_present(scores: list[ImageScore]) -> list[str]:
    return [m for m in METRIC_NAMES if any(getattr(s, m) is not None for s in scores)]


def summarize_scores(scores: list[ImageScore], resamples: int = RESAMPLES) -> dict:
    """Overall, per subject and per prompt index: each metric's mean and 95% interval."""
    metrics = metrics_present(scores)

    def block(chosen: list[ImageScore], subject: str | None = None) -> dict:
        return {m: bootstrap_mean(_groups(chosen, m, subject), resamples) for m in metrics}

    subjects = sorted({name for s in scores for name in s.subjects})
    return {
        "metrics": metrics,
        "images": len(scores),
        "scored": sum(s.error is None for s in scores),
        "failed": [{"path": s.path, "error": s.error} for s in scores if s.error is not None],
        "overall": block(scores),
        "per_subject": {name: block([s for s in scores if name in s.subjects], name) for name in subjects},
        "per_prompt": {
            group: block([s for s in scores if s.prompt_group == group])
            for group in dict.fromkeys(s.prompt_group for s in sorted(scores, key=lambda s: s.prompt_index))
        },
    }


# ------------------------------------------------------------------------------------------------ files
CSV_COLUMNS = (
    "item", "item_id", "image", "path", "subjects", "prompt_index", "prompt", "prompt_group", "seed", *METRIC_NAMES
)  # fmt: skip


def write_scores_csv(scores: list[ImageScore], path: str | Path) -> Path:
    """One row per generated image; several subjects are joined by '+', their own values in ``per_subject``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([*CSV_COLUMNS, "per_subject", "error"])
    for s in scores:
        row = asdict(s)
        row["subjects"] = "+".join(s.subjects)
        values = ["" if row[c] is None else row[c] for c in CSV_COLUMNS]
        writer.writerow([*values, json.dumps(s.per_subject) if s.per_subject else "", s.error or ""])
    return atomic_write(path, lambda tmp: Path(tmp).write_text(buffer.getvalue()))


def read_scores_csv(path: str | Path) -> list[ImageScore]:
    path = Path(path)
    if not path.is_file():
        raise UnofluxError(f"scores file {str(path)!r} does not exist; is this a finished evaluation run folder?")
    scores = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            number = lambda v: None if v in ("", None) else float(v)  # noqa: E731
            scores.append(
                ImageScore(
                    item=int(row["item"]),
                    item_id=row["item_id"],
                    image=int(row["image"]),
                    path=row["path"],
                    subjects=row["subjects"].split("+"),
                    prompt_index=int(row["prompt_index"]),
                    prompt=row["prompt"],
                    prompt_group=row.get("prompt_group", ""),
                    seed=None if row["seed"] == "" else int(row["seed"]),
                    **{m: number(row.get(m)) for m in METRIC_NAMES},
                    per_subject=json.loads(row["per_subject"]) if row.get("per_subject") else {},
                    error=row.get("error") or None,
                )
            )
    return scores


# ------------------------------------------------------------------------------------------------ two runs
def paired_permutation_p(differences: np.ndarray, draws: int = PERMUTATIONS, seed: int = 0) -> float:
    """Two-sided p-value of a paired sign-flip test: how often random signs give a mean at least as far from 0."""
    n = len(differences)
    observed = abs(differences.mean())
    if n <= 16:  # every sign pattern
        signs = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1) * 2 - 1
    else:
        signs = np.random.default_rng(seed).choice((-1.0, 1.0), size=(draws, n))
    flipped = np.abs((signs * differences).mean(axis=1))
    return float(np.mean(flipped >= observed - 1e-12))


def compare_scores(a: list[ImageScore], b: list[ImageScore], resamples: int = RESAMPLES) -> dict:
    """Run A against run B on the images both scored, paired by (item id, image index)."""
    index_b = {(s.item_id, s.image): s for s in b}
    pairs = [(s, index_b[(s.item_id, s.image)]) for s in a if (s.item_id, s.image) in index_b]
    if not pairs:
        raise UnofluxError("the two runs share no (item, image) pair; were they made from the same benchmark?")
    for sa, sb in pairs:
        if sa.prompt != sb.prompt:
            raise UnofluxError(
                f"item {sa.item_id!r} has prompt {sa.prompt!r} in run A but {sb.prompt!r} in run B; compare runs "
                "of the same benchmark"
            )
    result = {"pairs": len(pairs), "only_a": len(a) - len(pairs), "only_b": len(b) - len(pairs), "metrics": {}}
    for metric in METRIC_NAMES:
        both = [(sa, getattr(sa, metric), getattr(sb, metric)) for sa, sb in pairs]
        both = [(s, va, vb) for s, va, vb in both if va is not None and vb is not None]
        if not both:
            continue
        by_item: dict[str, list[float]] = {}
        for s, va, vb in both:
            by_item.setdefault(s.item_id, []).append(va - vb)
        groups = list(by_item.values())
        item_means = np.array([np.mean(g) for g in groups])
        diff = bootstrap_mean(groups, resamples)
        result["metrics"][metric] = {
            "a": float(np.mean([va for _, va, _ in both])),
            "b": float(np.mean([vb for _, _, vb in both])),
            "difference": diff["mean"],
            "ci_low": diff["ci_low"],
            "ci_high": diff["ci_high"],
            "p_value": paired_permutation_p(item_means),
            "images": len(both),
            "items": len(groups),
            "a_better_items": int((item_means > 0).sum()),
            "b_better_items": int((item_means < 0).sum()),
        }
    return result


def format_interval(stat: dict) -> str:
    """``0.761 [0.742, 0.779]`` (or ``-`` with no values)."""
    if stat.get("mean") is None or (isinstance(stat["mean"], float) and math.isnan(stat["mean"])):
        return "-"
    return f"{stat['mean']:.3f} [{stat['ci_low']:.3f}, {stat['ci_high']:.3f}]"
