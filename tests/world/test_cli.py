import argparse
import json

from unoflux.world import make_identity, render_scene, single
from unoflux.world.cli import register


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unoflux")
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def test_parser_knows_the_world_commands():
    args = _parser().parse_args(
        ["world", "build", "--out", "d", "--kind", "pairs", "--count", "3", "--shard-size", "2"]
    )
    assert (args.kind, args.count, args.size, args.seed, args.shard_size) == ("pairs", 3, 128, 0, 2)
    assert callable(args.func)


def test_build_show_and_check_run(tmp_path, capsys):
    parser = _parser()
    out = tmp_path / "data"
    args = parser.parse_args(["world", "build", "--out", str(out), "--count", "2", "--size", "32", "--quiet"])
    assert args.func(args) == 0 and (out / "manifest.jsonl").exists()

    sheet = tmp_path / "sheet.png"
    args = parser.parse_args(["world", "show", "--out", str(sheet), "--size", "32", "--columns", "2"])
    assert args.func(args) == 0 and sheet.exists()

    spec = single(make_identity(2, "cross", "green", "plain"), "city", "right", "large", seed=0)
    image, spec_path = tmp_path / "img.png", tmp_path / "spec.json"
    render_scene(spec, 128).image.save(image)
    spec_path.write_text(json.dumps(spec.to_dict()))
    args = parser.parse_args(["world", "check", str(image), "--spec", str(spec_path)])
    capsys.readouterr()
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out)["all_ok"] is True


def test_check_reports_missing_files(tmp_path):
    args = _parser().parse_args(["world", "check", str(tmp_path / "nope.png"), "--spec", str(tmp_path / "s.json")])
    assert args.func(args) == 2
