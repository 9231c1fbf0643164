"""Driving bytedance/UNO's own inference code from a local checkout the user names (never vendored, never
committed), on weights in the official layouts: for numerical parity (scripts/parity_uno.py, parity_uso.py) and
side-by-side benchmarks (``unoflux bench --against-reference``).

What is patched on the reference side (float32 only; see ``ReferenceRunner.patch_reference``): ``torchvision``
(imported only for ``to_tensor``) is replaced by a numpy stand-in while the reference imports; its bf16 noise draw is
cast to float32; reference latents keep float32 (its bf16 cast would be a dtype error with a float32 model); the AE
posterior returns its mean; ``SingleStreamBlockLoraProcessor.proj_lora`` is rebuilt at the model's width (it
hard-codes FLUX.1's 15360 inputs); ``unpack`` is wrapped to capture the final latents. The reference needs
``einops`` (``pip install einops``); unoflux does not.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image


# --------------------------------------------------------------------------------- reference import
def torchvision_stub() -> dict[str, types.ModuleType]:
    """The reference imports ``torchvision.transforms.functional`` only for ``to_tensor``."""

    def to_tensor(pic: Image.Image) -> torch.Tensor:
        array = np.asarray(pic, dtype=np.uint8)
        if array.ndim == 2:
            array = array[:, :, None]
        return torch.from_numpy(array.astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()

    tv = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    functional.to_tensor = to_tensor
    transforms.functional = functional
    tv.transforms = transforms
    return {"torchvision": tv, "torchvision.transforms": transforms, "torchvision.transforms.functional": functional}


def import_reference(repo: Path, package: str = "uno"):
    """The reference's modules from a checkout: bytedance/UNO (``uno``), or bytedance/USO (``uso``), whose
    ``uso/flux`` is UNO's code plus the style projector."""
    import importlib

    if not (repo / package / "flux" / "pipeline.py").is_file():
        raise SystemExit(
            f"{repo} does not look like a bytedance/{package.upper()} checkout (no {package}/flux/pipeline.py)"
        )
    # transformers/diffusers probe for torchvision with importlib.util.find_spec, which a stand-in module
    # breaks: import them first and keep the stand-in in sys.modules only while the reference imports.
    import diffusers  # noqa: F401
    import transformers  # noqa: F401

    stub = torchvision_stub()
    if any(name in sys.modules for name in stub):
        raise SystemExit("torchvision is imported already; run this script where torchvision is not installed")
    sys.modules.update(stub)
    sys.path.insert(0, str(repo))
    try:
        ref_pipeline = importlib.import_module(f"{package}.flux.pipeline")
    finally:
        for name in stub:
            sys.modules.pop(name, None)
    model = importlib.import_module(f"{package}.flux.model")
    autoencoder = importlib.import_module(f"{package}.flux.modules.autoencoder")
    layers = importlib.import_module(f"{package}.flux.modules.layers")
    return types.SimpleNamespace(
        pipeline=ref_pipeline,
        util=importlib.import_module(f"{package}.flux.util"),
        Flux=model.Flux,
        FluxParams=model.FluxParams,
        AutoEncoder=autoencoder.AutoEncoder,
        AutoEncoderParams=autoencoder.AutoEncoderParams,
        HFEmbedder=importlib.import_module(f"{package}.flux.modules.conditioner").HFEmbedder,
        LoRALinearLayer=layers.LoRALinearLayer,
        SingleStreamBlockLoraProcessor=layers.SingleStreamBlockLoraProcessor,
    )


# ------------------------------------------------------------------------------ reference building
def flux_params(ref, transformer_config) -> object:
    c = transformer_config
    return ref.FluxParams(
        in_channels=c.in_channels,
        vec_in_dim=c.pooled_projection_dim,
        context_in_dim=c.joint_attention_dim,
        hidden_size=c.num_attention_heads * c.attention_head_dim,
        mlp_ratio=4.0,
        num_heads=c.num_attention_heads,
        depth=c.num_layers,
        depth_single_blocks=c.num_single_layers,
        axes_dim=list(c.axes_dims_rope),
        theta=10_000,
        qkv_bias=True,
        guidance_embed=c.guidance_embeds,
    )


def build_reference_flux(ref, params, flux_path: str | None, lora_path: str | None, lora_rank: int):
    """The reference transformer as ``load_flow_model_only_lora`` builds it, float32, on CPU.

    ``flux_path=None`` leaves the (seeded) random initialization: the "were the weights loaded" check.
    """
    from safetensors.torch import load_file

    model = ref.Flux(params)
    if lora_path is not None:
        model = ref.util.set_lora(model, lora_rank, device="cpu")
        # Reference hard-codes proj_lora's input width as 15360 = 3072 + 4 * 3072 (FLUX.1's hidden + MLP
        # width: the input of linear2). Rebuild it at this model's width; nothing else changes.
        for block in model.single_blocks:
            proc = block.processor
            assert isinstance(proc, ref.SingleStreamBlockLoraProcessor)
            proc.proj_lora = ref.LoRALinearLayer(block.hidden_size + block.mlp_hidden_dim, block.hidden_size, lora_rank)
    if flux_path is None:
        return model.float().eval()
    sd = load_file(flux_path)
    if lora_path is not None:
        lora_sd = load_file(lora_path)
        assert set(lora_sd).isdisjoint(sd)
        sd.update(lora_sd)
    missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    if missing or unexpected:  # every parameter, LoRA included, must come from the files
        raise SystemExit(f"reference Flux load: missing {missing}, unexpected {unexpected}")
    return model.float().eval()


def build_reference_ae(ref, ae_path: str, vae_config):
    from safetensors.torch import load_file

    ch = vae_config.block_out_channels[0]
    params = ref.AutoEncoderParams(
        resolution=256,
        in_channels=vae_config.in_channels,
        ch=ch,
        out_ch=vae_config.out_channels,
        ch_mult=[c // ch for c in vae_config.block_out_channels],
        num_res_blocks=vae_config.layers_per_block,
        z_channels=vae_config.latent_channels,
        scale_factor=vae_config.scaling_factor,
        shift_factor=vae_config.shift_factor,
    )
    ae = ref.AutoEncoder(params)
    missing, unexpected = ae.load_state_dict(load_file(ae_path), strict=False, assign=True)
    if missing or unexpected:
        raise SystemExit(f"reference AE load: missing {missing}, unexpected {unexpected}")
    ae.reg.sample = False  # posterior mean (documented choice; the reference samples with the global RNG)
    return ae.float().eval()


class _Float32Latent(torch.Tensor):
    """Result of the reference's ``ae.encode``: its ``.to(torch.bfloat16)`` keeps float32 (``mode="keep"``)
    or rounds through bf16 and back (``mode="round"``); device moves are unchanged."""

    mode = "keep"

    def to(self, *args, **kwargs):
        plain = self.as_subclass(torch.Tensor)
        wants_bf16 = kwargs.pop("dtype", None) is torch.bfloat16 or any(a is torch.bfloat16 for a in args)
        args = tuple(a for a in args if not isinstance(a, torch.dtype))
        out = plain.to(*args, **kwargs)
        if wants_bf16 and self.mode == "round":
            out = out.to(torch.bfloat16).float()
        return out


class ReferenceAE:
    """What ``UNOPipeline.forward`` uses of ``self.ae`` (encode, decode, encoder/decoder for offload)."""

    def __init__(self, ae, ref_latent_mode: str):
        self.ae, self.mode = ae, ref_latent_mode
        self.encoder, self.decoder = ae.encoder, ae.decoder

    def encode(self, x):
        z = self.ae.encode(x).as_subclass(_Float32Latent)
        z.mode = self.mode
        return z

    def decode(self, z):
        return self.ae.decode(z)


class ReferenceRunner:
    """Drives the reference ``UNOPipeline.forward`` and captures the latents it unpacks for decoding."""

    def __init__(self, ref, model, ae, t5, clip):
        self.ref = ref
        self.pipe = object.__new__(ref.pipeline.UNOPipeline)
        self.pipe.model, self.pipe.t5, self.pipe.clip = model, t5, clip
        self.pipe.device, self.pipe.offload, self.pipe.use_fp8, self.pipe.model_type = "cpu", False, False, "flux-dev"
        self.ae = ae
        self.patch_reference()

    captured: list[torch.Tensor] = []  # shared: the patch is installed once, in the reference module

    def patch_reference(self) -> None:
        """Patch names in ``uno.flux.pipeline`` only (the module ``forward`` looks them up in):

        - ``get_noise``: the reference's own bf16 draw (seeded CPU generator), cast to float32 so the
          float32 model sees float32 latents (our pipeline draws the same bf16 noise, then casts);
        - ``unpack``: record its input, the final packed latents, then unpack as the reference does.
        """
        mod = self.ref.pipeline
        if getattr(mod, "_parity_patched", False):
            return
        original_noise, original_unpack = mod.get_noise, mod.unpack

        def get_noise(*args, **kwargs):
            return original_noise(*args, **kwargs).float()

        def unpack(x, height, width):
            ReferenceRunner.captured.append(x.detach().clone())
            return original_unpack(x, height, width)

        mod.get_noise, mod.unpack, mod._parity_patched = get_noise, unpack, True

    def __call__(self, prompt, refs, long_side, pe, *, width, height, steps, guidance, seed, ref_latents="keep"):
        self.pipe.ae = ReferenceAE(self.ae, ref_latents)
        ref_imgs = [self.ref.pipeline.preprocess_ref(img, long_side) for img in refs]
        self.captured.clear()
        # UNOPipeline.__call__: floors the size to multiples of 16, autocast off (no fp8), then forward
        image = self.pipe(prompt, width, height, guidance, steps, seed, ref_imgs=ref_imgs, pe=pe)
        assert len(self.captured) == 1
        return self.captured.pop().float(), image
