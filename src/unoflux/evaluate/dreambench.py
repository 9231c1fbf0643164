"""DreamBench benchmark specs: which prompts, which reference images, which real images each generation is scored
against, built from any folder in the DreamBooth dataset's layout (``<subject>/NN.jpg`` + ``prompts_and_classes.txt``).

Protocol (docs/evaluation.md says the same):

- **Prompts.** DreamBooth's 25 object prompts for objects and 25 live-subject prompts for live subjects (the cats
  and dogs: class ``cat`` or ``dog``), with the class noun and no rare-token identifier, as UNO's
  ``datasets/dreambench_singleip.json``: ``'a {0} {1} in the jungle'`` -> ``"a backpack in the jungle"``.
- **Conditioning reference.** One image per subject, the one UNO's eval JSON names (:data:`UNO_REFERENCE_IMAGES`,
  from bytedance/UNO at d305981); a subject UNO does not list gets its first image in name order.
- **Scoring images.** Every image of the subject's folder (DreamBooth: "average pairwise similarity between
  generated and real images"), not only the conditioning one.
- **Multi-subject.** UNO's 30 two-subject combinations (:data:`UNO_PAIRS`, from ``dreambench_multiip.json``; those
  whose two subjects are both in the folder), or every pair. Prompts are composed from the first subject's list, as
  UNO's file does: for an object first, both nouns share the prompt's wording (``"a red backpack and a red stuffed
  animal"``); for a live subject first, the ten recontextualisation prompts join the nouns (``"a cat and a dog in
  the jungle"``) and the others add the second subject after a comma (``"a cat wearing a red hat, next to it is a
  dog"``).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import UnofluxError
from ..images import read_json, save_json

FORMAT = "unoflux-benchmark/1"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
LIVE_CLASSES = ("cat", "dog")  # DreamBooth's live subjects are its cats and dogs
PROMPTS_FILE = "prompts_and_classes.txt"

# The conditioning image UNO's eval JSON (datasets/dreambench_singleip.json at d305981) uses for each subject.
UNO_REFERENCE_IMAGES = {
    "backpack": "02.jpg", "backpack_dog": "02.jpg", "bear_plushie": "03.jpg", "berry_bowl": "02.jpg",
    "can": "01.jpg", "candle": "02.jpg", "cat": "04.jpg", "cat2": "02.jpg", "clock": "03.jpg",
    "colorful_sneaker": "01.jpg", "dog": "02.jpg", "dog2": "02.jpg", "dog3": "05.jpg", "dog5": "00.jpg",
    "dog6": "02.jpg", "dog7": "01.jpg", "dog8": "04.jpg", "duck_toy": "01.jpg", "fancy_boot": "02.jpg",
    "grey_sloth_plushie": "04.jpg", "monster_toy": "04.jpg", "pink_sunglasses": "04.jpg", "poop_emoji": "00.jpg",
    "rc_car": "03.jpg", "red_cartoon": "00.jpg", "robot_toy": "00.jpg", "shiny_sneaker": "01.jpg",
    "teapot": "04.jpg", "vase": "02.jpg", "wolf_plushie": "04.jpg",
}  # fmt: skip

# UNO's two-subject combinations in the order of its datasets/dreambench_multiip.json: 10 object + object,
# 10 live + live, 10 live + object.
UNO_PAIRS = (
    ("backpack_dog", "bear_plushie"), ("berry_bowl", "can"), ("candle", "clock"), ("colorful_sneaker", "duck_toy"),
    ("fancy_boot", "grey_sloth_plushie"), ("monster_toy", "pink_sunglasses"), ("poop_emoji", "rc_car"),
    ("red_cartoon", "robot_toy"), ("shiny_sneaker", "teapot"), ("vase", "wolf_plushie"),
    ("cat", "dog"), ("cat", "dog6"), ("cat", "dog8"), ("cat2", "cat"), ("cat2", "dog3"), ("cat2", "dog7"),
    ("dog", "dog2"), ("dog3", "dog5"), ("dog6", "dog7"), ("dog7", "dog8"),
    ("cat", "backpack"), ("cat2", "bear_plushie"), ("dog", "can"), ("dog2", "clock"), ("dog3", "duck_toy"),
    ("dog5", "grey_sloth_plushie"), ("dog6", "pink_sunglasses"), ("dog7", "rc_car"), ("dog8", "robot_toy"),
    ("dog6", "teapot"),
)  # fmt: skip

# The paper's DreamBench numbers (UNO, Table 1 and Table 2: DINO, CLIP-I, CLIP-T), shown beside ours in reports.
PAPER_NUMBERS = {
    "single": {"method": "UNO (paper)", "dino": 0.760, "clip_i": 0.835, "clip_t": 0.304},
    "multi": {"method": "UNO (paper)", "dino": 0.542, "clip_i": 0.733, "clip_t": 0.322},
}


@dataclass
class Subject:
    name: str
    class_name: str
    live: bool
    images: list[str]  # every image of the subject's folder, relative to the benchmark root: scored against


@dataclass
class BenchmarkItem:
    """One prompt of one subject (or subject combination): generated ``images_per_prompt`` times."""

    id: str  # "backpack/03", "cat+dog/10": subjects and prompt index
    subjects: list[str]
    prompt_index: int
    prompt: str
    references: list[str]  # the conditioning images, relative to the benchmark root
    template: str = ""  # DreamBooth's prompt template it came from ("" for an imported eval JSON)


def prompt_group(template: str) -> str:
    """The name a prompt template is grouped under in reports: ``'a {0} {1} in the snow'`` -> ``a <subject> in the
    snow``. Objects and live subjects share a group where their lists share the prompt."""
    return " ".join(template.replace("{0} {1}", "<subject>").split())


@dataclass
class Benchmark:
    kind: str  # "single", "multi", or "custom" (an imported eval JSON)
    root: str  # absolute; every image path is relative to it
    subjects: dict[str, Subject]
    items: list[BenchmarkItem]
    protocol: dict = field(default_factory=dict)  # the choices that built it, for the summary

    def subject_images(self, name: str) -> list[Path]:
        return [Path(self.root) / p for p in self.subjects[name].images]

    def reference_paths(self, item: BenchmarkItem) -> list[Path]:
        return [Path(self.root) / p for p in item.references]


# ------------------------------------------------------------------------------------------------ the dataset folder
@dataclass
class DreamBenchFolder:
    root: Path
    classes: dict[str, str]  # subject -> class noun, as prompts_and_classes.txt lists them
    object_prompts: list[str]  # DreamBooth's templates: '{0}' the identifier, '{1}' the class noun
    live_prompts: list[str]
    subjects: dict[str, Subject]  # the subject folders present, in name order


def parse_prompts_and_classes(text: str, path: str = PROMPTS_FILE) -> tuple[dict[str, str], list[str], list[str]]:
    """(subject -> class, object prompt templates, live-subject prompt templates) from DreamBooth's file."""
    classes: dict[str, str] = {}
    lists: dict[str, list[str]] = {"object": [], "live": []}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if line.lower().startswith("object prompts"):
            current = "object"
        elif line.lower().startswith("live subject prompts"):
            current = "live"
        elif current is None and re.fullmatch(r"[\w-]+,[^,]+", line) and line != "subject_name,class":
            name, class_name = line.split(",")
            classes[name.strip()] = class_name.strip()
        elif current is not None and (match := re.match(r"""(['"])(.*)\1\.format\(""", line)):
            lists[current].append(match.group(2))
    if not classes or not lists["object"] or not lists["live"]:
        raise UnofluxError(
            f"{path} does not read as DreamBooth's prompts_and_classes.txt (subject,class lines, then 'Object "
            "Prompts' and 'Live Subject Prompts' lists of '...'.format(unique_token, class_token) lines)"
        )
    return classes, lists["object"], lists["live"]


def read_dreambench(root: str | Path) -> DreamBenchFolder:
    """The subjects present in ``root`` (any subset of DreamBooth's, any image count) with their classes."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UnofluxError(f"DreamBench folder {str(root)!r} is not a folder")
    prompts_file = root / PROMPTS_FILE
    if not prompts_file.is_file():
        raise UnofluxError(f"DreamBench folder {str(root)!r} has no {PROMPTS_FILE} (the DreamBooth dataset's layout)")
    classes, object_prompts, live_prompts = parse_prompts_and_classes(prompts_file.read_text(), str(prompts_file))
    subjects = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        images = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not images:
            continue
        if folder.name not in classes:
            raise UnofluxError(
                f"subject folder {folder.name!r} in {str(root)!r} has no class in {PROMPTS_FILE}; add a "
                f"'{folder.name},<class>' line"
            )
        class_name = classes[folder.name]
        subjects[folder.name] = Subject(
            folder.name, class_name, class_name in LIVE_CLASSES, [f"{folder.name}/{name}" for name in images]
        )
    if not subjects:
        raise UnofluxError(f"DreamBench folder {str(root)!r} holds no subject folders with images")
    return DreamBenchFolder(root.resolve(), classes, object_prompts, live_prompts, subjects)


def conditioning_image(subject: Subject) -> str:
    """UNO's reference image for the subject where it has one in the folder, else the first image by name."""
    uno = f"{subject.name}/{UNO_REFERENCE_IMAGES.get(subject.name, '')}"
    return uno if uno in subject.images else subject.images[0]


def render(template: str, class_name: str, unique_token: str = "") -> str:
    """``'a {0} {1} in the snow'`` -> ``"a dog in the snow"`` (with a token: ``"a sks dog in the snow"``)."""
    return " ".join(template.format(unique_token, class_name).split())


def compose_pair(template: str, first: Subject, second: Subject, object_prompts: list[str]) -> str:
    """A two-subject prompt from the first subject's template, as UNO's dreambench_multiip.json composes them."""
    prefix, sep, suffix = template.partition("{0} {1}")
    if not sep:
        raise UnofluxError(f"prompt template {template!r} has no '{{0}} {{1}}' (identifier and class) in it")
    both = " ".join(f"{prefix}{first.class_name} and {prefix}{second.class_name}{suffix}".split())
    if not first.live:
        return both  # the object list: the wording is shared ("a red backpack and a red stuffed animal")
    if prefix == "a " and template in object_prompts:  # the recontextualisation prompts both lists have
        return " ".join(f"a {first.class_name} and a {second.class_name}{suffix}".split())
    return f"{render(template, first.class_name)}, next to it is a {second.class_name}"


def parse_indices(spec: str | None, count: int, what: str = "prompt") -> list[int]:
    """``"0,3,10-12"`` -> ``[0, 3, 10, 11, 12]`` (indices from 0, each below ``count``); None: all."""
    if spec is None:
        return list(range(count))
    chosen: list[int] = []
    for part in str(spec).split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match:
            raise UnofluxError(f"{what} selection {spec!r} is not a list of indices and ranges like 0,3,10-12")
        low, high = int(match.group(1)), int(match.group(2) or match.group(1))
        if low > high or high >= count:
            raise UnofluxError(f"{what} selection {spec!r} names {what} {high}; there are {count} (0 to {count - 1})")
        chosen.extend(i for i in range(low, high + 1) if i not in chosen)
    return chosen


def _selected_subjects(folder: DreamBenchFolder, names: list[str] | None) -> dict[str, Subject]:
    if names is None:
        return folder.subjects
    missing = [n for n in names if n not in folder.subjects]
    if missing:
        raise UnofluxError(
            f"subject {missing[0]!r} is not in {str(folder.root)!r}; it has {', '.join(folder.subjects)}"
        )
    return {n: folder.subjects[n] for n in names}


def single_subject_benchmark(
    root: str | Path,
    subjects: list[str] | None = None,
    prompts: str | None = None,
    unique_token: str = "",
) -> Benchmark:
    """Every subject x its 25 prompts (or the chosen ``subjects`` x the ``prompts`` indices, e.g. ``"0-4"``)."""
    folder = read_dreambench(root)
    chosen = _selected_subjects(folder, subjects)
    items = []
    for subject in chosen.values():
        templates = folder.live_prompts if subject.live else folder.object_prompts
        for k in parse_indices(prompts, len(templates)):
            items.append(
                BenchmarkItem(
                    f"{subject.name}/{k:02d}",
                    [subject.name],
                    k,
                    render(templates[k], subject.class_name, unique_token),
                    [conditioning_image(subject)],
                    templates[k],
                )
            )
    protocol = {
        "prompts": "DreamBooth's 25 object / live-subject prompts by class, class noun, "
        + (f"identifier {unique_token!r}" if unique_token else "no identifier (as UNO)"),
        "conditioning_reference": "UNO's choice (datasets/dreambench_singleip.json), else the first image",
        "scored_against": "every image of the subject's folder",
        "prompt_selection": prompts or "all",
    }
    return Benchmark("single", str(folder.root), chosen, items, protocol)


def parse_pairs(spec: str) -> list[tuple[str, str]]:
    """``"cat+dog,can+clock"`` -> ``[("cat", "dog"), ("can", "clock")]``."""
    pairs = []
    for part in spec.split(","):
        names = [n.strip() for n in part.split("+")]
        if len(names) != 2 or not all(names):
            raise UnofluxError(f"subject pair {part!r} in {spec!r} is not two names joined by '+', e.g. cat+dog")
        pairs.append((names[0], names[1]))
    return pairs


def multi_subject_benchmark(
    root: str | Path,
    pairs: str | list[tuple[str, str]] = "uno",
    subjects: list[str] | None = None,
    prompts: str | None = None,
) -> Benchmark:
    """Two-subject combinations x 25 prompts. ``pairs``: ``"uno"`` (UNO's 30, those present), ``"all"`` (every pair
    of the present subjects, a live subject first), or a list of name pairs; ``subjects`` keeps only pairs whose
    subjects are both among them."""
    folder = read_dreambench(root)
    present = _selected_subjects(folder, subjects)
    if pairs == "uno":
        chosen = [p for p in UNO_PAIRS if p[0] in present and p[1] in present]
    elif pairs == "all":
        names = list(present)
        chosen = [
            (a, b) if present[a].live or not present[b].live else (b, a)
            for i, a in enumerate(names)
            for b in names[i + 1 :]
        ]
    else:
        chosen = [tuple(p) for p in pairs]
        for pair in chosen:
            for name in pair:
                _selected_subjects(folder, [name])
    if not chosen:
        raise UnofluxError(f"no subject pair of {pairs!r} has both subjects in {str(folder.root)!r}")
    items = []
    for a, b in chosen:
        first, second = folder.subjects[a], folder.subjects[b]
        templates = folder.live_prompts if first.live else folder.object_prompts
        for k in parse_indices(prompts, len(templates)):
            items.append(
                BenchmarkItem(
                    f"{a}+{b}/{k:02d}",
                    [a, b],
                    k,
                    compose_pair(templates[k], first, second, folder.object_prompts),
                    [conditioning_image(first), conditioning_image(second)],
                    templates[k],
                )
            )
    used = {name: folder.subjects[name] for pair in chosen for name in pair}
    protocol = {
        "pairs": pairs if isinstance(pairs, str) else "given",
        "prompts": "the first subject's DreamBooth list, composed as UNO's datasets/dreambench_multiip.json",
        "conditioning_reference": "UNO's choice per subject, else the first image",
        "scored_against": "every image of each subject's folder; an image's score is the mean over its subjects",
        "prompt_selection": prompts or "all",
    }
    return Benchmark("multi", str(folder.root), used, items, protocol)


# ------------------------------------------------------------------------------------------------ files
def save_benchmark(benchmark: Benchmark, path: str | Path) -> Path:
    """Our spec JSON: subjects (class, live, every image), items (id, subjects, prompt, conditioning images)."""
    return save_json({"format": FORMAT, **asdict(benchmark)}, path)


def load_benchmark(path: str | Path) -> Benchmark:
    """A spec :func:`save_benchmark` wrote, or UNO's eval JSON (``[{"prompt", "image_paths"}]``, see
    :func:`from_uno_json`)."""
    path = Path(path)
    data = read_json(path, "benchmark file")
    if isinstance(data, list):
        return from_uno_json(path, data)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UnofluxError(f"benchmark file {str(path)!r} is neither a {FORMAT} spec nor UNO's eval JSON list")
    try:
        return Benchmark(
            data["kind"],
            data["root"],
            {name: Subject(**s) for name, s in data["subjects"].items()},
            [BenchmarkItem(**item) for item in data["items"]],
            data.get("protocol", {}),
        )
    except (KeyError, TypeError) as err:
        raise UnofluxError(f"benchmark file {str(path)!r} is a damaged {FORMAT} spec ({err!r})") from None


def to_uno_json(benchmark: Benchmark, path: str | Path) -> Path:
    """UNO's eval JSON for ``benchmark``, paths relative to the file's folder (as UNO's inference.py and our batch
    mode read them), so ``python inference.py --eval_json_path`` and ``unoflux generate --batch`` both take it."""
    path = Path(path)
    base = path.parent.resolve()
    rows = [
        {"prompt": item.prompt, "image_paths": [relative_path(p, base) for p in benchmark.reference_paths(item)]}
        for item in benchmark.items
    ]
    return save_json(rows, path)


def relative_path(target: str | Path, base: str | Path) -> str:
    """``target`` relative to the folder ``base`` (both resolved), with forward slashes: how spec files, scores and
    report pages name their images, so that a folder can move."""
    import os

    return Path(os.path.relpath(Path(target).resolve(), Path(base).resolve())).as_posix()


def from_uno_json(path: str | Path, rows: list | None = None) -> Benchmark:
    """A benchmark from UNO's eval JSON: each reference's folder is its subject (scored against every image there),
    the subjects' folders share one root (whose prompts_and_classes.txt, if any, gives the classes), and an item's
    prompt index counts the items with the same references."""
    path = Path(path)
    rows = read_json(path, "eval JSON") if rows is None else rows
    if not rows or not all(isinstance(r, dict) and isinstance(r.get("prompt"), str) for r in rows):
        raise UnofluxError(f"eval JSON {str(path)!r} must be a non-empty list of {{prompt, image_paths}} items")
    refs = []
    for i, row in enumerate(rows, start=1):
        paths = row.get("image_paths")
        if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
            raise UnofluxError(f"eval JSON {str(path)!r} item {i} needs 'image_paths': a non-empty list of paths")
        refs.append([(path.parent / p).resolve() for p in paths])
    roots = {p.parent.parent for paths in refs for p in paths}
    if len(roots) != 1:
        raise UnofluxError(
            f"eval JSON {str(path)!r} names subject folders under {len(roots)} different parents; a benchmark's "
            "subject folders share one root (DreamBench's layout)"
        )
    root = roots.pop()
    classes = {}
    if (root / PROMPTS_FILE).is_file():
        classes, _, _ = parse_prompts_and_classes((root / PROMPTS_FILE).read_text(), str(root / PROMPTS_FILE))
    subjects: dict[str, Subject] = {}
    counts: dict[tuple, int] = {}
    items = []
    for row, paths in zip(rows, refs, strict=True):
        names = [p.parent.name for p in paths]
        for p in paths:
            if p.parent.name not in subjects:
                images = sorted(q.name for q in p.parent.glob("*") if q.suffix.lower() in IMAGE_SUFFIXES)
                class_name = classes.get(p.parent.name, p.parent.name)
                subjects[p.parent.name] = Subject(
                    p.parent.name, class_name, class_name in LIVE_CLASSES, [f"{p.parent.name}/{n}" for n in images]
                )
        key = tuple(paths)
        k = counts[key] = counts.get(key, -1) + 1
        items.append(
            BenchmarkItem(
                f"{'+'.join(names)}/{k:02d}", names, k, row["prompt"], [relative_path(p, root) for p in paths]
            )
        )
    protocol = {"source": str(path.resolve()), "scored_against": "every image of each reference's folder"}
    return Benchmark("custom", str(root), subjects, items, protocol)
