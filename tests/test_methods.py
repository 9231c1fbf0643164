"""The conditioning seam: a method's per-token embeddings, text prefix and CFG branch reach the transformer exactly
as a hand-written forward computes, and the name -> method table."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from unoflux import UnofluxError, engine, flow
from unoflux.methods import METHODS, Conditioning, get_method
from unoflux.methods.uno import UnoMethod
from unoflux.references import Reference

from .conftest import random_image

HIDDEN = 32  # the tiny transformer's width (2 heads x 16)
PREFIX_TOKENS = 3


class EmbeddingAndPrefixMethod(UnoMethod):
    """DreamO- and USO-shaped, on UNO's references: target tokens get one embedding, every reference token another
    (DreamO's task/index embeddings), and hidden-width tokens are prepended to the text stream (USO's style tokens).
    CFG's negative branch sees the target alone, with no embedding (DreamO's)."""

    name = "test-embedding-prefix"

    def __init__(self, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.target_embedding = torch.randn(HIDDEN, generator=g)
        self.reference_embedding = torch.randn(HIDDEN, generator=g)
        self.prefix = torch.randn(1, PREFIX_TOKENS, HIDDEN, generator=g)

    def conditioning(self, target_grid, reference_tokens, reference_grids, position_mode) -> Conditioning:
        uno = super().conditioning(target_grid, reference_tokens, reference_grids, position_mode)
        n_target = target_grid[0] * target_grid[1]
        embeddings = torch.cat(
            [self.target_embedding.expand(n_target, -1), self.reference_embedding.expand(uno.num_reference_tokens, -1)]
        )[None]
        unconditional = super().conditioning(target_grid, None, [], position_mode)
        return dataclasses.replace(
            uno, token_embeddings=embeddings, text_prefix=self.prefix, unconditional=unconditional
        )


def hand_written_forward(
    transformer, hidden, timestep, guidance, pooled, text, text_ids, image_ids, embeddings, prefix
) -> torch.Tensor:
    """FluxTransformer2DModel.forward written out, with the embeddings added after x_embedder and the prefix put
    before the projected text (ids zero): what DreamO's and USO's own code do."""
    image = transformer.x_embedder(hidden) + embeddings
    temb = transformer.time_text_embed(timestep * 1000, guidance * 1000, pooled)
    text = torch.cat([prefix.expand(len(hidden), -1, -1), transformer.context_embedder(text)], dim=1)
    ids = torch.cat([torch.zeros(prefix.shape[1], 3), text_ids, image_ids])
    rotary = transformer.pos_embed(ids)
    for block in [*transformer.transformer_blocks, *transformer.single_transformer_blocks]:
        text, image = block(hidden_states=image, encoder_hidden_states=text, temb=temb, image_rotary_emb=rotary)
    return transformer.proj_out(transformer.norm_out(image, temb))


@pytest.fixture
def inputs(tiny_pipe):
    g = torch.Generator().manual_seed(3)
    text, pooled, text_ids = tiny_pipe.encode_prompt(prompt=["a red cup"], prompt_2=None, max_sequence_length=16)
    return dict(
        x_t=torch.randn(1, 6, 64, generator=g),
        timestep=torch.tensor([0.7]),
        guidance=torch.tensor([4.0]),
        text=text,
        pooled=pooled,
        text_ids=text_ids,
    )


def test_embeddings_and_text_prefix_enter_exactly_as_a_hand_written_forward(tiny_pipe, inputs):
    method, transformer = EmbeddingAndPrefixMethod(), tiny_pipe.transformer
    references = torch.randn(1, 4, 64, generator=torch.Generator().manual_seed(4))
    conditioning = method.conditioning((2, 3), references, [(2, 2)], "diagonal")
    got = engine.predict_velocity(transformer, transformer, conditioning, **inputs)

    with torch.no_grad():
        expected = hand_written_forward(
            transformer,
            torch.cat([inputs["x_t"], references], dim=1),
            inputs["timestep"],
            inputs["guidance"],
            inputs["pooled"],
            inputs["text"],
            inputs["text_ids"],
            conditioning.image_ids,
            conditioning.token_embeddings,
            method.prefix,
        )[:, :6]
    assert torch.equal(got, expected)

    plain = UnoMethod().conditioning((2, 3), references, [(2, 2)], "diagonal")
    uno = engine.predict_velocity(transformer, transformer, plain, **inputs)
    assert not torch.allclose(uno, got, atol=1e-4)  # the embeddings and the prefix matter
    without_prefix = dataclasses.replace(conditioning, text_prefix=None)
    assert not torch.allclose(
        engine.predict_velocity(transformer, transformer, without_prefix, **inputs), got, atol=1e-4
    )
    # the hooks live only inside the call: afterwards the transformer is plain FLUX again
    assert not transformer.x_embedder._forward_hooks and not transformer.context_embedder._forward_hooks
    assert torch.equal(engine.predict_velocity(transformer, transformer, plain, **inputs), uno)


def test_the_pipeline_samples_a_methods_conditioning_and_its_unconditional_branch(tiny_pipe):
    """One step of true CFG through the pipeline = the Euler step of v_uncond + s (v_cond - v_uncond), v_cond with
    the method's embeddings, prefix and references and v_uncond with its unconditional conditioning."""
    method, pipe = EmbeddingAndPrefixMethod(), tiny_pipe
    reference = random_image(64, 48, seed=1)
    settings = dict(
        width=48,
        height=32,
        num_inference_steps=1,
        seed=5,
        reference_long_side=32,
        true_cfg_scale=3.0,
        negative_prompt="a blue dog",
        time_shift=1.0,
        guidance_scale=4.0,
        max_sequence_length=16,
    )
    out = pipe("a red cup", [reference], method=method, output_type="latent", **settings)
    assert out.settings["method"] == "test-embedding-prefix"

    images = method.preprocess_references([Reference(reference)], 32)
    conditioning = method.prepare(pipe, images, (2, 3), "diagonal", torch.device("cpu"), torch.float32)
    text, pooled, text_ids = pipe.encode_prompt(prompt=["a red cup"], prompt_2=None, max_sequence_length=16)
    negative, negative_pooled, _ = pipe.encode_prompt(prompt=["a blue dog"], prompt_2=None, max_sequence_length=16)
    x = pipe.prepare_noise([5], 32, 48, torch.device("cpu"), torch.float32, "cpu")
    common = dict(x_t=x, timestep=torch.ones(1), guidance=torch.full((1,), 4.0), text_ids=text_ids)
    with torch.no_grad():
        v_cond = engine.predict_velocity(
            pipe.transformer, pipe.transformer, conditioning, text=text, pooled=pooled, **common
        )
        v_uncond = engine.predict_velocity(
            pipe.transformer,
            pipe.transformer,
            conditioning.unconditional,
            text=negative,
            pooled=negative_pooled,
            **common,
        )
    expected = flow.euler_step(x, v_uncond + 3.0 * (v_cond - v_uncond), 1.0, 0.0)
    assert conditioning.unconditional.reference_tokens is None and conditioning.unconditional.token_embeddings is None
    torch.testing.assert_close(out.images, expected, rtol=0, atol=1e-5)  # float32 rounding of values ~3
    assert not torch.allclose(pipe("a red cup", [reference], output_type="latent", **settings).images, out.images)


def test_method_table_and_bad_names(tiny_pipe):
    assert list(METHODS) == ["uno", "uso", "dreamo"] and get_method("uno") is METHODS["uno"]
    custom = EmbeddingAndPrefixMethod()
    assert get_method(custom) is custom
    with pytest.raises(UnofluxError, match="method 'dreamo-typo' is not one of: uno, uso, dreamo"):
        get_method("dreamo-typo")
    with pytest.raises(UnofluxError, match="method 'nope' is not one of"):
        tiny_pipe("a cat", method="nope", width=32, height=32, num_inference_steps=1)


def test_a_method_refuses_too_many_references_before_any_model_runs():
    class OneReference(UnoMethod):
        name, limits = "one-reference", {"subject": 1}

    two, one = [Reference("a.png"), Reference("b.png")], [Reference("a.png")]
    with pytest.raises(UnofluxError, match="method 'one-reference' takes at most 1 subject references, not 2"):
        OneReference().check(two)
    OneReference().check(one)
    UnoMethod().check(one * 10)  # UNO takes any number: the token budget (MAX_IMAGE_TOKENS) is its limit
    with pytest.raises(UnofluxError, match=r"method 'uno' takes no style references \(use --method uso\)"):
        UnoMethod().check([Reference("s.png", "style")])
    with pytest.raises(UnofluxError, match="method 'uso' takes at most 1 subject references, not 2"):
        get_method("uso").check(two)
    get_method("uso").check([*one, Reference("s.png", "style"), Reference("t.png", "style")])
