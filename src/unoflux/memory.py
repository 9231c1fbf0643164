"""``--dry-run``: the peak memory a generation is expected to need, before any weights load.

Weights come from the files' headers (safetensors headers, GGUF file sizes: nothing is read beyond them), at the
dtype each model will run in and with ``--quantize`` / ``--weights-dtype`` applied. Activations are not guessed
from a formula: one double-stream block, one single-stream block and the VAE decoder run under torch's
``FakeTensorMode`` (shapes only, no memory, no arithmetic) while torch's ``MemTracker`` records their peak, at the
call's real token counts and output size (``--vae-tiling`` honoured). The transformer's blocks run one after the
other under ``no_grad``, so the forward's peak is one block's peak plus the streams carried between blocks.

What is left out, and why the result is an estimate: the text encoders' activations (small next to their
weights), allocator caching and fragmentation, the CUDA context (not in ``max_memory_allocated`` either).
docs/performance.md compares estimates with measured peaks.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UnofluxError

GiB = 2**30
TEXT_TOKENS = 512  # T5's sequence as FLUX pads it
CPU_BASELINE = int(0.37 * GiB)  # torch + diffusers + transformers imported, measured (docs/performance.md)
_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4, "I8": 1, "U8": 1}
_COMPUTE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
# kept in the compute dtype by --quantize and --weights-dtype fp8 (checkpoints/quantize.py's list, and the same
# layers by their BFL names: the modulations are diffusers' norm*.linear)
_KEEP = ("lora", "norm", "pos_embed", "x_embedder", "context_embedder", "time_text_embed", "proj_out",
         "img_in", "txt_in", "time_in", "vector_in", "guidance_in", "final_layer", "_mod.", "modulation")  # fmt: skip


@dataclass
class MemoryEstimate:
    device: str
    weights: dict[str, int]  # model -> bytes held where it runs
    resident: int  # weights on the device during denoising (all of them, or what offload keeps there)
    transformer_activations: int
    vae_activations: int
    baseline: int = 0  # the process itself (CPU only)
    notes: list[str] = field(default_factory=list)

    @property
    def peak(self) -> int:
        return self.baseline + self.resident + max(self.transformer_activations, self.vae_activations)

    def describe(self) -> str:
        where = "peak RSS" if self.device == "cpu" else f"peak memory allocated on {self.device}"
        lines = [f"expected {where}: {self.peak / GiB:.2f} GiB (an estimate; nothing was loaded)"]
        for name, size in self.weights.items():
            lines.append(f"  {name + ' weights':<28} {size / GiB:8.2f} GiB")
        if self.resident != sum(self.weights.values()):
            lines.append(f"  {'on the device at once':<28} {self.resident / GiB:8.2f} GiB (offload)")
        lines.append(f"  {'transformer activations':<28} {self.transformer_activations / GiB:8.2f} GiB (one forward)")
        lines.append(f"  {'VAE decode activations':<28} {self.vae_activations / GiB:8.2f} GiB")
        if self.baseline:
            lines.append(f"  {'process (imports)':<28} {self.baseline / GiB:8.2f} GiB")
        return "\n".join(lines + [f"  note: {note}" for note in self.notes])


# ------------------------------------------------------------------------------------------------ weights
def safetensors_header(path: str | Path) -> dict:
    """A safetensors file's header (tensor names -> dtype, shape), read without reading any tensor."""
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
    except (OSError, struct.error, ValueError) as err:
        raise UnofluxError(f"{str(path)!r} is not a readable safetensors file ({err})") from None
    header.pop("__metadata__", None)
    return header


def _weight_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise UnofluxError(f"{str(path)!r} holds no .safetensors weights to size")
    return files


def weights_bytes(
    path: str | Path, compute_bytes: int | None, quantized_bytes: int | None = None, largest: bool = False
) -> int:
    """Bytes a model's weights take once loaded: each float tensor at ``compute_bytes`` (None: as stored), the big
    2-D weights at ``quantized_bytes`` when quantized (plus a scale per row), GGUF files at their own size;
    ``largest``: the largest single tensor's instead of the sum (what leaf-level offload holds at once)."""
    path = Path(path)
    if path.suffix == ".gguf":
        return path.stat().st_size if not largest else path.stat().st_size // 50  # (no per-tensor sizes read)
    total = biggest = 0
    for file in _weight_files(path):
        for name, info in safetensors_header(file).items():
            shape, stored = info["shape"], _BYTES.get(info["dtype"], 4)
            numel = 1
            for n in shape:
                numel *= n
            each = stored if compute_bytes is None or not info["dtype"].startswith(("F", "BF")) else compute_bytes
            if quantized_bytes and len(shape) == 2 and name.endswith("weight") and not any(k in name for k in _KEEP):
                size = numel * quantized_bytes + shape[0] * (compute_bytes or stored)
            else:
                size = numel * each
            total, biggest = total + size, max(biggest, size)
    return biggest if largest else total


# ------------------------------------------------------------------------------------------------ activations
def transformer_activation_peak(config: dict, image_tokens: int, text_tokens: int, batch: int, dtype) -> int:
    """Peak bytes of one transformer forward beyond its weights: the larger block's own peak (measured under
    FakeTensorMode) plus the streams carried from block to block."""
    import torch
    from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock, FluxTransformerBlock

    dim = config["num_attention_heads"] * config["attention_head_dim"]
    heads, head_dim = config["num_attention_heads"], config["attention_head_dim"]
    element = torch.empty((), dtype=dtype).element_size()
    n = image_tokens + text_tokens

    def block_peak(make_block, *inputs_shapes) -> int:
        from torch._subclasses.fake_tensor import FakeTensorMode
        from torch.distributed._tools.mem_tracker import MemTracker

        previous = torch.get_default_dtype()
        with FakeTensorMode():
            torch.set_default_dtype(dtype)
            try:
                block = make_block()
            finally:
                torch.set_default_dtype(previous)
            inputs = [torch.empty(shape, dtype=dtype) for shape in inputs_shapes]
            rope = (torch.empty(n, head_dim), torch.empty(n, head_dim))  # cos, sin (fp32)
            tracker = MemTracker()
            tracker.track_external(block)
            with tracker, torch.no_grad():
                block(*inputs, image_rotary_emb=rope)
            peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]
            weights = sum(p.numel() * p.element_size() for p in block.parameters())
        return max(0, int(peak) - weights)

    double = block_peak(
        lambda: FluxTransformerBlock(dim, heads, head_dim),
        (batch, image_tokens, dim),
        (batch, text_tokens, dim),
        (batch, dim),
    )
    single = block_peak(
        lambda: FluxSingleTransformerBlock(dim, heads, head_dim),
        (batch, image_tokens, dim),
        (batch, text_tokens, dim),
        (batch, dim),
    )
    latents = batch * image_tokens * config["in_channels"] * 4 * 3  # fp32 latents, the velocity, the next step
    return max(double, single) + latents + batch * n * dim * element  # + the final stream


def vae_decode_peak(vae_config: dict, width: int, height: int, tiling: bool) -> int:
    """Peak bytes of decoding one image (fp32 VAE) beyond its weights, measured under FakeTensorMode. Tiled, the
    decoder runs one tile (the VAE's ``sample_size``) at a time into the blended output: one tile's peak plus the
    tiles' and the image's pixels."""
    import torch
    from diffusers import AutoencoderKL
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    tile = int(vae_config.get("sample_size") or 0)
    if tiling and tile and (width > tile or height > tile):
        pixels = 3 * width * height * 4
        return vae_decode_peak(vae_config, min(width, tile), min(height, tile), tiling=False) + 3 * pixels
    with FakeTensorMode():
        vae = AutoencoderKL.from_config(vae_config)
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        latents = torch.empty(1, vae.config.latent_channels, height // factor, width // factor)
        tracker = MemTracker()
        tracker.track_external(vae)
        with tracker, torch.no_grad():
            vae.decode(latents)
        peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]
        weights = sum(p.numel() * p.element_size() for p in vae.parameters())
    return max(0, int(peak) - weights)


# ------------------------------------------------------------------------------------------------ the estimate
def estimate(
    paths,
    *,
    device: str,
    dtype: str | None,
    width: int,
    height: int,
    reference_sides: list[tuple[int, int]],
    images: int = 1,
    guidance_passes: int = 1,
    offload: str = "none",
    weights_dtype: str | None = None,
    quantize: str | None = None,
    vae_tiling: bool = False,
) -> MemoryEstimate:
    """The peak a call with these settings is expected to reach; ``paths`` as for ``load_pipeline`` (environment
    applied), ``reference_sides`` the (width, height) each reference is resized to."""
    import torch

    from .checkpoints.loading import model_folder

    dtype = dtype or ("fp32" if device == "cpu" else "bf16")
    compute = _COMPUTE_BYTES[dtype]
    quantized = 1 if (quantize or weights_dtype) else None
    folder = model_folder(paths)
    parts = {
        "transformer": paths.flux or _sub(folder, "transformer"),
        "T5": paths.t5 or _sub(folder, "text_encoder_2"),
        "CLIP": paths.clip or _sub(folder, "text_encoder"),
        "VAE": paths.ae or _sub(folder, "vae"),
    }
    weights = {
        "transformer": weights_bytes(parts["transformer"], compute, quantized),
        "T5": weights_bytes(parts["T5"], compute),
        "CLIP": weights_bytes(parts["CLIP"], compute),
        "VAE": weights_bytes(parts["VAE"], 4),
    }
    lora = paths.lora or _folder_lora(folder)
    if lora:
        weights["LoRA"] = weights_bytes(lora, compute)
    notes = []
    if offload == "model":
        resident = weights["transformer"] + weights.get("LoRA", 0)
        notes.append("model offload: the text encoders and the VAE come to the device only while they run")
    elif offload in ("sequential", "group"):  # one layer at a time; group's stream prefetches the next
        resident = 2 * weights_bytes(parts["transformer"], compute, quantized, largest=True)
        notes.append(f"{offload} offload: layers come to the device one at a time (this one and the next)")
    else:
        resident = sum(weights.values())
    config = _transformer_config(parts["transformer"])
    image_tokens = (height // 16) * (width // 16) + sum((w // 16) * (h // 16) for w, h in reference_sides)
    batch = images * guidance_passes
    activations = transformer_activation_peak(config, image_tokens, TEXT_TOKENS, batch, getattr(torch, _TORCH[dtype]))
    vae = vae_decode_peak(_vae_config(parts["VAE"]), width, height, vae_tiling) * (1 if vae_tiling else images)
    return MemoryEstimate(
        device=device,
        weights=weights,
        resident=resident,
        transformer_activations=activations,
        vae_activations=vae,
        baseline=CPU_BASELINE if device == "cpu" else 0,
        notes=notes,
    )


_TORCH = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def _sub(folder: str | None, name: str) -> Path:
    if folder is None or not Path(folder, name).is_dir():
        raise UnofluxError(f"cannot size the {name} for --dry-run: no {name} folder in {folder!r}")
    return Path(folder, name)


def _folder_lora(folder: str | None) -> Path | None:
    from .checkpoints.specs import model_defaults

    lora = model_defaults(folder).get("lora") if folder else None
    return Path(folder, lora) if lora else None


def _transformer_config(path: Path) -> dict:
    """FluxTransformer2DModel's config: the folder's config.json, or read from a file's tensor shapes."""
    path = Path(path)
    if path.is_dir():
        return json.loads((path / "config.json").read_text())
    if path.suffix == ".gguf":
        from .checkpoints.gguf import read_gguf_transformer

        return read_gguf_transformer(path)[1]
    from .checkpoints import bfl

    shapes, metadata = _meta_tensors(path)
    shapes = bfl.strip_prefixes(shapes)
    if not bfl.is_bfl_transformer(shapes):
        shapes = bfl.transformer_to_bfl(shapes)
    return bfl.infer_transformer_config(shapes, metadata)


def _vae_config(path: Path) -> dict:
    """AutoencoderKL's config: the folder's config.json, or read from a BFL ae file's tensor shapes."""
    path = Path(path)
    if path.is_dir():
        return json.loads((path / "config.json").read_text())
    from .checkpoints import bfl

    return bfl.infer_vae_config(*_meta_tensors(path))


def _meta_tensors(path: Path):
    """A safetensors file's tensors as shapes only (meta tensors), and its metadata."""
    import torch

    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        metadata = json.loads(f.read(size)).get("__metadata__", {})
    shapes = {name: torch.empty(info["shape"], device="meta") for name, info in safetensors_header(path).items()}
    return shapes, metadata
