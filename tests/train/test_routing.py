"""DreamO's routing constraint (Eq. 2-3): the cheap response maps (mean query first, no attention map) equal the
full attention logits averaged by hand, the loss equals its hand computation, and a run with it trains differently."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.embeddings import apply_rotary_emb
from PIL import Image
from safetensors.torch import load_file

from unoflux import UnofluxError
from unoflux.conditioning import sequence_position_ids
from unoflux.testing import tiny_components
from unoflux.train.data import box_token_shares, reference_token_masks
from unoflux.train.routing import RoutingCapture, routing_loss
from unoflux.train.trainer import Trainer


class FullLogits:
    """A hand-written FLUX joint attention that keeps every head's full q k^T / sqrt(d) map, (B, H, L, L) over
    [text, image] tokens."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        def heads(x):
            return x.unflatten(-1, (-1, attn.head_dim))

        q = torch.cat([attn.norm_added_q(heads(attn.add_q_proj(encoder_hidden_states))),
                       attn.norm_q(heads(attn.to_q(hidden_states)))], dim=1)  # fmt: skip
        k = torch.cat([attn.norm_added_k(heads(attn.add_k_proj(encoder_hidden_states))),
                       attn.norm_k(heads(attn.to_k(hidden_states)))], dim=1)  # fmt: skip
        v = torch.cat([heads(attn.add_v_proj(encoder_hidden_states)), heads(attn.to_v(hidden_states))], dim=1)
        q, k = (
            apply_rotary_emb(q, image_rotary_emb, sequence_dim=1),
            apply_rotary_emb(k, image_rotary_emb, sequence_dim=1),
        )
        self.logits = torch.einsum("blhd,bmhd->bhlm", q, k) / math.sqrt(attn.head_dim)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        out = out.transpose(1, 2).flatten(2)
        text = encoder_hidden_states.shape[1]
        return attn.to_out[1](attn.to_out[0](out[:, text:])), attn.to_add_out(out[:, :text])


TARGET, GRIDS, TEXT = (2, 2), [(1, 2), (1, 1)], 8  # 4 target tokens, then reference 1 (2 tokens), reference 2 (1)


def tiny_model_with_full_logits(seed: int):
    """The tiny transformer with :class:`FullLogits` in its double block 0, and random inputs of two samples with
    TARGET, GRIDS and TEXT tokens."""
    transformer = tiny_components(seed=0)["transformer"].eval()
    full = FullLogits()
    transformer.transformer_blocks[0].attn.set_processor(full)
    g = torch.Generator().manual_seed(seed)
    inputs = dict(
        hidden_states=torch.randn(2, 7, 64, generator=g),
        timestep=torch.tensor([0.5, 0.5]),
        guidance=torch.tensor([1.0, 1.0]),
        pooled_projections=torch.randn(2, 32, generator=g),
        encoder_hidden_states=torch.randn(2, TEXT, 32, generator=g),
        txt_ids=torch.zeros(TEXT, 3),
        img_ids=sequence_position_ids(TARGET, GRIDS),
        return_dict=False,
    )
    return transformer, full, inputs


def test_response_maps_and_loss_equal_a_hand_computation_from_the_full_attention():
    transformer, full, inputs = tiny_model_with_full_logits(seed=0)
    target, text = TARGET, TEXT
    with torch.no_grad(), RoutingCapture(transformer, [0]) as capture:
        transformer(**inputs)
    maps = capture.response_maps(4, [2, 1])

    # by hand: reference i's query rows, the target's key columns, averaged over heads and the reference's tokens
    logits = full.logits
    image = slice(text, text + 4)
    hand = torch.stack(
        [logits[:, :, text + 4 : text + 6, image].mean(dim=(1, 2)), logits[:, :, text + 6 : text + 7, image].mean(dim=(1, 2))],
        dim=1,
    )[None]  # fmt: skip
    torch.testing.assert_close(maps, hand, rtol=1e-5, atol=1e-5)

    # subject 1 in the left column, subject 2 in the top-right quarter: masks [1, 0, 1, 0] and [0, 1, 0, 0]
    boxes = [((0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 0.5))] * 2
    masks, valid = reference_token_masks(boxes, target, 2)
    assert masks[0].tolist() == [[1, 0, 1, 0], [0, 1, 0, 0]] and valid.tolist() == [1, 1]
    per_sample = [sum(((hand[0, b, i] - masks[b, i]) ** 2).sum() for i in range(2)) / 2 for b in range(2)]
    torch.testing.assert_close(routing_loss(maps, masks, valid), (per_sample[0] + per_sample[1]) / 2)
    # a sample without one box per reference is left out of the mean
    torch.testing.assert_close(routing_loss(maps, masks, torch.tensor([1.0, 0.0])), per_sample[0])


def test_box_token_shares_measure_partial_tokens():
    assert box_token_shares((0.0, 0.0, 0.25, 1.0), (1, 2)).tolist() == [0.5, 0.0]


def _rle(mask) -> tuple[int, int, tuple[int, ...]]:
    from unoflux.world.raster import rle_encode

    rle = rle_encode(mask)
    return (*rle["size"], tuple(rle["counts"]))


def test_mask_token_shares_are_exact_area_fractions():
    """Counted by hand: a 32 x 32 target (2 x 2 tokens of 16 px) with the rectangle rows 4..19, cols 10..29 covers
    12 x 6, 12 x 14, 4 x 6 and 4 x 14 pixels of its four tokens; the same at 64 px (32 px a token); a 32 x 64
    target cropped to its centre 32 x 32 (cols 16..47) as load_pixels crops it."""
    import numpy as np

    from unoflux.train.data import mask_token_shares

    mask = np.zeros((32, 32), bool)
    mask[4:20, 10:30] = True
    hand = [12 * 6 / 256, 12 * 14 / 256, 4 * 6 / 256, 4 * 14 / 256]
    torch.testing.assert_close(mask_token_shares(_rle(mask), (2, 2)), torch.tensor(hand))
    torch.testing.assert_close(mask_token_shares(_rle(mask.repeat(2, 0).repeat(2, 1)), (2, 2)), torch.tensor(hand))
    wide = np.zeros((32, 64), bool)
    wide[0:16, 8:24] = True  # cols 16..23 inside the crop: 16 x 8 pixels of token 0
    torch.testing.assert_close(mask_token_shares(_rle(wide), (2, 2)), torch.tensor([0.5, 0, 0, 0]))
    # a pixel straddling two tokens counts in both by its overlap: a 3 x 3 image on 2 x 2 tokens (1.5 pixels a
    # token) whose middle column is the subject: half of that column in each token, a third of the token's width
    middle = np.zeros((3, 3), bool)
    middle[:, 1] = True
    torch.testing.assert_close(mask_token_shares(_rle(middle), (2, 2)), torch.full((4,), 1 / 3))


def test_world_records_route_to_their_exact_masks_and_boxes_still_work(pairs_data, multi_pairs_data):
    """World records carry the renderer's masks: the routing targets are their token shares (each token's share of
    the mask's pixels, a 16 x 16 block mean at the world's sizes), not the boxes'; records without masks (real
    data) keep their boxes, and a batch can mix both."""
    import numpy as np

    from unoflux.train.data import read_paired_samples
    from unoflux.world.raster import rle_decode

    samples = read_paired_samples([str(multi_pairs_data), str(pairs_data)], lambda n: 16)
    multi = next(s for s in samples if len(s.references) == 2)
    assert len(multi.subject_masks) == len(multi.subject_boxes) == 2
    records = [json.loads(line) for line in (multi_pairs_data / "manifest.jsonl").read_text().splitlines()]
    record = next(r for r in records if str(multi_pairs_data / r["image"]) == str(multi.image))
    grid = (2, 2)
    shares, valid = reference_token_masks([multi.subject_boxes], grid, 2, [multi.subject_masks])
    for k, subject in enumerate(record["subjects"]):
        pixels = rle_decode(subject["mask_rle"]).astype(np.float64)  # 32 x 32 target: 16 x 16 pixels a token
        blocks = pixels.reshape(2, 16, 2, 16).mean(axis=(1, 3)).flatten()
        torch.testing.assert_close(shares[0, k], torch.from_numpy(blocks).float())
        assert not torch.equal(shares[0, k], box_token_shares(multi.subject_boxes[k], grid))  # boxes overcount
    assert valid.tolist() == [1]
    boxes_only = ((0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 0.5))
    mixed, valid = reference_token_masks([boxes_only, multi.subject_boxes], grid, 2, [(), multi.subject_masks])
    assert mixed[0].tolist() == [[1, 0, 1, 0], [0, 1, 0, 0]] and torch.equal(mixed[1], shares[0])
    assert valid.tolist() == [1, 1]


def test_uno_json_records_route_to_their_subject_mask_images(tmp_path):
    """Real data: a UNO JSON record's ``subject_masks`` (one image per reference, e.g. LISA's) become its routing
    targets (at the mask's own resolution, lined up with the target's crop); a wrong count or a missing file skips
    the record with the reason."""
    import numpy as np
    from PIL import Image

    from unoflux.train.data import BadRecordWarning, read_paired_samples

    Image.new("RGB", (32, 32), "gray").save(tmp_path / "target.png")
    for name in ("a.png", "b.png"):
        Image.new("RGB", (16, 16), "white").save(tmp_path / name)
    left = np.zeros((64, 64), np.uint8)  # the left half, at twice the target's size
    left[:, :32] = 255
    Image.fromarray(left).save(tmp_path / "mask_a.png")
    Image.fromarray(255 - left).save(tmp_path / "mask_b.png")
    record = {"prompt": "p", "image_paths": ["a.png", "b.png"], "image_tgt_path": "target.png"}
    records = [
        {**record, "subject_masks": ["mask_a.png", "mask_b.png"]},
        record,  # no masks: left out of the constraint, trained as before
        {**record, "subject_masks": ["mask_a.png"]},
        {**record, "subject_masks": ["mask_a.png", "missing.png"]},
    ]
    (tmp_path / "train.json").write_text(json.dumps(records))
    with pytest.warns(BadRecordWarning) as caught:
        samples = read_paired_samples([str(tmp_path / "train.json")], lambda n: 16)
    reasons = [str(w.message) for w in caught]
    assert any("record 2 skipped: 1 subject masks for 2 references: give one per reference" in r for r in reasons)
    assert any("record 3 skipped:" in r and "missing.png" in r and "does not exist" in r for r in reasons)
    assert len(samples) == 2 and samples[1].subject_masks == ()
    shares, valid = reference_token_masks([(), ()], (2, 2), 2, [s.subject_masks for s in samples])
    assert shares[0].tolist() == [[1, 0, 1, 0], [0, 1, 0, 1]] and valid.tolist() == [1, 0]


def test_a_run_with_the_routing_constraint_trains_differently_and_checks_its_blocks(tiny_config, multi_pairs_data):
    base = dict(
        data=[str(multi_pairs_data)],
        method="dreamo",
        batch_size=1,
        max_steps=2,
        reference_long_side_multi=16,
        lora={"rank": 4, "target_modules": "uno"},
    )
    with pytest.raises(
        UnofluxError, match="dreamo.routing_blocks names block 5, but this model's double blocks are 0 .. 0"
    ):
        Trainer(tiny_config(**base, dreamo={"routing_weight": 1.0, "routing_blocks": [5]}), command=[])
    finals = {}
    for weight, checkpointing in ((0.0, False), (1.0, False), (1.0, True)):
        config = tiny_config(
            **base,
            output_dir=f"{tiny_config().output_dir}-{weight}-{checkpointing}",
            dreamo={"routing_weight": weight, "routing_blocks": [0]},
            gradient_checkpointing=checkpointing,
        )
        final = Trainer(config, command=[]).train()
        finals[weight, checkpointing] = load_file(final / "dreamo.safetensors")
        with open(final.parent / "log.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        if weight:  # the constraint's own value is logged beside the total loss
            assert all(0 < float(r["routing_loss"]) < float("inf") for r in rows), rows
        else:
            assert "routing_loss" not in rows[0]
    # same seeds and data: only the constraint's gradient tells the runs apart
    off, on = finals[0.0, False]["dreamo_idx_embedding.weight"], finals[1.0, False]["dreamo_idx_embedding.weight"]
    assert not torch.equal(off, on)
    # the hooks' q and k still carry the constraint's gradient when the blocks are recomputed in the backward
    for key, tensor in finals[1.0, False].items():
        torch.testing.assert_close(finals[1.0, True][key], tensor, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "dreamo, message",
    [
        ({"routing_weight": -1}, "dreamo.routing_weight -1 must be a number >= 0"),
        ({"holder_weight": "big"}, "dreamo.holder_weight 'big' must be a number >= 0 \\(0 = no placeholder loss\\)"),
        ({"routing_blocks": []}, "dreamo.routing_blocks [] must be a non-empty list"),
        ({"routing_blocks": [2, 2]}, "dreamo.routing_blocks [2, 2] must be a non-empty list of distinct"),
    ],
)
def test_bad_routing_settings_are_one_sentence(dreamo, message):
    from unoflux.train import TrainConfig

    values = dict(data=["d"], output_dir="o", method="dreamo", lora={"target_modules": "uno"}, dreamo=dreamo)
    with pytest.raises(UnofluxError, match=message.replace("[", r"\[").replace("]", r"\]")):
        TrainConfig.from_dict(values)
    with pytest.raises(UnofluxError, match="dreamo.routing_weight needs method: dreamo"):
        TrainConfig.from_dict(dict(data=["d"], output_dir="o", dreamo={"routing_weight": 1}))
    with pytest.raises(UnofluxError, match="dreamo.holder_weight needs method: dreamo"):
        TrainConfig.from_dict(dict(data=["d"], output_dir="o", dreamo={"holder_weight": 1}))


def test_placeholder_loss_equals_a_hand_computation_from_the_full_attention():
    """Eq. 4: reference i's queries against the keys of the [ref#] tokens at each caption's own positions,
    softmaxed over the placeholders per head, averaged over heads, against the one-hot of i."""
    from unoflux.train.routing import placeholder_loss, placeholder_targets

    transformer, full, inputs = tiny_model_with_full_logits(seed=1)
    text = TEXT
    first = 100  # the T5 id of [ref#1]; [ref#2] is 101
    ids = torch.tensor([[5, 100, 7, 7, 7, 101, 1, 0], [5, 7, 101, 100, 7, 1, 0, 0]])
    holder = placeholder_targets(ids, first, [2, 1])
    assert holder.positions.tolist() == [[1, 5], [3, 2]] and holder.valid.tolist() == [1, 1]
    with torch.no_grad(), RoutingCapture(transformer, [0]) as capture:
        transformer(**inputs)

    logits, hand = full.logits, []  # (B, H, L, L) over [text, image]
    for b in range(2):
        columns = holder.positions[b]
        terms = []
        for i, rows in enumerate((slice(text + 4, text + 6), slice(text + 6, text + 7))):
            p = logits[b, :, rows][:, :, columns].softmax(dim=-1).mean(dim=0)  # (l_i, n_c)
            terms.append(((p - torch.eye(2)[i]) ** 2).sum(dim=-1).mean())
        hand.append(sum(terms) / 2)
    torch.testing.assert_close(capture.placeholder_loss(holder), (hand[0] + hand[1]) / 2, rtol=1e-5, atol=1e-6)
    probabilities = capture.placeholder_probabilities(holder)
    torch.testing.assert_close(placeholder_loss(probabilities, torch.tensor([0.0, 1.0])), hand[1])
    # a caption that does not name every reference is left out; none naming them: no loss at all
    assert placeholder_targets(torch.tensor([[5, 100, 7]]), first, [2, 1]) is None
    partial = placeholder_targets(torch.cat([ids[:1], torch.tensor([[5, 100, 7, 7, 7, 7, 1, 0]])]), first, [2, 1])
    assert partial.valid.tolist() == [1, 0]
    # one reference: nothing to tell apart (the loss would be 0 with no gradient), so none is computed or logged
    assert placeholder_targets(torch.tensor([[first, 5, 1]]), first, [4]) is None


def test_a_run_with_the_placeholder_loss_logs_it_and_trains_differently(tiny_config, tmp_path):
    """Captions that name the references by their placeholders (UNO's training JSON): the loss is logged and moves
    the placeholder rows; without it (same seeds) they end elsewhere."""
    from unoflux.checkpoints.dreamo import PLACEHOLDERS

    records = []
    for k in range(2):
        for name, seed in ((f"t{k}.png", k), (f"a{k}.png", 10 + k), (f"b{k}.png", 20 + k)):
            pixels = torch.randint(0, 256, (32, 32, 3), generator=torch.Generator().manual_seed(seed))
            Image.fromarray(pixels.to(torch.uint8).numpy()).save(tmp_path / name)
        records.append({"prompt": f"a cup from {PLACEHOLDERS[0]} beside a vase from {PLACEHOLDERS[1]}",
                        "image_paths": [f"a{k}.png", f"b{k}.png"], "image_tgt_path": f"t{k}.png"})  # fmt: skip
    data = tmp_path / "pairs.json"
    data.write_text(json.dumps(records))
    base = dict(data=[str(data)], method="dreamo", batch_size=1, max_steps=2, reference_long_side_multi=16,
                lora={"rank": 4, "target_modules": "uno"})  # fmt: skip
    rows_after = {}
    for weight in (0.0, 1.0):
        config = tiny_config(**base, output_dir=str(tmp_path / f"run-{weight}"),
                             dreamo={"holder_weight": weight, "routing_blocks": [0]})  # fmt: skip
        final = Trainer(config, command=[]).train()
        rows_after[weight] = load_file(final / "dreamo.safetensors")["dreamo_t5_embedding.weight"]
        with open(final.parent / "log.csv", newline="") as fh:
            log = list(csv.DictReader(fh))
        if weight:
            assert all(0 < float(r["holder_loss"]) < float("inf") for r in log), log
        else:
            assert "holder_loss" not in log[0]
    assert not torch.equal(rows_after[0.0], rows_after[1.0])
