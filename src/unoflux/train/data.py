"""Text-to-image training data from world manifests, with aspect-ratio buckets and a resumable order.

Order: epoch ``e`` shuffles each bucket's images and the list of its global batches with a generator
seeded by ``(seed, e)``; a global batch holds ``batch_size * num_processes`` images of one bucket (the
incomplete tail of each bucket is dropped that epoch) and rank ``r`` takes the ``r``-th slice of it.
A run's place in the data is :class:`DataPosition` ``(epoch, batch)``; it goes into every checkpoint, so
a resumed run sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from ..conditioning import image_to_tensor
from ..errors import UnofluxError


@dataclass(frozen=True)
class Sample:
    image: Path
    caption: str
    width: int
    height: int


@dataclass
class DataPosition:
    """Where the next global batch comes from: ``batch`` of epoch ``epoch``."""

    epoch: int = 0
    batch: int = 0


def read_samples(folders: list[str]) -> list[Sample]:
    """Every (image, caption) record of the world manifests in ``folders`` (paths relative to each folder)."""
    samples = []
    for folder in folders:
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

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        height, width = self.buckets[self.bucket_of[i]]
        return load_pixels(self.samples[i].image, height, width), self.samples[i].caption


def epoch_batches(bucket_of: list[int], global_batch: int, seed: int, epoch: int) -> list[list[int]]:
    """The global batches of ``epoch`` (sample indices), a function of (seed, epoch) only."""
    rng = np.random.default_rng([seed, epoch])
    batches = []
    for bucket in sorted(set(bucket_of)):
        members = rng.permutation([i for i, b in enumerate(bucket_of) if b == bucket])
        batches += [members[k : k + global_batch].tolist() for k in range(0, len(members) - global_batch + 1, global_batch)]
    return [batches[k] for k in rng.permutation(len(batches))]


def collate(items: list[tuple[torch.Tensor, str]]) -> tuple[torch.Tensor, list[str]]:
    return torch.stack([pixels for pixels, _ in items]), [caption for _, caption in items]


class TrainData:
    """Endless batches for one rank, starting at a :class:`DataPosition` and advancing it."""

    def __init__(self, dataset: BucketDataset, batch_size: int, seed: int, rank: int = 0, num_processes: int = 1,
                 num_workers: int = 0):  # fmt: skip
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.rank, self.num_processes, self.num_workers = rank, num_processes, num_workers
        self.global_batch = batch_size * num_processes
        self.position = DataPosition()
        if not epoch_batches(dataset.bucket_of, self.global_batch, seed, 0):
            largest = max(dataset.bucket_of.count(b) for b in set(dataset.bucket_of))
            raise UnofluxError(
                f"no bucket holds a full batch of {self.global_batch} images (batch_size x processes); the largest "
                f"holds {largest}: lower batch_size or use fewer buckets"
            )

    def rank_slice(self, batch: list[int]) -> list[int]:
        return batch[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, list[str]]]:
        while True:
            epoch, start = self.position.epoch, self.position.batch
            batches = epoch_batches(self.dataset.bucket_of, self.global_batch, self.seed, epoch)
            loader = torch.utils.data.DataLoader(
                self.dataset, batch_sampler=[self.rank_slice(b) for b in batches[start:]],
                num_workers=self.num_workers, collate_fn=collate,
            )  # fmt: skip
            for k, batch in enumerate(loader, start + 1):
                self.position = DataPosition(epoch, k)  # the position *after* this batch
                yield batch
            self.position = DataPosition(epoch + 1, 0)
