"""Print the subject-driven evaluation table of docs/model.md from the reports that
scripts/evaluate_embedded.sh (v4: data/eval/v4) or scripts/rebuild_uno_stages.sh (v3: data/eval; v1, v2: data/eval/v1,
data/eval/v2) write. Rows whose report is missing are skipped.

    .venv/bin/python scripts/subject_table.py [EVAL_DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DEFAULT_EVAL = Path(__file__).resolve().parents[1] / "data" / "eval"
ROWS = [  # (label, full-caption report, look-free-caption report)
    ("base, caption only (no reference): the floor", "subject-caption-only", "lookfree-caption-only"),
    (
        "Stage I, UNO's captions only (rank 32, lr 2e-4, 3000 steps)",
        "subject-stage1-uno-captions",
        "lookfree-stage1-uno-captions",
    ),
    ("Stage I", "subject-stage1", "lookfree-stage1"),
    ("Stage II (from Stage I, on 2-3 subjects)", "subject-stage2", "lookfree-stage2"),
    ("Stage II with single-subject pairs mixed in (2/3 of batches)", "subject-stage2-mixed", "lookfree-stage2-mixed"),
    ("UnoPE none (Stage I recipe, 750 steps)", "unope-none", "lookfree-unope-none"),
    ("UnoPE height (750 steps)", "unope-height", "lookfree-unope-height"),
    ("UnoPE width (750 steps)", "unope-width", "lookfree-unope-width"),
    ("UnoPE diagonal (750 steps)", "unope-diagonal", "lookfree-unope-diagonal"),
]


def summary(eval_dir: Path, name: str | None) -> dict | None:
    path = eval_dir / name / "report.json" if name else None
    return json.loads(path.read_text())["summary"] if path and path.is_file() else None


def cell(value) -> str:
    return "-" if value is None else f"{value:g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "eval_dir",
        nargs="?",
        type=Path,
        default=DEFAULT_EVAL,
        metavar="EVAL_DIR",
        help="where the evaluation reports are (default: data/eval)",
    )
    args = parser.parse_args()
    print(
        "| model | identity match, 1 ref | identity match, 2 refs | both recognisable, 2 refs | background | "
        "placement, 1 ref | colour, 1 ref | copy-paste | look-free: colour, 1 ref | look-free: colour, 2 refs |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for label, full_name, free_name in ROWS:
        full, free = summary(args.eval_dir, full_name), summary(args.eval_dir, free_name)
        if full is None:
            continue
        one, two = full["by_kind"]["one"], full["by_kind"]["two"]
        free_one = free["by_kind"]["one"]["colour"] if free else None
        free_two = free["by_kind"]["two"]["colour"] if free else None
        print(
            f"| {label} | {cell(one['identity_match'])} | {cell(two['identity_match'])} | "
            f"{cell(two['all_recognisable'])} | {cell(full['background'])} | {cell(one['placement'])} | "
            f"{cell(one['colour'])} | {cell(one['copy_paste'])} | {cell(free_one)} | {cell(free_two)} |"
        )


if __name__ == "__main__":
    main()
