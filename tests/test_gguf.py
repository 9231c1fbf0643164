"""FLUX transformers from GGUF files: kept quantized, computing what their dequantized weights compute, loadable
wherever a transformer file is (--flux), LoRA beside them; bad files and impossible combinations refused."""

from __future__ import annotations

import pytest
import torch
from diffusers import FluxTransformer2DModel

from unoflux import UnofluxError
from unoflux.checkpoints import ModelPaths, load_pipeline
from unoflux.checkpoints.gguf import dequantized_state, write_gguf_transformer
from unoflux.checkpoints.loading import load_transformer

from .conftest import random_image

pytest.importorskip("gguf")


def forward_inputs(config, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(1, 6, config.in_channels, generator=g),
        encoder_hidden_states=torch.randn(1, 5, config.joint_attention_dim, generator=g),
        pooled_projections=torch.randn(1, config.pooled_projection_dim, generator=g),
        timestep=torch.tensor([0.6]),
        guidance=torch.tensor([4.0]),
        img_ids=torch.arange(18.0).reshape(6, 3),
        txt_ids=torch.zeros(5, 3),
        return_dict=False,
    )


@pytest.fixture(scope="module")
def gguf_file(official_layout, tmp_path_factory):
    _, components = official_layout
    return write_gguf_transformer(components["transformer"], tmp_path_factory.mktemp("gguf") / "tiny-Q8_0.gguf")


def test_a_gguf_transformer_stays_quantized_and_computes_its_dequantized_weights(gguf_file, official_layout):
    from diffusers.quantizers.gguf.utils import GGUFLinear

    _, components = official_layout
    original = components["transformer"]
    model = load_transformer(gguf_file, torch.float32)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(model.config) == public(original.config) | {"out_channels": original.config.in_channels}
    quantized = [m for m in model.modules() if isinstance(m, GGUFLinear)]
    assert len(quantized) >= 10  # every linear layer whose rows fit Q8_0's 32-wide blocks
    stored = sum(p.numel() * p.element_size() for p in model.parameters())
    assert stored < 0.5 * sum(p.numel() * p.element_size() for p in original.parameters())  # int8 + scales
    plain = FluxTransformer2DModel(**public(original.config))
    plain.load_state_dict(dequantized_state(gguf_file))
    inputs = forward_inputs(original.config)
    with torch.no_grad():
        out, reference, exact = model(**inputs)[0], plain.eval()(**inputs)[0], original(**inputs)[0]
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
    assert (out - exact).abs().max() < 0.05 * exact.abs().max()  # and Q8_0 is close to the float weights
    assert not torch.equal(out, exact)


def test_a_gguf_file_loads_as_flux_with_unos_lora_beside_it(gguf_file, official_layout):
    paths, _ = official_layout
    pipe = load_pipeline(ModelPaths(flux=str(gguf_file), ae=paths.ae, t5=paths.t5, clip=paths.clip, lora=paths.lora),
                         use_environment=False)  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    refs = [random_image(32, 32, seed=1)]
    args = dict(width=32, height=32, steps=2, seed=3, reference_long_side=32, output_type="latent")
    with_lora = pipe("a red cup", refs, **args).images
    pipe.disable_lora()
    without = pipe("a red cup", refs, **args).images
    assert torch.isfinite(with_lora).all() and not torch.allclose(with_lora, without, atol=1e-6)
    for kwargs, message in (
        (dict(fuse_lora=True), "--fuse-lora cannot fuse"),
        (dict(weights_dtype="fp8"), "already quantized"),
    ):
        with pytest.raises(UnofluxError, match=message):
            load_pipeline(ModelPaths(flux=str(gguf_file), ae=paths.ae, t5=paths.t5, clip=paths.clip, lora=paths.lora),
                          use_environment=False, **kwargs)  # fmt: skip


def test_broken_and_foreign_gguf_files_are_refused_in_one_sentence(tmp_path):
    import gguf
    import numpy as np

    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 40)
    with pytest.raises(UnofluxError, match="is not a readable GGUF file"):
        load_transformer(broken, torch.float32)
    foreign = tmp_path / "llama.gguf"
    writer = gguf.GGUFWriter(str(foreign), "llama")
    writer.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UnofluxError, match="is not a FLUX transformer in GGUF"):
        load_transformer(foreign, torch.float32)
    with pytest.raises(UnofluxError, match="does not exist"):
        load_transformer(tmp_path / "missing.gguf", torch.float32)
