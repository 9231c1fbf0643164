"""Stage ``report``: per-stage counts and yields, and on the world the similarity filter's precision and recall
against the exact checker's truth at a range of thresholds (``report.md`` for people, ``report.json`` for tools);
contact sheets of kept and rejected pairs; the kept pairs as a UNO training JSON (``train_pairs.json``) that
``unoflux train`` reads with references."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..images import atomic_write, save_json, save_png
from .config import SynthConfig
from .filter import FILTERED
from .generate import IMAGES
from .manifest import read_manifest
from .prompts import PROMPTS
from .split import PAIRS


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
    summary = {"counts": counts, "similarity": config.similarity, "threshold": config.threshold}
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
    return summary


def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f} %"


def markdown(config: SynthConfig, summary: dict) -> str:
    counts = summary["counts"]
    lines = [
        "# Synthesis report",
        "",
        f"Output `{config.output_dir}`; {config.count} prompts ({'embedded world' if config.world else 'user vocabulary'}"
        f"), model `{config.model or 'embedded base'}`, panels {config.size} px, steps {config.steps or 'model default'}"
        f", locator `{config.locator}`, similarity `{config.similarity}` kept at score >= {config.threshold}.",
        "",
        "| stage | records | yield of the stage before |",
        "| --- | --- | --- |",
    ]
    previous = None
    for name in ("prompts", "generated", "pairs", "scored", "kept"):
        if counts.get(name) is None:
            continue
        share = counts[name] / previous if previous else None
        lines.append(f"| {name} | {counts[name]} | {_percent(share)} |")
        previous = counts[name]
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
    return "\n".join(lines) + "\n"


TRAIN_PAIRS = "train_pairs.json"
SHEET_ITEMS = 12  # pairs per contact sheet


def write_train_pairs(config: SynthConfig, records: list[dict]) -> Path:
    """The kept pairs in UNO's training JSON format (``[{"prompt", "image_paths", "image_tgt_path"}]``, paths
    relative to the file): the target panel's caption, the reference crop, the target panel."""
    kept = [
        {"prompt": r["caption"], "image_paths": [r["reference"]], "image_tgt_path": r["target"]}
        for r in records
        if r["kept"]
    ]
    return save_json(kept, Path(config.output_dir) / TRAIN_PAIRS)


def write_contact_sheets(config: SynthConfig, records: list[dict]) -> None:
    """``kept.png`` and ``rejected.png``: the first pairs of each kind (the two-panel image, its score beneath)."""
    from ..evaluate.world import contact_sheet

    out = Path(config.output_dir)
    for name, kept in (("kept", True), ("rejected", False)):
        items = []
        for record in [r for r in records if r["kept"] == kept][:SHEET_ITEMS]:
            with Image.open(out / record["source"]) as image:
                items.append((f"{config.similarity} {record['score']:.3f}: {record['subject']}", image.convert("RGB")))
        if items:
            sheet = contact_sheet(items, columns=4, cell=config.size)
            save_png(sheet, out / f"{name}.png", {"prompt": f"{name} pairs", "similarity": config.similarity})


def run_report(config: SynthConfig, progress: bool = True) -> Path:
    """Write ``report.json`` and ``report.md`` from whichever manifests exist (and, once the filter has run, the
    contact sheets and ``train_pairs.json``)."""
    out = Path(config.output_dir)
    summary = summarize(config)
    save_json(summary, out / "report.json")
    if (out / FILTERED).is_file():
        records = read_manifest(out / FILTERED)
        write_train_pairs(config, records)
        write_contact_sheets(config, records)
    text = markdown(config, summary)
    return atomic_write(out / "report.md", lambda tmp: Path(tmp).write_text(text))
