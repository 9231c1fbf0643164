"""--quantize: the transformer's big Linear layers held as torchao's int8 tensors, close to the float image, the
LoRA still applied on top; impossible combinations and devices refused in one sentence before any weights load."""

from __future__ import annotations

import pytest
import torch

from unoflux import UnofluxError
from unoflux.checkpoints import ModelPaths, load_pipeline
from unoflux.checkpoints.quantize import quantized_layers, weight_bytes

from .conftest import random_image

pytest.importorskip("torchao")


def _load(paths, **kwargs):
    pipe = load_pipeline(ModelPaths(**vars(paths)), use_environment=False, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_int8_keeps_the_lora_and_stays_close_to_the_float_image(official_layout):
    paths, _ = official_layout
    exact, quantized = _load(paths), _load(paths, quantize="int8")
    assert quantized_layers(exact.transformer) == 0
    assert quantized_layers(quantized.transformer) >= 10
    lora_layers = [m for name, m in quantized.transformer.named_modules() if "lora_" in name and hasattr(m, "weight")]
    assert lora_layers and quantized_layers(torch.nn.ModuleList(lora_layers)) == 0  # the LoRA stays in fp32
    assert weight_bytes(quantized.transformer) < 0.75 * weight_bytes(exact.transformer)

    refs = [random_image(32, 32, seed=1)]
    args = dict(width=32, height=32, steps=2, seed=3, reference_long_side=32, output_type="latent")
    want, got = exact("a red cup", refs, **args).images, quantized("a red cup", refs, **args).images
    assert not torch.equal(got, want)
    assert (got - want).abs().max() < 0.05 * want.abs().max()
    quantized.disable_lora()
    assert not torch.allclose(quantized("a red cup", refs, **args).images, got, atol=1e-4)  # the LoRA was on


def test_bad_quantizations_are_refused_before_loading(official_layout, tmp_path):
    paths, _ = official_layout
    for kwargs, message in (
        (dict(quantize="int4"), "quantization 'int4' is not one of: int8, fp8"),
        (dict(quantize="fp8"), "need an Ada or Hopper GPU .* not 'cpu'"),
        (dict(quantize="int8", weights_dtype="fp8"), "both set how weights are stored; give one"),
    ):
        with pytest.raises(UnofluxError, match=message):
            _load(paths, device="cpu", **kwargs)
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")  # refused on its name, before it is read
    with pytest.raises(UnofluxError, match="already quantized; leave --quantize int8 out"):
        load_pipeline(ModelPaths(flux=str(gguf), ae=paths.ae, t5=paths.t5, clip=paths.clip), quantize="int8",
                      use_environment=False)  # fmt: skip
