"""Training data: manifests, buckets, and a deterministic, resumable, rank-sliced order."""

from __future__ import annotations

import itertools

import pytest
import torch

from unoflux.errors import UnofluxError
from unoflux.train.data import (
    BucketDataset,
    DataPosition,
    Sample,
    TrainData,
    epoch_batches,
    load_pixels,
    nearest_bucket,
    read_samples,
)

BUCKETS = [(32, 32), (32, 64), (64, 32)]  # (height, width)


def test_read_world_manifest(world_data):
    samples = read_samples([str(world_data)])
    assert len(samples) == 16 and all(s.image.is_file() and s.caption for s in samples)
    pixels = load_pixels(samples[0].image, 32, 48)
    assert pixels.shape == (3, 32, 48) and pixels.min() >= -1 and pixels.max() <= 1


def test_missing_manifest(tmp_path):
    with pytest.raises(UnofluxError, match="no manifest.jsonl"):
        read_samples([str(tmp_path)])


def test_nearest_bucket():
    assert nearest_bucket(100, 100, BUCKETS) == 0
    assert nearest_bucket(300, 140, BUCKETS) == 1  # wide image -> wide bucket
    assert nearest_bucket(140, 300, BUCKETS) == 2


def test_batches_hold_one_bucket_and_depend_on_seed_and_epoch():
    bucket_of = [0] * 10 + [1] * 7 + [2] * 3
    batches = epoch_batches(bucket_of, 2, seed=5, epoch=0)
    assert len(batches) == 5 + 3 + 1  # tails dropped
    assert all(len({bucket_of[i] for i in b}) == 1 for b in batches)
    assert batches == epoch_batches(bucket_of, 2, seed=5, epoch=0)
    assert batches != epoch_batches(bucket_of, 2, seed=5, epoch=1)
    assert batches != epoch_batches(bucket_of, 2, seed=6, epoch=0)


class Indexed(BucketDataset):
    def __getitem__(self, i):
        return torch.tensor([i]), self.samples[i].caption


def captions(data: TrainData, n: int) -> list[list[str]]:
    return [batch.captions for batch in itertools.islice(iter(data), n)]


def test_resume_from_position_sees_the_same_batches():
    dataset = Indexed([Sample(None, f"c{i}", 32, 32) for i in range(10)], [(32, 32)])
    full = captions(TrainData(dataset, 2, seed=3), 12)  # crosses two epoch boundaries (5 batches/epoch)
    data = TrainData(dataset, 2, seed=3)
    first = captions(data, 7)
    assert data.position == DataPosition(1, 2)
    resumed = TrainData(dataset, 2, seed=3)
    resumed.position = DataPosition(1, 2)
    assert first + captions(resumed, 5) == full


def test_ranks_take_disjoint_slices_of_each_global_batch():
    dataset = Indexed([Sample(None, f"c{i}", 32, 32) for i in range(12)], [(32, 32)])
    single = captions(TrainData(dataset, 4, seed=0), 3)
    ranks = [captions(TrainData(dataset, 2, seed=0, rank=r, num_processes=2), 3) for r in range(2)]
    for step in range(3):
        assert ranks[0][step] + ranks[1][step] == single[step]  # same global batch, split in two


def test_too_few_images_for_a_batch():
    dataset = Indexed([Sample(None, "c", 32, 32), Sample(None, "c", 64, 32)], BUCKETS)
    with pytest.raises(UnofluxError, match="no bucket holds a full batch"):
        TrainData(dataset, 2, seed=0)
