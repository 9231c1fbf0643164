"""DreamBench benchmark composition, pinned on the shared 24-subject folder and against UNO's eval JSON lines."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from dreambench_helpers import DREAMBENCH, needs_dreambench

from unoflux.errors import UnofluxError
from unoflux.evaluate.dreambench import (
    UNO_PAIRS,
    UNO_REFERENCE_IMAGES,
    load_benchmark,
    multi_subject_benchmark,
    parse_indices,
    parse_pairs,
    prompt_group,
    read_dreambench,
    save_benchmark,
    single_subject_benchmark,
    to_uno_json,
)
from unoflux.generation import read_batch

pytestmark = needs_dreambench


def test_single_subject_benchmark_on_the_shared_folder():
    bench = single_subject_benchmark(DREAMBENCH)
    assert len(bench.subjects) == 24 and len(bench.items) == 24 * 25  # six DreamBooth subjects are not shared
    assert Counter(i.subjects[0] for i in bench.items) == {name: 25 for name in bench.subjects}
    by_id = {i.id: i for i in bench.items}
    # object and live-subject lists by class, class noun and no identifier (UNO's dreambench_singleip.json lines)
    assert by_id["backpack/00"].prompt == "a backpack in the jungle"
    assert by_id["bear_plushie/10"].prompt == "a stuffed animal with a wheat field in the background"
    assert by_id["dog/10"].prompt == "a dog wearing a red hat"
    assert by_id["cat/24"].prompt == "a cube shaped cat"
    assert [i.prompt for i in bench.items if i.subjects == ["dog"]] == [
        i.prompt.replace("cat", "dog") for i in bench.items if i.subjects == ["cat"]
    ]
    # reports group by DreamBooth prompt: index 10 is another prompt for live subjects
    assert prompt_group(by_id["dog/10"].template) == "a <subject> wearing a red hat"
    assert prompt_group(by_id["backpack/10"].template) == "a <subject> with a wheat field in the background"
    assert by_id["dog/20"].template == by_id["backpack/20"].template == "a red {0} {1}"
    # the conditioning image is UNO's choice; scoring uses every image of the folder
    assert by_id["dog3/00"].references == ["dog3/05.jpg"] and by_id["backpack/07"].references == ["backpack/02.jpg"]
    assert all(i.references == [f"{i.subjects[0]}/{UNO_REFERENCE_IMAGES[i.subjects[0]]}"] for i in bench.items)
    assert bench.subjects["duck_toy"].images == [f"duck_toy/0{k}.jpg" for k in range(4)]
    assert {s.name for s in bench.subjects.values() if s.live} == {"cat", "dog", "dog2", "dog3", "dog5", "dog7", "dog8"}


def test_multi_subject_benchmark_follows_unos_pairs_and_wording():
    bench = multi_subject_benchmark(DREAMBENCH)
    present = [p for p in UNO_PAIRS if all((DREAMBENCH / n).is_dir() for n in p)]
    assert len(present) == 17 and len(bench.items) == 17 * 25
    assert [tuple(i.subjects) for i in bench.items[::25]] == present  # UNO's order
    by_id = {i.id: i for i in bench.items}
    # lines of UNO's datasets/dreambench_multiip.json
    assert by_id["backpack_dog+bear_plushie/00"].prompt == "a backpack and a stuffed animal in the jungle"
    assert by_id["backpack_dog+bear_plushie/20"].prompt == "a red backpack and a red stuffed animal"
    assert by_id["cat+dog/09"].prompt == "a cat and a dog on top of a purple rug in a forest"
    assert by_id["cat+dog/10"].prompt == "a cat wearing a red hat, next to it is a dog"
    assert by_id["cat+backpack/24"].prompt == "a cube shaped cat, next to it is a backpack"
    assert by_id["dog+can/13"].prompt == "a dog wearing a black top hat and a monocle, next to it is a can"
    assert by_id["cat+dog/00"].references == ["cat/04.jpg", "dog/02.jpg"]
    every = multi_subject_benchmark(DREAMBENCH, pairs="all", prompts="0")
    assert len(every.items) == 24 * 23 // 2
    assert all(every.subjects[i.subjects[0]].live or not every.subjects[i.subjects[1]].live for i in every.items)
    chosen = multi_subject_benchmark(DREAMBENCH, pairs=parse_pairs("can+clock"), prompts="20-21")
    assert [i.prompt for i in chosen.items] == ["a red can and a red clock", "a purple can and a purple clock"]


def test_any_folder_in_the_layout(tmp_path):
    root = tmp_path / "bench"
    for name, count in (("teapot_x", 2), ("dog", 3)):
        (root / name).mkdir(parents=True)
        for k in range(count):
            shutil.copy(DREAMBENCH / "dog" / "00.jpg", root / name / f"{k:02d}.jpg")
    text = (DREAMBENCH / "prompts_and_classes.txt").read_text()
    (root / "prompts_and_classes.txt").write_text(text.replace("teapot,teapot", "teapot,teapot\nteapot_x,teapot"))
    bench = single_subject_benchmark(root, prompts="0,24")
    assert [i.id for i in bench.items] == ["dog/00", "dog/24", "teapot_x/00", "teapot_x/24"]
    assert bench.items[0].references == ["dog/02.jpg"]  # UNO's, present here
    assert bench.items[2].references == ["teapot_x/00.jpg"]  # not in UNO's table: the first image
    assert bench.items[3].prompt == "a cube shaped teapot"
    (root / "stranger").mkdir()
    shutil.copy(DREAMBENCH / "dog" / "00.jpg", root / "stranger" / "00.jpg")
    with pytest.raises(UnofluxError, match="'stranger' .* has no class in prompts_and_classes.txt"):
        read_dreambench(root)
    with pytest.raises(UnofluxError, match="has no prompts_and_classes.txt"):
        read_dreambench(DREAMBENCH / "dog")
    with pytest.raises(UnofluxError, match="subject 'rc_car' is not in"):
        single_subject_benchmark(DREAMBENCH, subjects=["rc_car"])


def test_selections_are_checked():
    assert parse_indices("0,3,10-12,3", 25) == [0, 3, 10, 11, 12]
    assert parse_indices(None, 3) == [0, 1, 2]
    for bad, message in (("25", "there are 25"), ("3-1", "names prompt 1"), ("a", "not a list of indices")):
        with pytest.raises(UnofluxError, match=message):
            parse_indices(bad, 25)
    with pytest.raises(UnofluxError, match="'cat' in 'cat' is not two names"):
        parse_pairs("cat")


def test_spec_and_uno_json_both_ways(tmp_path):
    bench = multi_subject_benchmark(DREAMBENCH, prompts="0,10")
    assert load_benchmark(save_benchmark(bench, tmp_path / "benchmark.json")) == bench
    uno = to_uno_json(bench, tmp_path / "run" / "batch.json")
    rows = json.loads(uno.read_text())
    assert [row["prompt"] for row in rows] == [i.prompt for i in bench.items]
    assert all(not Path(p).is_absolute() for row in rows for p in row["image_paths"])  # the folder can move
    back = load_benchmark(uno)  # UNO's format: subjects from the folders, prompt index by order
    assert [(i.id, i.subjects, i.prompt, i.references) for i in back.items] == [
        (f"{'+'.join(i.subjects)}/{k:02d}", i.subjects, i.prompt, i.references)
        for k, i in zip([0, 1] * (len(bench.items) // 2), bench.items, strict=True)
    ]
    assert back.subjects["cat"].images == bench.subjects["cat"].images and back.subjects["cat"].live
    # our batch mode reads it as it reads any UNO eval JSON, references resolved
    items = read_batch(uno)
    assert [Path(p).resolve() for p in items[0]["image_paths"]] == bench.reference_paths(bench.items[0])
