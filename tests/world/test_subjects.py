import json

import numpy as np
import pytest

from unoflux.world import (
    HELDOUT_SEED_START,
    Identity,
    heldout_identities,
    heldout_seeds,
    make_identity,
    sample_training_identities,
)
from unoflux.world.subjects import outline_mask
from unoflux.world.vocab import SHAPES


def test_identity_is_deterministic_and_json_round_trips():
    a, b = make_identity(42), make_identity(42)
    assert a == b
    restored = Identity.from_dict(json.loads(json.dumps(a.to_dict())))
    assert restored == a


def test_same_look_different_seeds_differ_in_details():
    a, b = make_identity(1, "star", "red", "striped"), make_identity(2, "star", "red", "striped")
    assert a.look == b.look == ("star", "red", "striped")
    assert (a.warp, a.emblem_xy, a.pattern_phase) != (b.warp, b.emblem_xy, b.pattern_phase)


def test_unknown_look_is_refused():
    with pytest.raises(ValueError, match="unknown shape"):
        make_identity(1, shape="blob")


def test_heldout_set_is_fixed_and_covers_every_shape_colour_pair():
    held = heldout_identities()
    assert held == heldout_identities()
    assert all(i.is_heldout for i in held)
    assert len({(i.shape, i.colour) for i in held}) == len(held) == 64
    assert {i.seed for i in held} == heldout_seeds()


def test_training_identities_never_collide_with_heldout():
    seeds = {i.seed for i in sample_training_identities(2000, seed=3)}
    assert seeds.isdisjoint(heldout_seeds())
    assert max(seeds) < HELDOUT_SEED_START


@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_rasterises_to_a_solid_body(shape):
    mask = outline_mask(shape, (), 64)
    assert 0.3 < mask.mean() <= 1.0
    assert mask[32, :].any() and mask[:, 32].any()


def test_emblem_lies_inside_the_body():
    for seed in range(40):
        ident = make_identity(seed)
        mask = outline_mask(ident.shape, ident.warp, 64)
        x, y = (np.array(ident.emblem_xy) + 0.5) * 64
        assert mask[int(y), int(x)], ident
