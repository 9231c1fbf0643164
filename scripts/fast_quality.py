"""Fast mode's quality cost on the embedded world: each speed setting against exact mode, case by case.

For a fixed held-out subset (the first N one-reference and N two-reference subject cases, and the first M
text-to-image prompts; the evaluations' own seeds and captions), every setting generates every case, the settings
taking turns within each case so a busy machine slows them alike. Per setting: the time ratio to exact mode (sum
of seconds generating each image; the checker's time excluded), the world checker's metrics and their change
from exact mode (paired: the same cases), and the pixel PSNR to exact mode's image. Writes ``cases.jsonl`` (one line per case and setting, appended
as it goes: a killed run resumes where it stopped), ``summary.json``, ``table.md`` and ``speed_quality.png``.

    .venv/bin/python scripts/fast_quality.py --out data/eval/fast --subject-cases 20 --t2i-cases 40
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

# name -> pipeline keyword arguments (SamplingOptions fields); "exact" first: the others are compared with it
SETTINGS = {
    "exact": {},
    "reference refresh 0 (first step only)": {"reference_refresh": 0},
    "step cache 0.35, reference refresh 0 (the first --fast)": {"step_cache": 0.35, "reference_refresh": 0},
    "TaylorSeer 2": {"taylorseer": 2},
    "TaylorSeer 3": {"taylorseer": 3},
    "TaylorSeer 4": {"taylorseer": 4},
    "TaylorSeer 5": {"taylorseer": 5},
    "TaylorSeer 6": {"taylorseer": 6},
    "TaylorSeer 8": {"taylorseer": 8},
    "TaylorSeer 3, reference refresh 0": {"taylorseer": 3, "reference_refresh": 0},
    "TaylorSeer 6, reference refresh 0": {"taylorseer": 6, "reference_refresh": 0},
    "12 steps instead of 25": {"steps": 12},
    "step cache 0.5": {"step_cache": 0.5},
    "step cache 0.5, reference refresh 0": {"step_cache": 0.5, "reference_refresh": 0},
    "MagCache 0.06": {"magcache": 0.06},
    "MagCache 0.12": {"magcache": 0.12},
    "MagCache 0.25": {"magcache": 0.25},
    "MagCache 0.25, reference refresh 0": {"magcache": 0.25, "reference_refresh": 0},
    "MagCache 0.4": {"magcache": 0.4},
    "MagCache 0.6": {"magcache": 0.6},
    "16 steps": {"steps": 16},
    "16 steps, MagCache 0.25": {"steps": 16, "magcache": 0.25},
    "16 steps, step cache 0.35, reference refresh 0": {"steps": 16, "step_cache": 0.35, "reference_refresh": 0},
    "18 steps, MagCache 0.25, reference refresh 0": {"steps": 18, "magcache": 0.25, "reference_refresh": 0},
}
PRESET = "16 steps, MagCache 0.25"  # what --fast runs (options.FAST_PRESET, FAST_STEP_SHARE): red in the plot
SUBJECT_METRICS = {  # column -> (kind, summary key): what users of subject-driven generation notice
    "colour, 1 ref": ("one", "colour"),
    "placement, 1 ref": ("one", "placement"),
    "identity match": (None, "identity_match"),
    "both recognisable, 2 refs": ("two", "all_recognisable"),
}
T2I_METRICS = {"t2i: scene all correct": "scene_all_correct", "t2i: colour": "colour", "t2i: shape": "shape"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for cases.jsonl, summary.json, table.md")
    parser.add_argument("--subject-cases", type=int, default=20, help="one- and two-reference cases each (20)")
    parser.add_argument("--t2i-cases", type=int, default=40, help="text-to-image prompts (40)")
    parser.add_argument(
        "--settings", help="names of SETTINGS to run, separated by ';' (names hold commas; default: all; exact always)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument(
        "--magcache-skips", type=int, help="MagCache's most skipped steps in a row for this run (default: fast.py's 3)"
    )
    parser.add_argument(
        "--magcache-retention", type=float, help="MagCache's always-run first fraction of steps (default: 0.2)"
    )
    parser.add_argument("--summarize", action="store_true", help="only summarize the cases already generated")
    parser.add_argument("--plot", type=Path, help="also write the speed/quality plot here (e.g. docs/images/...)")
    args = parser.parse_args()

    import numpy as np
    import torch

    from unoflux.checkpoints import load_pipeline
    from unoflux.evaluate.subject import judge_case, reference_shots, summarize_subject
    from unoflux.evaluate.world import generate_heldout, summarize
    from unoflux.world.checker import check
    from unoflux.world.heldout import heldout_prompts, heldout_subject_pairs

    chosen = dict(SETTINGS)
    if args.settings:
        names = ["exact", *(n.strip() for n in args.settings.split(";") if n.strip() != "exact")]
        unknown = [n for n in names if n not in SETTINGS]
        if unknown:
            parser.error(f"--settings: {unknown[0]!r} is not one of: {', '.join(SETTINGS)}")
        chosen = {n: SETTINGS[n] for n in names}
    if args.threads:
        torch.set_num_threads(args.threads)
    from unoflux import fast

    if args.magcache_skips is not None:
        fast.MAGCACHE_MAX_SKIPS = args.magcache_skips
    if args.magcache_retention is not None:
        fast.MAGCACHE_RETENTION = args.magcache_retention
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "cases.jsonl"
    done = {(r["case"], r["setting"]) for r in _records(log)}
    pipe = load_pipeline(dtype="fp32")
    pipe.set_progress_bar_config(disable=True)
    size = pipe.model_defaults["width"]
    pairs = list(heldout_subject_pairs())
    ones = [p for p in pairs if len(p.references) == 1][: args.subject_cases]
    twos = [p for p in pairs if len(p.references) > 1][: args.subject_cases]
    prompts = list(heldout_prompts())[: args.t2i_cases]
    subject_cases = ones + twos
    # kinds interleaved (one reference, two, text only, ...): a run stopped early has a bit of each
    streams = [[("subject", p) for p in ones], [("subject", p) for p in twos], [("t2i", p) for p in prompts]]
    cases = [s[k] for k in range(max(map(len, streams))) for s in streams if k < len(s)]

    for number, (kind, case) in enumerate(cases, 1):
        if args.summarize or all((case.id, name) in done for name in chosen):
            continue
        exact_pixels = None
        for name, options in chosen.items():
            if kind == "subject":
                shots = reference_shots(case, size)
                start = time.perf_counter()  # generation only: the checker's time is not the setting's
                output = pipe(case.caption, shots, width=size, height=size, seed=case.seed, **options)
                seconds = time.perf_counter() - start
                verdict = judge_case(output.images[0], case).to_dict()
            else:
                start = time.perf_counter()
                output = generate_heldout(pipe, case, size, None if not options else _options(options))
                seconds = time.perf_counter() - start
                verdict = check(output.images[0], case.spec).to_dict()
            pixels = np.asarray(output.images[0], dtype=np.float64) / 255
            exact_pixels = pixels if exact_pixels is None else exact_pixels
            mse = float(np.mean((pixels - exact_pixels) ** 2))
            record = {"case": case.id, "kind": kind, "setting": name, "seconds": round(seconds, 4),
                      "psnr": None if mse == 0 else round(10 * float(np.log10(1 / mse)), 2), "verdict": verdict}  # fmt: skip
            if (case.id, name) not in done:
                with log.open("a") as f:
                    f.write(json.dumps(record) + "\n")
        print(f"case {number}/{len(cases)} ({case.id}) done", flush=True)

    summary = summarize_run(_records(log), subject_cases, prompts, summarize_subject, summarize)
    summary["magcache"] = {"max_skips": fast.MAGCACHE_MAX_SKIPS, "retention": fast.MAGCACHE_RETENTION}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    table = markdown_table(summary)
    (args.out / "table.md").write_text(table)
    print(table)
    plot_speed_quality(summary, args.plot or args.out / "speed_quality.png")


def _options(values: dict):
    from unoflux.options import SamplingOptions

    return SamplingOptions(**values)


def _records(log: Path) -> list[dict]:
    if not log.is_file():
        return []
    lines = log.read_text().splitlines()
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # the last line of a killed run
            break
    return records


def summarize_run(records, subject_cases, prompts, summarize_subject, summarize) -> dict:
    """Per setting: seconds, the time ratio to exact, PSNR, and the metrics (from the verdicts as the evaluations
    count them) with their change from exact mode."""
    from unoflux.evaluate.subject import CaseResult
    from unoflux.world.checker import SceneVerdict, TwoPanelVerdict

    by_setting: dict[str, dict[str, dict]] = {}
    for r in records:
        by_setting.setdefault(r["setting"], {})[r["case"]] = r
    complete = [s for s in SETTINGS if s in by_setting]
    case_ids = set.intersection(*(set(by_setting[s]) for s in complete)) if complete else set()
    subject_cases = [c for c in subject_cases if c.id in case_ids]
    prompts = [p for p in prompts if p.id in case_ids]
    out = {"cases": {"subject": len(subject_cases), "t2i": len(prompts)}, "settings": {}}
    for name in complete:
        rows = by_setting[name]
        results = [_case_result(CaseResult, SceneVerdict, c, rows[c.id]["verdict"]) for c in subject_cases]
        verdicts = [(p, _verdict(SceneVerdict, TwoPanelVerdict, rows[p.id]["verdict"])) for p in prompts]
        subject, t2i = summarize_subject(results), summarize(verdicts)
        metrics = {}
        for column, (kind, key) in SUBJECT_METRICS.items():
            metrics[column] = (subject["by_kind"][kind] if kind else subject)[key]
        for column, key in T2I_METRICS.items():
            metrics[column] = t2i[key]
        psnrs = [rows[c]["psnr"] for c in case_ids if rows[c]["psnr"] is not None]
        out["settings"][name] = {
            "options": SETTINGS[name],
            "seconds_subject": sum(rows[c.id]["seconds"] for c in subject_cases),
            "seconds_t2i": sum(rows[p.id]["seconds"] for p in prompts),
            "psnr_mean": round(sum(psnrs) / len(psnrs), 2) if psnrs else None,
            "metrics": metrics,
        }
    exact = out["settings"].get("exact")
    for row in out["settings"].values():
        for kind in ("subject", "t2i"):  # None: no cases of that kind in this run
            seconds = row[f"seconds_{kind}"]
            row[f"speedup_{kind}"] = round(exact[f"seconds_{kind}"] / seconds, 2) if seconds else None
        row["change"] = {k: None if v is None else round(v - exact["metrics"][k], 1) for k, v in row["metrics"].items()}
    return out


def _times(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def _case_result(CaseResult, SceneVerdict, pair, verdict: dict):
    """Rebuild what summarize_subject reads from a stored verdict record."""
    return CaseResult(
        pair, SceneVerdict.from_dict(verdict["verdict"]), tuple(verdict["identity_wins"]), tuple(verdict["margins"]),
        verdict["copy_paste"],
    )  # fmt: skip


def _verdict(SceneVerdict, TwoPanelVerdict, verdict: dict):
    return TwoPanelVerdict.from_dict(verdict) if "left" in verdict else SceneVerdict.from_dict(verdict)


def markdown_table(summary: dict) -> str:
    columns = list(SUBJECT_METRICS) + list(T2I_METRICS)
    head = "| setting | speed-up, subject | speed-up, t2i | PSNR to exact (dB) | " + " | ".join(columns) + " |"
    lines = [head, "|" + " --- |" * (4 + len(columns))]
    for name, row in summary["settings"].items():
        cells = [
            "-" if row["metrics"][c] is None
            else f"{row['metrics'][c]:g}" + ("" if name == "exact" else f" ({row['change'][c]:+g})")
            for c in columns
        ]  # fmt: skip
        psnr = "exact" if row["psnr_mean"] is None else f"{row['psnr_mean']:.1f}"
        lines.append(
            f"| {name} | {_times(row['speedup_subject'])} | {_times(row['speedup_t2i'])} | {psnr} | "
            + " | ".join(cells)
            + " |"
        )
    n = summary["cases"]
    lines.append("")
    lines.append(f"{n['subject']} subject cases (half one-reference, half two), {n['t2i']} text-to-image prompts.")
    return "\n".join(lines) + "\n"


def plot_speed_quality(summary: dict, path: Path) -> None:
    """Speed-up (subject cases) against PSNR to exact mode, one labelled point per setting (unoflux.plots: PIL)."""
    from unoflux import plots

    rows = {k: v for k, v in summary["settings"].items() if v["psnr_mean"] is not None}
    kind = "subject" if summary["cases"]["subject"] else "t2i"  # a run without subject cases: text-to-image
    xs = [v[f"speedup_{kind}"] for v in rows.values()] + [1.0]
    ys = [v["psnr_mean"] for v in rows.values()]
    x_range, y_range = (1.0, max(xs) * 1.1), (min(ys) - 2, max(ys) + 2)
    axes = plots.Axes(
        x_range,
        y_range,
        size=(900, 520),
        x_label=f"speed-up over exact mode ({'subject' if kind == 'subject' else 'text-to-image'} cases, per image)",
        y_label="PSNR to exact mode's image (higher: closer)",
        x_ticks=[(x, f"{x:.1f}x") for x in plots.nice_ticks(*x_range)],
        y_ticks=[(y, f"{y:g} dB") for y in plots.nice_ticks(*y_range)],
    )
    for k, (name, v) in enumerate(rows.items(), 1):  # numbered points, named in the key (names overlap)
        colour = plots.RED if name == PRESET else plots.BLUE
        axes.points([v[f"speedup_{kind}"]], [v["psnr_mean"]], colour, radius=5, texts=[str(k)], label=f"{k}  {name}")
    axes.legend("top right")
    path.parent.mkdir(parents=True, exist_ok=True)
    axes.image.save(path)


if __name__ == "__main__":
    main()
