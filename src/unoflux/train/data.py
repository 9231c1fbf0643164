"""Training data: text-to-image samples from world manifests, paired samples (target + reference images)
from world ``pairs`` / ``multi-pairs`` manifests and UNO's training JSON; aspect-ratio buckets and a
resumable order.

Order: epoch ``e`` shuffles each group's images and the list of its global batches with a generator
seeded by ``(seed, e)``; a global batch holds ``batch_size * num_processes`` images of one group (the
incomplete tail of each group is dropped that epoch) and rank ``r`` takes the ``r``-th slice of it. A
group is the target's bucket, and with references also the size of every reference after UNO's resize,
so that every tensor of a batch stacks.
A run's place in the data is :class:`DataPosition` ``(epoch, batch)``; it goes into every checkpoint, so
a resumed run sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import functools
import json
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..conditioning import image_to_tensor, preprocess_reference
from ..errors import UnofluxError
from ..images import load_image
from ..world.raster import rle_encode

MAX_REPORTED_BAD_RECORDS = 20  # one warning each; beyond this only a count (a broken folder must not flood the log)


@dataclass(frozen=True)
class Sample:
    image: Path
    caption: str
    width: int
    height: int
    references: tuple[Path, ...] = ()  # paired data: the reference images, in order
    reference_sizes: tuple[tuple[int, int], ...] = ()  # (width, height) of each reference after the resize
    caption_without_looks: str | None = None  # world pairs: the scene with its subjects' looks left unsaid
    # world pairs: each subject's box in the target, (x0, y0, x1, y1) as fractions of its width and height
    subject_boxes: tuple[tuple[float, float, float, float], ...] = ()
    # world pairs: each subject's visible pixels in the target as the renderer drew them (its record's mask_rle):
    # (height, width, run lengths from a run of False), the image's row-major order; () without masks
    subject_masks: tuple[tuple[int, int, tuple[int, ...]], ...] = ()


class BadRecordWarning(UserWarning):
    """A paired-data record that cannot be trained on (it is skipped)."""


@dataclass
class DataPosition:
    """Where the next global batch comes from: ``batch`` of epoch ``epoch``."""

    epoch: int = 0
    batch: int = 0


def read_samples(folders: list[str]) -> list[Sample]:
    """Every (image, caption) record of the world manifests in ``folders`` (paths relative to each folder)."""
    samples = []
    for folder in folders:
        if is_uno_json(folder):
            raise UnofluxError(f"{folder!r} is UNO paired data (a training JSON); train it with references")
        manifest = Path(folder) / "manifest.jsonl"
        if not manifest.is_file():
            raise UnofluxError(f"data folder {folder!r} has no manifest.jsonl; build one with `unoflux world build`")
        with open(manifest) as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    image, text = record["image"], record["caption"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise UnofluxError(f"{manifest} line {n} is not a record with 'image' and 'caption'") from None
                path = Path(folder) / image
                if "width" in record and "height" in record:
                    width, height = int(record["width"]), int(record["height"])
                else:
                    with Image.open(path) as im:
                        width, height = im.size
                samples.append(Sample(path, str(text), width, height))
    if not samples:
        raise UnofluxError(f"the data folders {folders!r} hold no samples")
    return samples


# ------------------------------------------------------------------------------------------ paired data
def is_uno_json(entry: str) -> bool:
    return entry.lower().endswith(".json")


def data_has_references(entries: list[str]) -> bool:
    """True when the data is paired: a UNO training JSON, or a world manifest whose records carry references."""
    for entry in entries:
        if is_uno_json(entry):
            return True
        manifest = Path(entry) / "manifest.jsonl"
        if manifest.is_file():
            with open(manifest) as fh:
                first = next((line for line in fh if line.strip()), None)
            try:
                if first is not None and "references" in json.loads(first):
                    return True
            except json.JSONDecodeError:
                pass  # reported by the reader
    return False


# how references are resized: (image, long side) -> image; the method's (Method.resize_reference), UNO's by default
Resize = Callable[[Image.Image, int], Image.Image]


@functools.lru_cache(maxsize=4096)
def reference_size(width: int, height: int, long_side: int, resize: Resize = preprocess_reference) -> tuple[int, int]:
    """(width, height) of a ``width x height`` reference after ``resize`` (UNO's by default).

    Computed by running that function on a blank image (cached per size: datasets hold few distinct
    sizes), so the grouping can never disagree with the resize the samples really get.
    """
    return resize(Image.new("L", (width, height)), long_side).size


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file as :func:`images.load_image` will see it (EXIF rotation applied);
    raises ``ValueError`` with the reason when the file is missing or not a readable image."""
    if not path.is_file():
        raise ValueError(f"{str(path)!r} does not exist")
    try:
        with Image.open(path) as im:
            im.verify()  # checks the file's structure (PNG CRCs, ...) without decoding it; must come first
        with Image.open(path) as im:  # verify() leaves the image unusable: reopen (headers only)
            size = im.size
            rotated = im.getexif().get(0x0112) in (5, 6, 7, 8)  # EXIF orientations that swap the sides
    except Exception as err:  # PIL raises many types for broken files
        raise ValueError(f"{str(path)!r} is not a readable image ({type(err).__name__}: {err})") from None
    return (size[1], size[0]) if rotated else size


def _paired_sample(
    base: Path,
    target,
    caption,
    references,
    long_side: Callable[[int], int],
    caption_without_looks=None,
    subjects=None,
    resize: Resize = preprocess_reference,
    mask_files=None,
) -> Sample:
    """One validated paired sample (paths relative to ``base``); ``ValueError`` says what is wrong."""
    if not isinstance(target, str) or not target:
        raise ValueError(f"the target image path {target!r} is not a string")
    if not isinstance(caption, str):
        raise ValueError(f"the prompt {caption!r} is not a string")
    if not isinstance(references, list) or not references:
        raise ValueError(f"the reference image paths {references!r} are not a non-empty list")
    if not all(isinstance(r, str) and r for r in references):
        raise ValueError(f"the reference image paths {references!r} are not all strings")
    width, height = image_size(base / target)
    side = long_side(len(references))
    sizes = []
    for ref in references:
        ref_w, ref_h = image_size(base / ref)
        try:
            sizes.append(reference_size(ref_w, ref_h, side, resize))
        except ValueError as err:  # too elongated for the long side
            raise ValueError(f"reference {ref!r}: {err}") from None
    if caption_without_looks is not None and not isinstance(caption_without_looks, str):
        raise ValueError(f"the caption without looks {caption_without_looks!r} is not a string")
    return Sample(
        base / target,
        caption,
        width,
        height,
        tuple(base / r for r in references),
        tuple(sizes),
        caption_without_looks,
        _subject_boxes(subjects, width, height),
        _subject_masks(subjects, width, height) if mask_files is None else _mask_files(base, mask_files, references),
    )


def _subject_boxes(subjects, width: int, height: int) -> tuple[tuple[float, float, float, float], ...]:
    """A world record's subject boxes (pixels) as fractions of the target's size; none for other records."""
    if subjects is None:
        return ()
    try:
        boxes = [tuple(float(v) for v in subject["box"]) for subject in subjects]
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"the subjects {subjects!r} do not all have a box [x0, y0, x1, y1]") from None
    if not all(len(b) == 4 and 0 <= b[0] <= b[2] <= width and 0 <= b[1] <= b[3] <= height for b in boxes):
        raise ValueError(f"the subject boxes {boxes} do not lie inside the {width}x{height} target")
    return tuple((x0 / width, y0 / height, x1 / width, y1 / height) for x0, y0, x1, y1 in boxes)


def _mask_files(base: Path, paths, references) -> tuple[tuple[int, int, tuple[int, ...]], ...]:
    """A UNO JSON record's ``subject_masks``: one image per reference (in order), each subject's pixels in the
    target (bright = subject; e.g. LISA's or a detector's masks, as DreamO extracts them for its routing constraint).
    Masks are kept at their own size: their shares per target token are taken as the target's are (resized to
    cover, centre-cropped), so a mask of the target's aspect ratio at any resolution lines up."""
    if not isinstance(paths, list) or not all(isinstance(p, str) and p for p in paths):
        raise ValueError(f"the subject masks {paths!r} are not a list of image paths")
    if len(paths) != len(references):
        raise ValueError(f"{len(paths)} subject masks for {len(references)} references: give one per reference")
    masks = []
    for path in paths:
        image_size(base / path)  # missing or unreadable: the reason, in one sentence
        subject = np.asarray(load_image(base / path).convert("L")) > 127
        masks.append((subject.shape[0], subject.shape[1], tuple(rle_encode(subject)["counts"])))
    return tuple(masks)


def _subject_masks(subjects, width: int, height: int) -> tuple[tuple[int, int, tuple[int, ...]], ...]:
    """A world record's subject masks (its ``mask_rle``, the renderer's exact visible pixels); none when a subject
    lacks one (older records, real data with boxes only)."""
    if not subjects or not all(isinstance(s, dict) and "mask_rle" in s for s in subjects):
        return ()
    masks = []
    for subject in subjects:
        try:
            size, counts = subject["mask_rle"]["size"], tuple(int(c) for c in subject["mask_rle"]["counts"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"a subject's mask_rle {subject['mask_rle']!r} is not {{size, counts}}") from None
        if list(size) != [height, width] or sum(counts) != width * height or min(counts, default=0) < 0:
            raise ValueError(f"a subject's mask_rle (size {size}) does not cover the {width}x{height} target")
        masks.append((height, width, counts))
    return tuple(masks)


def _raw_paired_records(entry: str) -> Iterator[tuple[str, int, Path, object, object, object, object, object]]:
    """(source, index, base folder, target, caption, references, caption without looks, subjects) of every record;
    the index counts records from 0 (list position in a JSON, non-empty line in a manifest). Malformed records
    come as ``None``s; only world records have subjects (with their boxes)."""
    if is_uno_json(entry):
        path = Path(entry)
        if not path.is_file():
            raise UnofluxError(f"UNO training JSON {entry!r} does not exist")
        try:
            records = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UnofluxError(f"UNO training JSON {entry!r} is not valid JSON: {err}") from None
        if not isinstance(records, list):
            raise UnofluxError(f"UNO training JSON {entry!r} must hold a list of records")
        for index, record in enumerate(records):
            if not isinstance(record, dict):
                yield str(path), index, path.parent, None, None, None, None, None, None
                continue
            refs = record.get("image_paths", [record["image_path"]] if "image_path" in record else None)
            target, prompt, masks = record.get("image_tgt_path"), record.get("prompt"), record.get("subject_masks")
            yield str(path), index, path.parent, target, prompt, refs, None, None, masks
        return
    manifest = Path(entry) / "manifest.jsonl"
    if not manifest.is_file():
        raise UnofluxError(f"data folder {entry!r} has no manifest.jsonl; build one with `unoflux world build`")
    with open(manifest) as fh:
        lines = [line for line in fh if line.strip()]
    for index, line in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            yield str(manifest), index, Path(entry), None, None, None, None, None, None
            continue
        refs = record.get("references")
        if isinstance(refs, list):  # world records: [{"image": path, "caption": ..., "box": ...}, ...]
            refs = [r.get("image") if isinstance(r, dict) else r for r in refs]
        yield (
            str(manifest),
            index,
            Path(entry),
            record.get("image"),
            record.get("caption"),
            refs,
            record.get("caption_without_looks"),
            record.get("subjects"),
            None,
        )


def read_paired_samples(
    entries: list[str], long_side: Callable[[int], int], resize: Resize = preprocess_reference
) -> list[Sample]:
    """Every valid (target, caption, references) record of world ``pairs`` / ``multi-pairs`` folders and UNO
    training JSON files (``[{"prompt", "image_paths", "image_tgt_path"}]``, paths relative to the JSON).

    ``long_side(n)`` is the references' long side for a record with ``n`` references, ``resize`` how they are
    resized to it (the method's: UNO's long side, DreamO's area). A bad record (missing
    or unreadable file, wrong types, no references) is reported once as a :class:`BadRecordWarning` naming
    its file, index and reason, and skipped: one broken record never stops a run.
    """
    samples, bad = [], 0
    for entry in entries:
        for source, index, base, target, caption, refs, without_looks, subjects, masks in _raw_paired_records(entry):
            try:
                if target is None and caption is None and refs is None:
                    raise ValueError("it is not a JSON object")
                samples.append(
                    _paired_sample(base, target, caption, refs, long_side, without_looks, subjects, resize, masks)
                )
            except ValueError as err:
                bad += 1
                if bad <= MAX_REPORTED_BAD_RECORDS:
                    warnings.warn(f"{source} record {index} skipped: {err}", BadRecordWarning, stacklevel=2)
    if bad > MAX_REPORTED_BAD_RECORDS:
        warnings.warn(
            f"{bad} bad records skipped in all ({bad - MAX_REPORTED_BAD_RECORDS} not shown)",
            BadRecordWarning,
            stacklevel=2,
        )
    if not samples:
        raise UnofluxError(f"the data {entries!r} holds no valid paired sample (target, prompt and references)")
    return samples


def nearest_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> int:
    """Index of the (height, width) bucket whose aspect ratio is nearest (in log space) to the image's."""
    aspect = math.log(height / width)
    return min(range(len(buckets)), key=lambda i: (abs(math.log(buckets[i][0] / buckets[i][1]) - aspect), i))


def load_pixels(path: Path, height: int, width: int) -> torch.Tensor:
    """The image resized to cover ``height x width`` (aspect kept), center-cropped: (3, H, W) in [-1, 1]."""
    try:
        with Image.open(path) as im:
            image = im.convert("RGB")
    except (OSError, ValueError) as err:
        raise UnofluxError(f"training image {str(path)!r} cannot be read: {err}") from None
    scale = max(width / image.width, height / image.height)
    size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    if size != image.size:
        image = image.resize(size, resample=Image.LANCZOS)
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return image_to_tensor(image.crop((left, top, left + width, top + height)))[0]


class BucketDataset(torch.utils.data.Dataset):
    """Samples with their bucket; item ``i`` is ``(pixels (3, H, W) in [-1, 1], caption)``."""

    def __init__(self, samples: list[Sample], buckets: list[tuple[int, int]]):
        self.samples, self.buckets = samples, buckets
        self.bucket_of = [nearest_bucket(s.width, s.height, buckets) for s in samples]
        self.group_of: list = self.bucket_of  # samples of one group stack into one batch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        height, width = self.buckets[self.bucket_of[i]]
        return load_pixels(self.samples[i].image, height, width), self.samples[i].caption


class PairedDataset(BucketDataset):
    """Paired samples; item ``i`` is ``(target pixels (3, H, W) in [-1, 1], caption, [reference PIL images],
    caption without looks or None, subject boxes, subject masks)``.

    References are opened as the pipeline opens them (``images.load_image``) and resized with ``resize`` (the
    method's ``resize_reference``: UNO's by default) at the long side for their count; the trainer encodes them with
    the pipeline's own ``encode_references``. Group = (target bucket, every reference's size).
    """

    def __init__(
        self,
        samples: list[Sample],
        buckets: list[tuple[int, int]],
        long_side: Callable[[int], int],
        resize: Resize = preprocess_reference,
    ):
        super().__init__(samples, buckets)
        self.long_side, self.resize = long_side, resize
        self.group_of = [(b, s.reference_sizes) for b, s in zip(self.bucket_of, samples)]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str, list[Image.Image], str | None, tuple]:
        pixels, caption = super().__getitem__(i)
        sample = self.samples[i]
        side = self.long_side(len(sample.references))
        references = [self.resize(load_image(p, what="reference image"), side) for p in sample.references]
        return pixels, caption, references, sample.caption_without_looks, sample.subject_boxes, sample.subject_masks


class SampleIndices(torch.utils.data.Dataset):
    """The samples of ``dataset`` as bare indices, in the same groups: what a run with an encoding cache
    (train/cache.py) loads, since it reads nothing from disk while training."""

    def __init__(self, dataset: BucketDataset):
        self.size, self.group_of = len(dataset), dataset.group_of

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> int:
        return i


def epoch_batches(group_of: list, global_batch: int, seed: int, epoch: int) -> list[list[int]]:
    """The global batches of ``epoch`` (sample indices), a function of (seed, epoch) only; each batch holds
    samples of one group (a bucket index, or a sortable key such as (bucket, reference sizes))."""
    rng = np.random.default_rng([seed, epoch])
    batches = []
    for group in sorted(set(group_of)):
        members = rng.permutation([i for i, g in enumerate(group_of) if g == group])
        batches += [
            members[k : k + global_batch].tolist() for k in range(0, len(members) - global_batch + 1, global_batch)
        ]
    return [batches[k] for k in rng.permutation(len(batches))]


@dataclass
class Batch:
    """One batch of images; paired batches also carry, per sample, its references (preprocessed PIL images), its
    caption without looks (or None), its subject boxes and its subject masks (RLE, :class:`Sample`)."""

    pixels: torch.Tensor  # (B, 3, H, W) in [-1, 1]
    captions: list[str]
    references: list[list[Image.Image]] | None = None
    captions_without_looks: list[str | None] | None = None
    subject_boxes: list[tuple[tuple[float, float, float, float], ...]] | None = None
    subject_masks: list[tuple[tuple[int, int, tuple[int, ...]], ...]] | None = None


def collate(items: list[tuple]) -> Batch | list[int]:
    """The :class:`Batch` of dataset items; for :class:`SampleIndices`, the list of indices."""
    if isinstance(items[0], int):
        return items
    pixels = torch.stack([item[0] for item in items])
    captions = [item[1] for item in items]
    if len(items[0]) == 2:
        return Batch(pixels, captions)
    return Batch(pixels, captions, *([item[k] for item in items] for k in range(2, len(items[0]))))


def box_token_shares(box: tuple[float, float, float, float], grid: tuple[int, int]) -> torch.Tensor:
    """The share of each target token's area (rows * cols, the packed latents' row-major order) that lies inside
    ``box`` (x0, y0, x1, y1 as fractions of the target), measured on 4 x 4 points per token."""
    return _inside([box], grid)


def _inside(boxes, grid: tuple[int, int]) -> torch.Tensor:
    rows, cols = grid
    sub = 4
    ys = (torch.arange(rows * sub, dtype=torch.float32) + 0.5) / (rows * sub)
    xs = (torch.arange(cols * sub, dtype=torch.float32) + 0.5) / (cols * sub)
    inside = torch.zeros(rows * sub, cols * sub, dtype=torch.bool)
    for x0, y0, x1, y1 in boxes:
        inside |= ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]
    return inside.float().reshape(rows, sub, cols, sub).mean(dim=(1, 3)).flatten()


def subject_token_weights(
    boxes: list[tuple[tuple[float, float, float, float], ...]], grid: tuple[int, int], weight: float
) -> torch.Tensor:
    """Per-token loss weights (B, rows * cols), in the packed latents' row-major order: a token weighs
    ``1 + (weight - 1) * (the share of its area inside a subject box)``, scaled so that each sample's weights
    average 1 (the loss keeps its scale; a sample without boxes is unweighted)."""
    weights = []
    for sample_boxes in boxes:
        token = 1 + (weight - 1) * _inside(sample_boxes, grid)
        weights.append(token / token.mean())
    return torch.stack(weights)


@functools.lru_cache(maxsize=65536)
def _mask_shares(mask: tuple[int, int, tuple[int, ...]], grid: tuple[int, int], scale: float) -> torch.Tensor:
    height, width, counts = mask
    pixels = np.repeat(np.arange(len(counts)) % 2 == 1, counts).reshape(height, width).astype(np.float64)
    rows = _axis_overlaps(height, grid[0], scale)
    cols = _axis_overlaps(width, grid[1], scale)
    return torch.from_numpy(rows @ pixels @ cols.T).float().flatten()


def _axis_overlaps(length: int, cells: int, scale: float) -> np.ndarray:
    """(cells, length): how much of token cell c (16 / ``scale`` pixels of the original image, the crop centred as
    :func:`load_pixels` centres it) pixel x covers, as a share of the cell's length (each row sums to 1)."""
    cell = 16 / scale
    start = (length - cells * cell) / 2
    lo = start + cell * np.arange(cells)[:, None]  # (cells, 1)
    x = np.arange(length)[None, :]  # (1, length)
    return np.clip(np.minimum(x + 1, lo + cell) - np.maximum(x, lo), 0, None) / cell


def mask_token_shares(mask: tuple[int, int, tuple[int, ...]], grid: tuple[int, int]) -> torch.Tensor:
    """The share of each target token's area (rows * cols, the packed latents' row-major order) covered by
    ``mask`` (a :class:`Sample`'s subject mask: the target's pixels), its image resized to cover the grid's
    ``16 rows x 16 cols`` pixels and center-cropped as :func:`load_pixels` does: exact area fractions (a pixel
    straddling two tokens counts in both by its overlap). Cached: a mask's shares are computed once per grid."""
    height, width, _ = mask
    return _mask_shares(mask, grid, max(16 * grid[0] / height, 16 * grid[1] / width))


def reference_token_masks(
    boxes: list[tuple[tuple[float, float, float, float], ...]],
    grid: tuple[int, int],
    num_references: int,
    masks: list[tuple[tuple[int, int, tuple[int, ...]], ...]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each reference's target mask, for the routing constraint: (B, num_references, rows * cols) shares of every
    target token covered by subject k (world records: subject k is reference k, left to right): of its exact mask
    (``masks``, :func:`mask_token_shares`) where the sample has one per reference, else of its box; and which
    samples (B,) have one mask or box per reference (the others get zero masks and are left out)."""
    shares = torch.zeros(len(boxes), num_references, grid[0] * grid[1])
    valid = torch.zeros(len(boxes))
    for b, sample_boxes in enumerate(boxes):
        sample_masks = masks[b] if masks else ()
        if len(sample_masks) == num_references:
            shares[b] = torch.stack([mask_token_shares(mask, grid) for mask in sample_masks])
            valid[b] = 1
        elif len(sample_boxes) == num_references:
            shares[b] = torch.stack([box_token_shares(box, grid) for box in sample_boxes])
            valid[b] = 1
    return shares, valid


class TrainData:
    """Endless batches for one rank, starting at a :class:`DataPosition` and advancing it."""

    def __init__(
        self,
        dataset: BucketDataset,
        batch_size: int,
        seed: int,
        rank: int = 0,
        num_processes: int = 1,
        num_workers: int = 0,
    ):
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.rank, self.num_processes, self.num_workers = rank, num_processes, num_workers
        self.global_batch = batch_size * num_processes
        self.position = DataPosition()
        groups = dataset.group_of
        if not epoch_batches(groups, self.global_batch, seed, 0):
            largest = max(groups.count(g) for g in set(groups))
            raise UnofluxError(
                f"no bucket holds a full batch of {self.global_batch} images (batch_size x processes); the largest "
                f"holds {largest}: lower batch_size or use fewer buckets (with references, samples of a batch "
                "must also share every reference size: batch_size 1 with gradient_accumulation always works)"
            )

    def rank_slice(self, batch: list[int]) -> list[int]:
        return batch[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]

    def __iter__(self) -> Iterator[Batch | list[int]]:
        while True:
            epoch, start = self.position.epoch, self.position.batch
            batches = epoch_batches(self.dataset.group_of, self.global_batch, self.seed, epoch)
            loader = torch.utils.data.DataLoader(
                self.dataset,
                batch_sampler=[self.rank_slice(b) for b in batches[start:]],
                num_workers=self.num_workers,
                collate_fn=collate,
            )
            for k, batch in enumerate(loader, start + 1):
                self.position = DataPosition(epoch, k)  # the position *after* this batch
                yield batch
            self.position = DataPosition(epoch + 1, 0)
