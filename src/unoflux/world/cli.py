"""`unoflux world ...`: build datasets, preview the world, check an image against a spec.

`register(subparsers)` adds the `world` command; each subcommand sets `func`, a callable taking the
parsed namespace and returning an exit code. The typed functions behind them are importable too.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from PIL import Image

from .build import KINDS, BuildConfig, build_dataset
from .checker import check
from .preview import contact_sheet
from .selftest import checker_accuracy
from .specs import spec_from_dict


def run_build(
    out: Path,
    kind: str,
    count: int,
    size: int,
    seed: int,
    shard_size: int,
    progress: bool = True,
    workers: int = 1,
    placeholders: float = 0.0,
) -> Path:
    config = BuildConfig(kind, count, size, seed, shard_size, placeholders)
    return build_dataset(out, config, progress=progress, workers=workers)


def run_show(out: Path, size: int, seed: int, columns: int) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(size, seed, columns).save(out)
    return out


def run_check(image_path: Path, spec_path: Path) -> dict:
    """The checker's verdict on an image, as a JSON-ready dict."""
    spec = spec_from_dict(json.loads(spec_path.read_text()))
    with Image.open(image_path) as image:
        return check(image.convert("RGB"), spec).to_dict()


def _selftest(args: argparse.Namespace) -> int:
    print(json.dumps(checker_accuracy(args.count, args.size, args.seed), indent=2))
    return 0


def _build(args: argparse.Namespace) -> int:
    manifest = run_build(
        args.out,
        args.kind,
        args.count,
        args.size,
        args.seed,
        args.shard_size,
        not args.quiet,
        args.workers,
        args.placeholders,
    )
    print(f"wrote {manifest}")
    return 0


def _show(args: argparse.Namespace) -> int:
    print(f"wrote {run_show(args.out, args.size, args.seed, args.columns)}")
    return 0


def _check(args: argparse.Namespace) -> int:
    for path in (args.image, args.spec):
        if not path.is_file():
            print(f"error: no such file: {path}", file=sys.stderr)
            return 2
    verdict = run_check(args.image, args.spec)
    print(json.dumps(verdict, indent=2))
    return 0 if verdict["all_ok"] else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    world = subparsers.add_parser("world", help="the synthetic world: build datasets, preview, check images")
    commands = world.add_subparsers(dest="world_command", required=True)

    build = commands.add_parser("build", help="render a sharded, resumable dataset (PNG + JSONL manifest)")
    build.add_argument("--out", type=Path, required=True, help="output folder (rerun to resume)")
    build.add_argument("--kind", choices=KINDS, default="scenes", help="what each record holds")
    build.add_argument("--count", type=int, required=True, help="number of records")
    build.add_argument("--size", type=int, default=128, help="image height in pixels")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--shard-size", type=int, default=500, help="records per shard")
    build.add_argument("--workers", type=int, default=1, help="processes rendering shards in parallel (same bytes)")
    build.add_argument(
        "--placeholders",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="pairs / multi-pairs: share of records whose captions name subject k with DreamO's [ref#k] "
        "(DreamO training; 0.5 as DreamO; default 0: none)",
    )
    build.add_argument("--quiet", action="store_true", help="no progress bar")
    build.set_defaults(func=_build)

    show = commands.add_parser("show", help="save a contact sheet PNG of random samples")
    show.add_argument("--out", type=Path, default=Path("world_samples.png"))
    show.add_argument("--size", type=int, default=128)
    show.add_argument("--seed", type=int, default=0)
    show.add_argument("--columns", type=int, default=8)
    show.set_defaults(func=_show)

    chk = commands.add_parser("check", help="judge an image against a scene spec JSON; exit 1 if any check fails")
    chk.add_argument("image", type=Path)
    chk.add_argument("--spec", type=Path, required=True, help="a spec JSON (SceneSpec/TwoPanelSpec.to_dict)")
    chk.set_defaults(func=_check)

    selftest = commands.add_parser("selftest", help="measure the checker's accuracy on rendered scenes")
    selftest.add_argument("--count", type=int, default=200)
    selftest.add_argument("--size", type=int, default=128)
    selftest.add_argument("--seed", type=int, default=123)
    selftest.set_defaults(func=_selftest)
