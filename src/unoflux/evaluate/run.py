"""A DreamBench run folder, from benchmark to report::

    RUN/benchmark.json   our spec (subjects, every real image, items)      RUN/scores.csv    one row per image
    RUN/batch.json       the same as UNO's eval JSON                       RUN/summary.json  means, CIs, provenance
    RUN/images/{i}_{j}.png + .json   the batch mode's outputs              RUN/report.html   the report

Generation is the batch mode itself (:func:`unoflux.generation.run_batch`: resumable, sharded), so a killed run
continues where it stopped; scoring and the report are rebuilt from the images every time.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict
from pathlib import Path

from .. import __version__
from ..errors import UnofluxError
from ..images import save_json
from .dreambench import PAPER_NUMBERS, Benchmark, load_benchmark, save_benchmark, to_uno_json
from .report import write_compare_report, write_run_report
from .scores import compare_scores, read_scores_csv, score_benchmark, summarize_scores, write_scores_csv

SETTINGS_LEFT_OUT = ("prompt", "references", "seed", "batch_item", "batch_image", "num_images", "model")


def prepare_run(run_dir: str | Path, benchmark: Benchmark) -> Path:
    """Write ``benchmark.json`` and ``batch.json``; a folder that already holds another benchmark is refused (a
    rerun with the same selection resumes)."""
    run_dir = Path(run_dir)
    spec = run_dir / "benchmark.json"
    if spec.is_file():
        before = load_benchmark(spec)
        if [asdict(i) for i in before.items] != [asdict(i) for i in benchmark.items] or before.root != benchmark.root:
            raise UnofluxError(
                f"{str(run_dir)!r} holds a run of another benchmark selection ({len(before.items)} items from "
                f"{before.root}); give a new --out, or the same subjects, prompts and data folder to resume"
            )
    save_benchmark(benchmark, spec)
    to_uno_json(benchmark, run_dir / "batch.json")
    return run_dir


def code_version() -> dict:
    """unoflux's version, and the git commit when it runs from a checkout (None otherwise)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
        git = commit.stdout.strip() if commit.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        git = None
    return {"unoflux": __version__, "git": git}


def _generation_record(images_dir: Path) -> tuple[dict, dict]:
    """(model, settings) from the first image's settings JSON (our batch mode's, or UNO's inference.py args)."""
    for meta in sorted(images_dir.glob("*_*.json")):
        try:
            data = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            model = data.get("model") if isinstance(data.get("model"), dict) else {}
            return model, {k: v for k, v in data.items() if k not in SETTINGS_LEFT_OUT}
    return {}, {}


def score_run(
    run_dir: str | Path,
    benchmark: Benchmark,
    scorer,
    images_per_prompt: int,
    images_dir: str | Path | None = None,
    masks_dir: str | Path | None = None,
    generated_masks_dir: str | Path | None = None,
    resamples: int = 1000,
) -> dict:
    """Score the run's images (``images_dir``: default ``RUN/images``) and write scores.csv, summary.json and
    report.html -> the summary."""
    run_dir = Path(run_dir)
    images_dir = Path(images_dir) if images_dir is not None else run_dir / "images"
    if not images_dir.is_dir():
        raise UnofluxError(f"generated-image folder {str(images_dir)!r} does not exist")
    scores, unreadable = score_benchmark(
        benchmark, images_dir, images_per_prompt, scorer, run_dir, masks_dir, generated_masks_dir
    )
    write_scores_csv(scores, run_dir / "scores.csv")
    model, settings = _generation_record(images_dir)
    summary = {
        "benchmark": {"kind": benchmark.kind, "root": benchmark.root, "items": len(benchmark.items),
                      "subjects": len(benchmark.subjects), "protocol": benchmark.protocol},
        "images_per_prompt": images_per_prompt,
        "images_dir": str(images_dir.resolve()),
        "scores": summarize_scores(scores, resamples),
        "paper": PAPER_NUMBERS.get(benchmark.kind),
        "unreadable_real_images": unreadable,
        "backbones": scorer.describe(),
        "model": model,
        "settings": settings,
        "code": code_version(),
        "statistics": {"interval": "95% percentile bootstrap", "resampled": "benchmark items", "resamples": resamples,
                       "seed": 0},
    }  # fmt: skip
    save_json(summary, run_dir / "summary.json")
    write_run_report(run_dir, summary, scores, benchmark)
    return summary


def compare_runs(run_a: str | Path, run_b: str | Path, out_dir: str | Path, names: tuple[str, str] | None = None):
    """compare.json and compare.html for two scored run folders -> the comparison."""
    run_a, run_b, out_dir = Path(run_a), Path(run_b), Path(out_dir)
    names = names or (run_a.name, run_b.name)
    scores = (read_scores_csv(run_a / "scores.csv"), read_scores_csv(run_b / "scores.csv"))
    comparison = {"a": str(run_a.resolve()), "b": str(run_b.resolve()), "names": list(names),
                  **compare_scores(*scores)}  # fmt: skip
    save_json(comparison, out_dir / "compare.json")
    write_compare_report(out_dir, comparison, (run_a, run_b), scores, names)
    return comparison


def print_summary(summary: dict) -> None:
    from .scores import METRIC_LABELS, format_interval

    block = summary["scores"]
    paper = summary.get("paper") or {}
    print(f"{block['scored']} of {block['images']} images scored ({len(block['failed'])} not)")
    for metric in block["metrics"]:
        reference = f"   paper {paper[metric]:.3f}" if metric in paper else ""
        print(f"  {METRIC_LABELS[metric]:<14} {format_interval(block['overall'][metric])}{reference}")


def print_comparison(comparison: dict) -> None:
    from .scores import METRIC_LABELS

    a, b = comparison["names"]
    print(f"{comparison['pairs']} image pairs; A = {a}, B = {b}")
    for metric, m in comparison["metrics"].items():
        print(
            f"  {METRIC_LABELS[metric]:<14} A {m['a']:.4f}  B {m['b']:.4f}  A-B {m['difference']:+.4f} "
            f"[{m['ci_low']:+.4f}, {m['ci_high']:+.4f}]  p = {m['p_value']:.4f}"
        )
