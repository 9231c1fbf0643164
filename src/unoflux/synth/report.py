"""Stage ``report``: per-stage counts and yields; histograms of the similarity and VLM scores of kept vs rejected
pairs (and on the world of consistent vs inconsistent ones); on the world each filter's precision and recall
against the exact checker's truth by threshold, and a yield-vs-precision plot (``report.md`` for people, with the
plots linked, ``report.json`` for tools); contact sheets of kept and rejected pairs; the pairs every filter that
ran kept as a UNO training JSON (``train_pairs.json``) that ``unoflux train`` reads with references."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .. import plots
from ..images import atomic_write, save_json, save_png
from .config import SynthConfig
from .filter import FILTERED
from .generate import IMAGES
from .manifest import read_manifest
from .multi import MULTI, MULTI_PAIRS, MULTI_PAIRS_CROPPED, MULTI_TARGETS
from .prompts import PROMPTS
from .split import PAIRS
from .vlm import VLM

HIST_SIMILARITY, HIST_VLM, YIELD_PRECISION = "hist_similarity.png", "hist_vlm.png", "yield_precision.png"
VLM_SCORES = (0, 1, 2, 3, 4)


def _count(path: Path) -> int | None:
    return len(read_manifest(path)) if path.is_file() else None


def threshold_table(records: list[dict], thresholds: list[float]) -> list[dict]:
    """Per threshold: pairs kept, yield (kept / all), precision (consistent among kept), recall (kept among
    consistent); only records with the checker's truth count."""
    judged = [r for r in records if r.get("truth") is not None]
    consistent = sum(r["truth"]["consistent"] for r in judged)
    rows = []
    for threshold in thresholds:
        kept = [r for r in judged if r["score"] >= threshold]
        hits = sum(r["truth"]["consistent"] for r in kept)
        rows.append(
            {
                "threshold": round(float(threshold), 4),
                "kept": len(kept),
                "yield": len(kept) / len(judged) if judged else None,
                "precision": hits / len(kept) if kept else None,
                "recall": hits / consistent if consistent else None,
            }
        )
    return rows


def summarize(config: SynthConfig) -> dict:
    out = Path(config.output_dir)
    counts = {name: _count(out / f) for name, f in (("prompts", PROMPTS), ("generated", IMAGES), ("pairs", PAIRS))}
    summary = {"counts": counts, "similarity": config.similarity, "threshold": config.threshold, "top_k": config.top_k}
    if config.locator == "detector" and counts["pairs"]:  # panels the detector found nothing in (whole panel used)
        pairs = read_manifest(out / PAIRS)
        summary["not_located"] = {
            side: sum(not p[f"{side}_located"] for p in pairs) for side in ("reference", "target")
        }
    if not (out / FILTERED).is_file():
        return summary
    records = read_manifest(out / FILTERED)
    counts["scored"], counts["kept"] = len(records), sum(r["kept"] for r in records)
    judged = [r for r in records if r.get("truth") is not None]
    if judged:
        scores = np.array([r["score"] for r in judged], np.float64)
        grid = sorted({*np.quantile(scores, np.linspace(0, 0.9, 10)).round(4).tolist(), config.threshold})
        summary["truth"] = {
            key: sum(r["truth"][key] for r in judged)
            for key in ("found", "look_ok", "same_look", "same_identity", "identity_ok")
        }
        summary["unfiltered_precision"] = sum(r["truth"]["consistent"] for r in judged) / len(judged)
        summary["thresholds"] = threshold_table(judged, grid)
    summary["histograms"] = {"similarity": similarity_histograms(records)}
    if (out / VLM).is_file():
        scored = read_manifest(out / VLM)
        counts["vlm_scored"], counts["vlm_kept"] = len(scored), sum(r["kept"] for r in scored)
        summary.update(vlm=config.vlm, vlm_threshold=config.vlm_threshold)
        summary["vlm_errors"] = sum(r["error"] is not None for r in scored)
        summary["vlm_scores"] = {str(k): sum(r["vlm_score"] == k for r in scored) for k in VLM_SCORES}
        summary["histograms"]["vlm"] = vlm_histograms(scored)
        if judged:
            summary["vlm_thresholds"] = cascade_table(records, {r["key"]: r for r in scored}, list(VLM_SCORES))
    return summary


def multi_summary(config: SynthConfig) -> dict | None:
    """The multi-subject stage's counts and, on the world, its filter against the checker's truth by threshold."""
    out = Path(config.output_dir)
    if not (out / MULTI).is_file():
        return None
    records = read_manifest(out / MULTI)
    references = [ref for r in records for ref in r["references"]]
    summary = {
        "targets": _count(out / MULTI_TARGETS),
        "scored": len(records),
        "references": sum(ref["regenerated"] is not None for ref in references),  # Stage-I images made
        "kept": sum(r["kept"] for r in records),
    }
    if config.locator == "detector":  # subjects the detector did not find: their targets are never kept
        missed = [ref for ref in references if not ref["located"]]
        summary["not_located"] = {
            "targets": sum(not r["located"] for r in records),
            "in_target": sum(ref["crop"] is None for ref in missed),
            "in_regenerated": sum(ref["crop"] is not None for ref in missed),
        }
    judged = [r for r in records if r.get("truth") is not None]
    if judged:
        scores = np.array([r["score"] for r in judged], np.float64)
        grid = sorted({*np.quantile(scores, np.linspace(0, 0.9, 10)).round(4).tolist(), config.threshold})
        summary["consistent_targets"] = sum(r["truth"]["consistent"] for r in judged)
        refs = [ref for r in judged for ref in r["references"]]
        summary["judged_targets"], summary["judged_references"] = len(judged), len(refs)
        summary["reference_truth"] = {
            key: sum(ref["truth"][key] for ref in refs) for key in ("found", "look_ok", "same_identity", "consistent")
        }
        summary["unfiltered_precision"] = summary["consistent_targets"] / len(judged)
        summary["thresholds"] = threshold_table(judged, grid)
    return summary


def multi_markdown(config: SynthConfig, multi: dict) -> list[str]:
    lines = [
        "",
        "## Multi-subject pairs (Stage-I re-generated references)",
        "",
        f"Stage-I model `{config.stage1_model or config.model or 'embedded'}`"
        f"{f' with LoRA `{config.stage1_lora}`' if config.stage1_lora else ''}: {multi['targets']} targets, "
        f"{multi['references']} re-generated references; kept (every reference's `{config.similarity}` score >= "
        f"{config.threshold}): {multi['kept']} of {multi['scored']}. Training JSONs: `{MULTI_PAIRS}` (generated "
        f"references), `{MULTI_PAIRS_CROPPED}` (the target's own crops, for the ablation).",
    ]
    if "not_located" in multi:
        missed = multi["not_located"]
        lines += [
            "",
            f"The detector (threshold {config.detector_threshold}) did not locate every subject of "
            f"{missed['targets']} of {multi['scored']} targets, which are not kept: {missed['in_target']} subjects "
            f"not found in their target (not re-generated), {missed['in_regenerated']} not found in their "
            "re-generated image (`located` false and `reason` per reference in `multi.jsonl`).",
        ]
    if "thresholds" in multi:
        truth = multi["reference_truth"]
        lines += [
            "",
            f"Against the exact checker: of {multi['judged_references']} references (those of the "
            f"{multi['judged_targets']} targets with every subject located), both the target's subject and the "
            f"re-generated one are found in {truth['found']}, both show the prompted look in {truth['look_ok']}, "
            f"the same identity in {truth['same_identity']}; consistent (look and identity) {truth['consistent']}. "
            f"A target is consistent when all its references are: {multi['consistent_targets']} of {multi['judged_targets']}"
            f" (unfiltered precision {_percent(multi['unfiltered_precision'])}).",
            "",
            f"| `{config.similarity}` score >= (every reference) | kept | yield | precision | recall |",
            "| --- | --- | --- | --- | --- |",
        ]
        for row in multi["thresholds"]:
            lines.append(
                f"| {row['threshold']} | {row['kept']} | {_percent(row['yield'])} | {_percent(row['precision'])} | "
                f"{_percent(row['recall'])} |"
            )
    return lines


def cascade_table(records: list[dict], scored: dict[str, dict], thresholds: list[float]) -> list[dict]:
    """Per VLM threshold, the two filters in a row (the similarity filter's kept pairs with a VLM score at least the
    threshold): pairs kept, yield (of all judged pairs), precision, recall; only records with the truth count."""
    judged = [r for r in records if r.get("truth") is not None]
    consistent = sum(r["truth"]["consistent"] for r in judged)
    rows = []
    for threshold in thresholds:
        kept = [r for r in judged if r["kept"] and _vlm_score(scored.get(r["key"])) >= threshold]
        hits = sum(r["truth"]["consistent"] for r in kept)
        rows.append(
            {
                "vlm_threshold": threshold,
                "kept": len(kept),
                "yield": len(kept) / len(judged) if judged else None,
                "precision": hits / len(kept) if kept else None,
                "recall": hits / consistent if consistent else None,
            }
        )
    return rows


def _vlm_score(record: dict | None) -> float:
    """A pair's VLM score; -1 when the VLM gave none (an error) or has not scored it (below every threshold)."""
    return -1 if record is None or record["vlm_score"] is None else record["vlm_score"]


def _split(records: list[dict], value) -> dict[str, list]:
    """``value(r)`` of each record grouped by the filter's decision and, for records with the truth, by it."""
    groups = {
        "kept": [value(r) for r in records if r["kept"]],
        "rejected": [value(r) for r in records if not r["kept"]],
    }
    judged = [r for r in records if r.get("truth") is not None]
    if judged:
        groups["consistent"] = [value(r) for r in judged if r["truth"]["consistent"]]
        groups["inconsistent"] = [value(r) for r in judged if not r["truth"]["consistent"]]
    return groups


def similarity_histograms(records: list[dict]) -> dict:
    """Bin edges and per-group counts of the similarity scores (12 bins over the scores' range)."""
    groups = _split(records, lambda r: r["score"])
    scores = groups["kept"] + groups["rejected"]
    low, high = (min(scores), max(scores)) if scores else (0.0, 1.0)
    low, high = (low - 0.5, high + 0.5) if high == low else (low, high)
    edges = np.linspace(low, high, 13).tolist()  # unrounded: the extreme scores stay inside the outer edges
    return {"edges": edges, **{name: plots.bin_counts(v, edges) for name, v in groups.items()}}


def vlm_histograms(scored: list[dict]) -> dict:
    """Per-group counts of the VLM scores 0-4, and of the pairs without one (``error``), in that order."""
    bins = [*VLM_SCORES, len(VLM_SCORES)]  # the last slot: no score
    groups = _split(scored, lambda r: len(VLM_SCORES) if r["vlm_score"] is None else r["vlm_score"])
    edges = [b - 0.5 for b in bins] + [bins[-1] + 0.5]
    return {"bins": [*map(str, VLM_SCORES), "error"], **{n: plots.bin_counts(v, edges) for n, v in groups.items()}}


def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f} %"


STAGE_ROWS = (  # report.json's count name, the stage table's row
    ("prompts", "prompts"),
    ("generated", "generated"),
    ("pairs", "pairs"),
    ("scored", "scored (similarity)"),
    ("kept", "kept"),
    ("vlm_scored", "scored (VLM)"),
    ("vlm_kept", "vlm kept"),
)


def similarity_rule(config: SynthConfig) -> str:
    """Which pairs the similarity filter keeps, in words."""
    if config.top_k:
        return f"kept: the {config.top_k} best-scoring located pairs (top_k)"
    return f"kept at score >= {config.threshold}"


def markdown(config: SynthConfig, summary: dict, images: list[str]) -> str:
    counts = summary["counts"]
    vlm = f", VLM `{config.vlm}` kept at score >= {config.vlm_threshold}" if "vlm" in summary else ""
    lines = [
        "# Synthesis report",
        "",
        f"Output `{config.output_dir}`; {config.count} prompts ({'embedded world' if config.world else 'user vocabulary'}"
        f"), model `{config.model or 'embedded base'}`, panels {config.size} px, steps {config.steps or 'model default'}"
        f", locator `{config.locator}`, similarity `{config.similarity}` {similarity_rule(config)}{vlm}.",
        "",
        "| stage | records | yield of the stage before | of all pairs |",
        "| --- | --- | --- | --- |",
    ]
    previous, pairs = None, counts.get("pairs")
    for name, row in STAGE_ROWS:
        if counts.get(name) is None:
            continue
        share = counts[name] / previous if previous else None
        of_pairs = counts[name] / pairs if pairs and name in ("kept", "vlm_kept") else None
        lines.append(f"| {row} | {counts[name]} | {_percent(share)} | {_percent(of_pairs)} |")
        previous = counts[name]
    if "not_located" in summary:
        missed = summary["not_located"]
        lines += [
            "",
            f"The detector (threshold {config.detector_threshold}) did not locate the subject in {missed['reference']} "
            f"reference and {missed['target']} target panels of {counts['pairs']} pairs; those crops are the whole "
            "panel (`reference_located` / `target_located` false in `pairs.jsonl`).",
        ]
    if "thresholds" in summary:
        truth, n = summary["truth"], counts["scored"]
        lines += [
            "",
            "## Against the exact checker (world)",
            "",
            f"Of {n} pairs the checker finds both subjects in {truth['found']}, the prompted look in both panels in "
            f"{truth['look_ok']}, the same look in {truth['same_look']}, the same identity (among the prompt's and "
            f"its same-look distractors) in {truth['same_identity']}, and that identity is the prompt's own in "
            f"{truth['identity_ok']}. A pair is consistent when it has the prompted look, the same look and the same "
            f"identity in both panels: unfiltered precision {_percent(summary['unfiltered_precision'])}.",
            "",
            f"| `{config.similarity}` score >= | kept | yield | precision | recall |",
            "| --- | --- | --- | --- | --- |",
        ]
        for row in summary["thresholds"]:
            lines.append(
                f"| {row['threshold']} | {row['kept']} | {_percent(row['yield'])} | {_percent(row['precision'])} | "
                f"{_percent(row['recall'])} |"
            )
    if "vlm" in summary:
        scores = summary["vlm_scores"]
        lines += [
            "",
            f"## VLM filter (`{config.vlm}`)",
            "",
            f"The VLM scored {counts['vlm_scored']} of the {counts['kept']} pairs the similarity filter kept and kept "
            f"{counts['vlm_kept']} (score >= {config.vlm_threshold}); {summary['vlm_errors']} gave no score (their "
            "`error` in `vlm.jsonl` says what failed). Scores: "
            + ", ".join(f"{k}: {v}" for k, v in scores.items())
            + ".",
        ]
        if "vlm_thresholds" in summary:
            lines += [
                "",
                f"Both filters in a row (`{config.similarity}` {similarity_rule(config)}, then the VLM), against "
                "the checker's truth; yield of all pairs:",
                "",
                f"| `{config.vlm}` VLM score >= | kept | yield | precision | recall |",
                "| --- | --- | --- | --- | --- |",
            ]
            for row in summary["vlm_thresholds"]:
                lines.append(
                    f"| {row['vlm_threshold']} | {row['kept']} | {_percent(row['yield'])} | "
                    f"{_percent(row['precision'])} | {_percent(row['recall'])} |"
                )
    if summary.get("multi"):
        lines += multi_markdown(config, summary["multi"])
    if images:
        lines += ["", "## Plots", ""] + [f"![{name[:-4]}]({name})" for name in images]
    return "\n".join(lines) + "\n"


def _score_plot(histogram: dict, bins_key: str, title: str, x_label: str, threshold: float | None) -> Image.Image:
    """The histogram by the filter's decision and, when the truth is known, by the truth, side by side."""
    if bins_key == "edges":
        edges, x_ticks = histogram["edges"], None
    else:  # categories: scores 0-4, then the pairs without one
        edges = [k - 0.5 for k in range(len(histogram["bins"]) + 1)]
        x_ticks = list(enumerate(histogram["bins"]))
    panels = []
    for (first, second), colours, what in (
        (("kept", "rejected"), (plots.BLUE, plots.GREY), "by the filter's decision"),
        (("consistent", "inconsistent"), (plots.GREEN, plots.RED), "by the checker's truth"),
    ):
        if first not in histogram:
            continue
        groups = {first: (histogram[first], colours[0]), second: (histogram[second], colours[1])}
        axes = plots.histogram(
            groups, edges, title=f"{title}, {what}", x_label=x_label, y_label="pairs", x_ticks=x_ticks
        )
        if threshold is not None:
            axes.vline(threshold - (0.5 if x_ticks else 0), plots.ORANGE, label=f"threshold {threshold:g}")
        axes.legend()
        panels.append(axes.image)
    return plots.side_by_side(panels)


def yield_precision_plot(config: SynthConfig, summary: dict) -> Image.Image:
    """Yield (kept / all pairs) against precision (consistent among kept) for every threshold of the similarity
    filter, and of the VLM after it; the unfiltered output is the point at yield 100 %."""
    percent = [(v / 100, f"{v} %") for v in range(0, 101, 20)]
    axes = plots.Axes(
        (0, 1.12),  # room right of 100 % for the texts of the points there
        (0, 1.05),
        size=(720, 480),
        title="yield vs precision by threshold (world, against the exact checker)",
        x_label="yield (kept / all pairs)",
        y_label="precision (consistent among kept)",
        x_ticks=percent,
        y_ticks=percent,
    )
    for rows, key, colour, name, below in (
        (summary["thresholds"], "threshold", plots.BLUE, f"{config.similarity} similarity >= t", False),
        (summary.get("vlm_thresholds"), "vlm_threshold", plots.RED, f"then {config.vlm} VLM >= t", True),
    ):
        points: dict[tuple, list] = {}  # thresholds that keep the same pairs share a point (and one text)
        for row in rows or []:
            if row["precision"] is not None:
                points.setdefault((row["yield"], row["precision"]), []).append(row[key])
        if points:
            xs, ys = zip(*sorted(points))
            texts = [_span(points[p]) for p in sorted(points)]
            axes.line(xs, ys, colour, label=name)
            axes.points(xs, ys, colour, texts=texts, below=below)
    axes.points([1.0], [summary["unfiltered_precision"]], plots.INK, label="unfiltered", radius=5)
    axes.legend("bottom left")
    return axes.image


def _span(thresholds: list[float]) -> str:
    low, high = min(thresholds), max(thresholds)
    return f"{low:g}" if low == high else f"{low:g} to {high:g}"


def write_plots(config: SynthConfig, summary: dict) -> list[str]:
    """The score histograms and (world) the yield-vs-precision plot as PNGs; their names."""
    out, written = Path(config.output_dir), []
    histograms = summary.get("histograms", {})
    figures = []
    if "similarity" in histograms:
        figures.append(
            (
                HIST_SIMILARITY,
                _score_plot(
                    histograms["similarity"],
                    "edges",
                    "similarity",
                    f"{config.similarity} score",
                    None if config.top_k else config.threshold,  # top-k: no fixed threshold
                ),
            )
        )
    if "vlm" in histograms:
        figures.append(
            (HIST_VLM, _score_plot(histograms["vlm"], "bins", "VLM", f"{config.vlm} VLM score", config.vlm_threshold))
        )
    if "thresholds" in summary:
        figures.append((YIELD_PRECISION, yield_precision_plot(config, summary)))
    for name, image in figures:
        save_png(image, out / name, {"prompt": name[:-4], "similarity": config.similarity, "vlm": config.vlm})
        written.append(name)
    return written


TRAIN_PAIRS = "train_pairs.json"
SHEET_ITEMS = 12  # pairs per contact sheet


def final_records(config: SynthConfig) -> list[dict]:
    """The filtered pairs with ``kept`` the last filter's decision: the VLM's where ``vlm.jsonl`` exists (a pair
    the similarity filter kept but the VLM has not scored yet counts as not kept), else the similarity filter's."""
    out = Path(config.output_dir)
    records = read_manifest(out / FILTERED)
    if not (out / VLM).is_file():
        return records
    scored = {r["key"]: r for r in read_manifest(out / VLM)}
    return [scored.get(r["key"], {**r, "kept": False, "vlm_score": None}) if r["kept"] else r for r in records]


def write_train_pairs(config: SynthConfig, records: list[dict]) -> Path:
    """The kept pairs in UNO's training JSON format (``[{"prompt", "image_paths", "image_tgt_path"}]``, paths
    relative to the file): the target panel's caption, the reference crop, the target panel."""
    kept = [
        {"prompt": r["caption"], "image_paths": [r["reference"]], "image_tgt_path": r["target"]}
        for r in records
        if r["kept"]
    ]
    return save_json(kept, Path(config.output_dir) / TRAIN_PAIRS)


def _sheet_label(config: SynthConfig, record: dict) -> str:
    vlm = "" if "vlm_score" not in record else f", VLM {'-' if record['vlm_score'] is None else record['vlm_score']}"
    return f"{config.similarity} {record['score']:.3f}{vlm}: {record['subject']}"


def write_contact_sheets(config: SynthConfig, records: list[dict]) -> None:
    """``kept.png`` and ``rejected.png``: the first pairs of each kind (the two-panel image, its scores beneath)."""
    from ..evaluate.world import contact_sheet

    out = Path(config.output_dir)
    for name, kept in (("kept", True), ("rejected", False)):
        items = []
        for record in [r for r in records if r["kept"] == kept][:SHEET_ITEMS]:
            with Image.open(out / record["source"]) as image:
                items.append((_sheet_label(config, record), image.convert("RGB")))
        if items:
            sheet = contact_sheet(items, columns=4, cell=config.size)
            save_png(sheet, out / f"{name}.png", {"prompt": f"{name} pairs", "similarity": config.similarity})


MULTI_SHEET_ROWS = 8


def write_multi_sheet(config: SynthConfig) -> str | None:
    """``multi.png``: a row per target (the first ones): the target, then each subject's crop and its re-generated
    reference with its score."""
    from ..evaluate.world import contact_sheet

    out = Path(config.output_dir)
    records = read_manifest(out / MULTI)[:MULTI_SHEET_ROWS]
    if not records:
        return None
    columns = 1 + 2 * max(config.multi_sizes)
    blank = Image.new("RGB", (config.size, config.size), "white")
    items = []
    for record in records:
        verdict = "not located" if record["score"] is None else f"{record['score']:.3f}"
        row = [(f"{'kept' if record['kept'] else 'rejected'} {verdict}: target", out / record["target"])]
        for k, ref in enumerate(record["references"]):
            score = (
                "not located" if ref["reference"] is None else "-" if ref["score"] is None else f"{ref['score']:.3f}"
            )
            row += [
                (f"crop {k + 1}" if ref["crop"] else f"crop {k + 1}: not located", ref["crop"] and out / ref["crop"]),
                (f"generated {k + 1}: {score}", ref["reference"] and out / ref["reference"]),
            ]
        for label, path in row:
            if path is None:  # a subject the detector did not locate: nothing to show
                items.append((label, blank))
                continue
            with Image.open(path) as image:
                items.append((label, image.convert("RGB")))
        items += [("", blank)] * (columns - len(row))
    sheet = contact_sheet(items, columns=columns, cell=config.size, aspect=1)
    save_png(sheet, out / "multi.png", {"prompt": "multi-subject targets and references"})
    return "multi.png"


def run_report(config: SynthConfig, progress: bool = True) -> Path:
    """Write ``report.json`` and ``report.md`` from whichever manifests exist (and, once a filter has run, the
    plots, the contact sheets and ``train_pairs.json`` of the pairs the last filter kept)."""
    out = Path(config.output_dir)
    summary = summarize(config)
    summary["multi"] = multi_summary(config)
    save_json(summary, out / "report.json")
    images = []
    if (out / FILTERED).is_file():
        records = final_records(config)
        write_train_pairs(config, records)
        write_contact_sheets(config, records)
        images = write_plots(config, summary)
    if summary["multi"]:
        images.append(write_multi_sheet(config))
    text = markdown(config, summary, images)
    return atomic_write(out / "report.md", lambda tmp: Path(tmp).write_text(text))
