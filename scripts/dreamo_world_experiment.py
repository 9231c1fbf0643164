"""Issue 22, step 5: does DreamO's routing constraint + placeholder loss fix the world's two-reference binding failure?

Trains DreamO's three stages on the world (configs/dreamo_world_stage{1,2,3}.yaml; stage 1 starts its LoRA from the
embedded model's shipped UNO LoRA) twice from one shared stage 1:
arm ``on`` as the configs say (routing constraint and placeholder loss on in stages 2 and 3) and arm ``off``
with both weights 0 (``--set dreamo.routing_weight=0 --set dreamo.holder_weight=0``; same seeds, data and steps),
then evaluates both, and the shipped UNO LoRA of the embedded model, on the held-out subject cases (``unoflux evaluate
world-subject``: captions as held out, and with ``[ref#k]`` placeholders for the DreamO arms), runs the binding probe
(text only) on each arm, and writes a paired table (per held-out case, which arm got it right) to
``RUNS/dreamo-eval/table.md`` and ``table.json``.

Resumable: every step is skipped when its output is there (a dataset's manifest, a run's ``final/``, an evaluation's
``report.json``), and an interrupted training run continues from its newest checkpoint (``--resume``). Each command is
printed before it runs.

One thread per process (two threads on this shared 2-core machine ran ~7x slower); the arms can run side by side
once stage 1 is there (``--arm``):

    export OMP_NUM_THREADS=1
    .venv/bin/python scripts/dreamo_world_experiment.py --arm none                  # data + the shared stage 1
    .venv/bin/python scripts/dreamo_world_experiment.py --arm on --last-stage 2 &   # each arm on its own core
    .venv/bin/python scripts/dreamo_world_experiment.py --arm off --last-stage 2
    .venv/bin/python scripts/dreamo_world_experiment.py --arm route10x --last-stage 2  # routing weight x10
    .venv/bin/python scripts/dreamo_world_experiment.py --last-stage 2 --table-only
    .venv/bin/python scripts/dreamo_world_experiment.py --smoke --runs data/smoke   # every step, tiny (~10 min)
    .venv/bin/python scripts/dreamo_world_experiment.py --table-only                 # the table from the reports
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {stage: f"configs/dreamo_world_stage{stage}.yaml" for stage in (1, 2, 3)}
# (folder under DATA, kind, count, seed, shard size): what configs/dreamo_world_stage*.yaml name
DATASETS = {
    "pairs": ("pairs", 1500, 4, 500),
    "multi-pairs": ("multi-pairs", 1000, 5, 500),
    "pairs-q": ("pairs", 750, 6, 250),
    "multi-pairs-q": ("multi-pairs", 750, 7, 250),
}
STAGE_DATA = {1: ["pairs"], 2: ["multi-pairs"], 3: ["pairs-q", "multi-pairs-q"]}
ARMS = {
    "on": [],
    "off": ["--set", "dreamo.routing_weight=0", "--set", "dreamo.holder_weight=0"],
    # the probe the first result called for: the routing constraint 10x the calibrated weight (placeholder loss as on)
    "route10x": ["--set", "dreamo.routing_weight=3.0e-3"],
}
DEFAULT_ARMS = ("on", "off")  # what a run without --arm trains; route10x only when asked
REF_SIDES = "128,80"  # the configs' reference_long_side_single / _multi
# Paired criteria per held-out case: (label, kind of case, the case's verdict -> right or not)
CRITERIA = [
    ("two refs: both recognisable (colour + shape)", "two", lambda item: item["all_recognisable"]),
    ("two refs: both shapes right", "two", lambda item: all(s["shape_ok"] for s in item["verdict"]["subjects"])),
    (
        "two refs: both placements right",
        "two",
        lambda item: all(s["placement_ok"] for s in item["verdict"]["subjects"]),
    ),
    ("two refs: both identities matched", "two", lambda item: all(item["identity_wins"])),
    ("one ref: recognisable", "one", lambda item: item["all_recognisable"]),
    ("one ref: identity matched", "one", lambda item: all(item["identity_wins"])),
    ("one ref: copy-paste (lower is better)", "one", lambda item: item["copy_paste"]),
]


def run(command: list[str], dry: bool) -> None:
    print("+", shlex.join(command), flush=True)
    if not dry:
        subprocess.run(command, check=True, cwd=ROOT)


def unoflux(*args: str) -> list[str]:
    return [sys.executable, "-m", "unoflux", *args]


def build_data(data: Path, scale: float, last_stage: int, dry: bool) -> None:
    """The datasets of stages 1 .. ``last_stage``."""
    for name, (kind, count, seed, shard) in DATASETS.items():
        if not any(name in STAGE_DATA[stage] for stage in range(1, last_stage + 1)):
            continue
        out = data / name
        if (out / "manifest.jsonl").is_file():
            continue
        count = max(16, round(count * scale))
        run(
            unoflux(
                "world", "build", "--out", str(out), "--kind", kind, "--count", str(count), "--size", "128",
                "--seed", str(seed), "--shard-size", str(min(shard, count)), "--placeholders", "0.5",
                "--workers", "2", "--quiet",
            ),
            dry,
        )  # fmt: skip


def train_stage(stage: int, out: Path, init: Path | None, data: Path, extra: list[str], dry: bool) -> Path:
    """Train one stage (``init``: the previous stage's final; None: the config's own ``init_lora``)."""
    if (out / "final" / "dreamo.safetensors").is_file():
        return out / "final"
    sets = ["--set", "data=[" + ", ".join(str(data / name) for name in STAGE_DATA[stage]) + "]"]
    sets += ["--set", f"init_lora={init}"] if init else []
    run(unoflux("train", "--config", CONFIGS[stage], "--output-dir", str(out), "--resume", *sets, *extra), dry)
    return out / "final"


def evaluate(name: str, out: Path, model_args: list[str], extra: list[str], dry: bool) -> None:
    if (out / name / "report.json").is_file():
        return
    command = unoflux(
        "evaluate", "world-subject", "--out", str(out / name), "--ref-long-side", REF_SIDES, *model_args, *extra
    )
    run(command, dry)


def binding_probe(name: str, final: Path, out: Path, limit: int | None, dry: bool) -> None:
    path = out / f"binding-{name}.txt"
    if path.is_file() or dry:
        print("+ binding probe:", final, "->", path)
        return
    command = [sys.executable, "scripts/probes/binding_probe.py", "--dreamo", str(final)]
    command += ["--limit", str(limit)] if limit else []
    print("+", shlex.join(command), ">", path, flush=True)
    result = subprocess.run(command, check=True, cwd=ROOT, capture_output=True, text=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(result.stdout)


def sign_test(a: int, b: int) -> float:
    """Two-sided exact binomial p of a vs b discordant cases under 'no difference' (McNemar's exact test)."""
    n = a + b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(a, b) + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_table(out: Path, rows: list[tuple[str, str, str]]) -> str:
    """Markdown: per criterion, each compared pair of evaluations (label, report A, report B) with the percent of
    each and the paired counts (both right, only A, only B, neither) and McNemar's exact p."""
    lines = [
        "| criterion | A | B | A % | B % | both | only A | only B | neither | p (McNemar) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    records = []
    for label, a_name, b_name in rows:
        reports = [out / name / "report.json" for name in (a_name, b_name)]
        if not all(r.is_file() for r in reports):
            continue
        items = [{item["id"]: item for item in json.loads(r.read_text())["items"]} for r in reports]
        for criterion, kind, right in CRITERIA:
            ids = [i for i in items[0] if i in items[1] and (kind == "two") == i.startswith("multi-pair")]
            if not ids:
                continue
            a = [bool(right(items[0][i])) for i in ids]
            b = [bool(right(items[1][i])) for i in ids]
            counts = {
                "both": sum(x and y for x, y in zip(a, b)),
                "only_a": sum(x and not y for x, y in zip(a, b)),
                "only_b": sum(y and not x for x, y in zip(a, b)),
                "neither": sum(not x and not y for x, y in zip(a, b)),
            }
            p = sign_test(counts["only_a"], counts["only_b"])
            record = {"comparison": label, "criterion": criterion, "a": a_name, "b": b_name, "cases": len(ids)}
            record |= {"a_percent": 100 * sum(a) / len(ids), "b_percent": 100 * sum(b) / len(ids), **counts, "p": p}
            records.append(record)
            lines.append(
                f"| {criterion} | {a_name} | {b_name} | {record['a_percent']:.1f} | {record['b_percent']:.1f} | "
                f"{counts['both']} | {counts['only_a']} | {counts['only_b']} | {counts['neither']} | {p:.3g} |"
            )
    (out / "table.json").write_text(json.dumps(records, indent=1) + "\n")
    table = "\n".join(lines) + "\n"
    (out / "table.md").write_text(table)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, default=Path("data/runs"), help="training runs and evaluations")
    parser.add_argument("--data", type=Path, help="the datasets (default: RUNS/../world128-dreamo; --smoke: RUNS/data)")
    parser.add_argument("--smoke", action="store_true", help="tiny: 0.5%% of the data, 2 steps a stage, 2 cases a kind")
    parser.add_argument("--eval-limit", type=int, help="only the first N held-out cases of each kind")
    parser.add_argument("--eval-steps", type=int, help="sampling steps of the evaluation (default: the model's)")
    parser.add_argument("--no-binding-probe", action="store_true")
    parser.add_argument("--table-only", action="store_true", help="only write the table from existing reports")
    parser.add_argument(
        "--arm", choices=[*ARMS, "none"], help="only this arm (none: data and stage 1); default: on and off"
    )
    parser.add_argument("--last-stage", type=int, choices=(2, 3), default=3, help="evaluate each arm after this stage")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args()
    runs = args.runs
    data = args.data or (runs / "data" if args.smoke else runs.parent / "world128-dreamo")
    evals = runs / "dreamo-eval"
    train_extra, eval_extra = [], []
    if args.smoke:  # every step of the chain, at a size that proves it runs
        train_extra = ["--max-steps", "2", "--set", "batch_size=2", "--set", "log_every=1"]
        args.eval_limit = args.eval_limit or 2
        args.eval_steps = args.eval_steps or 4
    if args.eval_limit:
        eval_extra += ["--limit", str(args.eval_limit)]
    if args.eval_steps:
        eval_extra += ["--steps", str(args.eval_steps)]
    tag = "" if args.last_stage == 3 else f"-stage{args.last_stage}"  # evaluation names: on, off-stage2, ...
    comparisons = [
        ("DreamO losses on vs off", f"on{tag}", f"off{tag}"),
        ("DreamO losses on vs off, [ref#k] prompts", f"on{tag}-placeholders", f"off{tag}-placeholders"),
        ("DreamO (losses on) vs the shipped UNO LoRA", f"on{tag}", "uno"),
        ("DreamO (losses off) vs the shipped UNO LoRA", f"off{tag}", "uno"),
        ("routing 10x vs losses off", f"route10x{tag}", f"off{tag}"),
        ("routing 10x vs losses off, [ref#k] prompts", f"route10x{tag}-placeholders", f"off{tag}-placeholders"),
        ("routing 10x vs the shipped UNO LoRA", f"route10x{tag}", "uno"),
    ]
    if not args.table_only:
        build_data(data, 0.02 if args.smoke else 1.0, args.last_stage, args.dry_run)
        shared = train_stage(1, runs / "dreamo-stage1", None, data, train_extra, args.dry_run)
        for arm, sets in ARMS.items():
            if arm not in (DEFAULT_ARMS if args.arm is None else (args.arm,)):
                continue
            previous = shared
            for stage in range(2, args.last_stage + 1):
                previous = train_stage(
                    stage, runs / f"dreamo-{arm}-stage{stage}", previous, data, [*sets, *train_extra], args.dry_run
                )
            model = ["--dreamo", str(previous), "--base-only"]
            evaluate(f"{arm}{tag}", evals, model, eval_extra, args.dry_run)
            evaluate(f"{arm}{tag}-placeholders", evals, model, [*eval_extra, "--placeholders"], args.dry_run)
            if not args.no_binding_probe:
                binding_probe(f"{arm}{tag}", previous, evals, args.eval_limit, args.dry_run)
        if args.arm in (None, "off"):  # the embedded model with its shipped UNO LoRA
            evaluate("uno", evals, [], eval_extra, args.dry_run)
    if args.dry_run:
        return
    evals.mkdir(parents=True, exist_ok=True)
    print(paired_table(evals, comparisons))
    print(f"wrote {evals / 'table.md'} and {evals / 'table.json'}")


if __name__ == "__main__":
    main()
