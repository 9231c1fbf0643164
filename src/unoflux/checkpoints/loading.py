"""Assemble a :class:`UnoFluxPipeline` from the files users already have, all from local paths.

Accepted layouts (DESIGN section 5):
- transformer: BFL single file (``flux1-dev.safetensors``), a diffusers-keyed single file, a GGUF file
  (``flux1-dev-Q4_K_S.gguf``: kept quantized, :mod:`.gguf`), a diffusers ``transformer/`` folder, or a whole
  diffusers FLUX folder (``--model``);
- VAE: BFL ``ae.safetensors`` or a diffusers ``vae/`` folder;
- text encoders: a T5 encoder folder and a CLIP-L text folder in transformers layout, tokenizer beside;
- UNO LoRA: ``dit_lora.safetensors`` (XLabs layout) or a diffusers/PEFT LoRA file (USO's is the same layout);
- USO's style models: ``projector.safetensors`` and a SigLIP folder (:mod:`.uso`).
Explicit arguments win over UNO's and USO's environment variables (FLUX_DEV, AE, T5, CLIP, LORA,
PROJECTION_MODEL, SIGLIP_PATH).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
from transformers import AutoTokenizer, CLIPTextModel, T5EncoderModel

from ..devices import check_device
from ..errors import UnofluxError
from ..methods import get_method
from ..options import FLUX_DEV_DEFAULTS, model_default_names, typed
from ..pipeline import UnoFluxPipeline
from . import bfl
from .dreamo import DEFAULT_GUIDANCE as DREAMO_GUIDANCE
from .dreamo import (
    check_dreamo_files,
    is_trained_folder,
    load_background_remover,
    load_dreamo,
    load_face_detector,
    load_face_parser,
)
from .files import read_tensors
from .quantize import check_quantization, quantize_transformer
from .specs import EMBEDDED_MODEL_DIR, ENV_AE, ENV_CLIP, ENV_LORA, ENV_T5, SPECS, model_defaults, scheduler_config_for
from .uso import ENV_PROJECTOR, ENV_SIGLIP, load_style_encoder

Offload = Literal["none", "model", "sequential", "group"]
OFFLOADS = ("none", "model", "sequential", "group")
TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "vocab.json")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class ModelPaths:
    """Where each component comes from; None = from ``model`` (a diffusers folder) or not given."""

    model: str | None = None
    flux: str | None = None
    ae: str | None = None
    t5: str | None = None
    clip: str | None = None
    lora: str | None = None
    projector: str | None = None  # USO's projector.safetensors
    siglip: str | None = None  # USO's SigLIP folder
    dreamo: str | None = None  # a folder with DreamO's files (dreamo.safetensors, ...)
    turbo: str | None = None  # FLUX.1-Turbo-Alpha's LoRA file (DreamO's turbo)
    face_detector: str | None = None  # an object-detection model folder: DreamO's id references are face-cropped
    face_parser: str | None = None  # a face-parsing model folder for DreamO's id references
    background_remover: str | None = None  # a segmentation model folder for DreamO's subject references

    def with_environment(self) -> ModelPaths:
        """Fill unset paths from UNO's environment variables (explicit values win)."""
        env = os.environ.get
        flux = self.flux or next((env(v) for s in SPECS.values() for v in s.transformer_env if env(v)), None)
        return ModelPaths(
            model=self.model,
            flux=flux,
            ae=self.ae or env(ENV_AE),
            t5=self.t5 or env(ENV_T5),
            clip=self.clip or env(ENV_CLIP),
            lora=self.lora or env(ENV_LORA),
            projector=self.projector or env(ENV_PROJECTOR),
            siglip=self.siglip or env(ENV_SIGLIP),
            dreamo=self.dreamo,
            turbo=self.turbo,
            face_detector=self.face_detector,
            face_parser=self.face_parser,
            background_remover=self.background_remover,
        )


# ----------------------------------------------------------------------------------- components
def _check_state_dict_fits(model: torch.nn.Module, state: dict[str, torch.Tensor], path: str, what: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        detail = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise UnofluxError(
            f"{what} file {path!r} does not match the {what} it describes ({len(missing)} missing and "
            f"{len(unexpected)} unexpected tensors, e.g. {detail})"
        )
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            raise UnofluxError(
                f"{what} file {path!r} has {key!r} of shape {tuple(tensor.shape)}, expected {tuple(expected[key].shape)}"
            )


CPU_ALIGNMENT = 64  # bytes; what torch's CPU allocator gives every new tensor


def align_weights(pipe) -> int:
    """Copy every weight that does not start on a 64-byte boundary into fresh memory; returns how many moved.

    A safetensors file places tensors at arbitrary offsets, and loaded weights keep them. MKL's CPU matmul takes
    another code path for unaligned operands, so the same weights loaded from a file and built in memory gave
    images that differ in the last bit (2e-7). Aligned, a seed gives the same image whatever the weights came from.
    """
    moved = 0
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        module = getattr(pipe, name, None)
        for tensor in [] if module is None else [*module.parameters(), *module.buffers()]:
            if tensor.data_ptr() % CPU_ALIGNMENT:
                tensor.data = tensor.data.clone()
                moved += 1
    return moved


def _cast(model, dtype: torch.dtype):
    return model if model.dtype == dtype else model.to(dtype)


def _from_diffusers_folder(model_class, path: Path, subfolder: str, dtype: torch.dtype):
    """Load ``model_class`` from a component folder, or from ``subfolder`` of a pipeline folder."""
    if (path / subfolder / "config.json").is_file():
        return model_class.from_pretrained(str(path), subfolder=subfolder, dtype=dtype)
    if (path / "config.json").is_file():
        return model_class.from_pretrained(str(path), dtype=dtype)
    raise UnofluxError(f"folder {str(path)!r} has no config.json (expected a diffusers {subfolder}/ folder)")


def load_transformer(path: str | Path, dtype: torch.dtype) -> FluxTransformer2DModel:
    path = Path(path)
    if path.is_dir():
        return _from_diffusers_folder(FluxTransformer2DModel, path, "transformer", dtype)
    if path.suffix == ".gguf":  # quantized weights, kept so (checkpoints/gguf.py)
        from .gguf import load_gguf_transformer

        return load_gguf_transformer(path, dtype)
    state, metadata = read_tensors(path, what="FLUX transformer")
    state = bfl.strip_prefixes(state)
    if bfl.is_bfl_transformer(state):
        bfl_state, diffusers_state = state, None
    elif "x_embedder.weight" in state:
        bfl_state, diffusers_state = bfl.transformer_to_bfl(state), state
    else:
        raise UnofluxError(
            f"{str(path)!r} is not a FLUX transformer: expected BFL keys like 'double_blocks.0.img_attn.qkv.weight' "
            "or diffusers keys like 'transformer_blocks.0.attn.to_q.weight'"
        )
    config = bfl.infer_transformer_config(bfl_state, metadata)
    if diffusers_state is None:
        diffusers_state = bfl.transformer_to_diffusers(bfl_state)
    with init_empty_weights():
        model = FluxTransformer2DModel(**config)
    _check_state_dict_fits(model, diffusers_state, str(path), "FLUX transformer")
    model.load_state_dict(diffusers_state, strict=True, assign=True)
    return _cast(model, dtype)


def load_vae(path: str | Path, dtype: torch.dtype) -> AutoencoderKL:
    path = Path(path)
    if path.is_dir():
        return _from_diffusers_folder(AutoencoderKL, path, "vae", dtype)
    state, metadata = read_tensors(path, what="VAE")
    if not bfl.is_bfl_vae(state):
        raise UnofluxError(
            f"{str(path)!r} is not a FLUX VAE: expected BFL/LDM keys like 'encoder.down.0.block.0.conv1.weight'"
        )
    config = bfl.infer_vae_config(state, metadata)
    converted = convert_ldm_vae_checkpoint(state, config)
    with init_empty_weights():
        vae = AutoencoderKL(**config)
    _check_state_dict_fits(vae, converted, str(path), "VAE")
    vae.load_state_dict(converted, strict=True, assign=True)
    return _cast(vae, dtype)


def _load_text_encoder(path: str | Path, model_class, subfolders: tuple[str, str], what: str, dtype: torch.dtype):
    path = Path(path)
    if not path.is_dir():
        raise UnofluxError(
            f"{what} {str(path)!r} must be a folder in transformers layout (config.json, weights, tokenizer)"
        )
    model_dir = path / subfolders[0] if (path / subfolders[0] / "config.json").is_file() else path
    tokenizer_dir = path / subfolders[1] if (path / subfolders[1]).is_dir() else model_dir
    if not (model_dir / "config.json").is_file():
        raise UnofluxError(f"{what} folder {str(path)!r} has no config.json")
    # transformers would silently build an empty default tokenizer from config.json alone
    if not any((tokenizer_dir / name).is_file() for name in TOKENIZER_FILES):
        raise UnofluxError(
            f"{what} folder {str(path)!r} has no tokenizer beside the weights (expected one of {', '.join(TOKENIZER_FILES)})"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    except (OSError, ValueError, TypeError) as err:
        raise UnofluxError(
            f"{what} folder {str(path)!r} has no usable tokenizer files beside the weights ({err})"
        ) from None
    try:
        model = model_class.from_pretrained(str(model_dir), dtype=dtype, local_files_only=True)
    except (OSError, ValueError) as err:
        raise UnofluxError(f"{what} folder {str(path)!r} cannot be loaded ({err})") from None
    return model.eval().requires_grad_(False), tokenizer


def load_t5(path, dtype):
    return _load_text_encoder(path, T5EncoderModel, ("text_encoder_2", "tokenizer_2"), "T5 encoder", dtype)


def load_clip(path, dtype):
    return _load_text_encoder(path, CLIPTextModel, ("text_encoder", "tokenizer"), "CLIP text encoder", dtype)


# ------------------------------------------------------------------------------------- pipeline
def sampling_defaults_from(declared: dict) -> dict:
    """FLUX.1-dev's sampling defaults with what a model folder's unoflux.json declares over them (its
    ``image_size`` is the default width and height)."""
    values = dict(FLUX_DEV_DEFAULTS)
    for name in model_default_names():
        if declared.get(name) is not None:
            values[name] = typed(name, declared[name])
    if "image_size" in declared:
        values["width"] = values["height"] = int(declared["image_size"])
    if "method" in declared:
        values["method"] = get_method(declared["method"]).name  # an unknown one fails here, at load
    return values


# USO's sampling defaults (its inference.py): 1024 x 1024; 25 steps, guidance 4 and the content long side 512 are
# FLUX.1-dev's / UNO's already.
USO_DEFAULTS = {"method": "uso", "width": 1024, "height": 1024}


def load_uso_style_models(pipe, projector: str, siglip: str, offload: bool = False, declared: dict | None = None):
    """Attach USO's style encoder (projector + SigLIP) to ``pipe`` as ``pipe.style_encoder``; the pipeline then
    samples with USO's defaults (method ``uso``, 1024 px) where its model folder declares none."""
    transformer = pipe.transformer
    hidden = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    pipe.style_encoder = load_style_encoder(projector, siglip, hidden, pipe.transformer.dtype, offload=offload)
    _set_method_defaults(pipe, USO_DEFAULTS, declared or {})
    return pipe.style_encoder


def load_dreamo_models(pipe, folder: str, version: str, turbo: str | None, fuse: bool, declared: dict | None = None):
    """DreamO's checkpoints onto ``pipe`` (:func:`.dreamo.load_dreamo`); the pipeline then samples with DreamO's
    app defaults where its model folder declares none: method dreamo, 1024 px, guidance 4.5 (v1.1) or 3.5 (v1),
    12 steps with turbo (25 without)."""
    load_dreamo(pipe, folder, version=version, turbo=turbo, fuse=fuse)
    defaults = {"method": "dreamo", "width": 1024, "height": 1024, "guidance": DREAMO_GUIDANCE[version]}
    defaults["steps"] = 12 if turbo else 25
    if is_trained_folder(folder):  # trained by unoflux on this base: its own sizes and steps
        defaults = {"method": "dreamo"}
    _set_method_defaults(pipe, defaults, declared or {})


def _set_method_defaults(pipe, defaults: dict, declared: dict) -> None:
    """``defaults`` over the pipeline's sampling defaults, except what its model folder declares."""
    sized = "image_size" in declared
    kept = {k: v for k, v in defaults.items() if k not in declared and not (sized and k in ("width", "height"))}
    pipe.model_defaults = {**pipe.model_defaults, **kept}


def model_folder(paths: ModelPaths) -> str | None:
    """The diffusers folder the pipeline comes from: ``paths.model``, or the embedded model when no
    component is named at all (environment variables already applied); None for single files."""
    if paths.model is None and not any((paths.flux, paths.ae, paths.t5, paths.clip)) and EMBEDDED_MODEL_DIR.is_dir():
        return str(EMBEDDED_MODEL_DIR)
    return paths.model


def check_offload(offload: str, device: str) -> None:
    if offload not in OFFLOADS:
        raise UnofluxError(f"offload {offload!r} is not one of: {', '.join(OFFLOADS)}")
    if offload != "none" and not str(device).startswith(("cuda", "xpu", "mps")):
        raise UnofluxError(f"offload {offload!r} moves models onto a GPU; it needs --device cuda, not {device!r}")


def move_to_device(pipe: UnoFluxPipeline, offload: Offload, device: str) -> None:
    """Put the pipeline's models on ``device``, or keep them on the CPU and move them as ``offload`` says."""
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    elif offload == "group":  # leaf level: sequential's memory; the stream overlaps the copies with compute
        stream = torch.device(device).type == "cuda"
        pipe.enable_group_offload(
            onload_device=torch.device(device), offload_type="leaf_level", use_stream=stream, low_cpu_mem_usage=stream
        )
    else:
        pipe.to(device)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_pipeline(
    paths: ModelPaths | None = None,
    *,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    vae_dtype: torch.dtype = torch.float32,
    offload: Offload = "none",
    weights_dtype: str | None = None,
    use_environment: bool = True,
    model_lora: bool = True,
    dreamo_version: str = "v1.1",
    fuse_lora: bool = False,
    compile_blocks: bool = False,
    quantize: str | None = None,
    vae_tiling: bool = False,
) -> UnoFluxPipeline:
    """Build the pipeline from local files (nothing is downloaded).

    ``dtype`` is the compute dtype of the transformer and text encoders (default bf16 on a GPU, fp32 on
    CPU); the VAE runs in ``vae_dtype`` (fp32, as UNO's reference does). ``weights_dtype="fp8"`` stores
    transformer weights as float8 and computes in ``dtype`` (UNO's low-memory mode). ``offload`` moves
    whole models (``model``) or single layers (``sequential``) to the GPU only while they run; ``group`` does
    what ``sequential`` does through diffusers' group offloading, the next layer's weights copied on a CUDA
    stream while this one computes. ``vae_tiling`` encodes and decodes large images in overlapping tiles
    (diffusers' VAE tiling; a batch one image at a time): less memory for large outputs, seams blended.

    A model folder may ship its UNO LoRA and reference sizes (``unoflux.json``: ``lora``,
    ``reference_long_side``), as the embedded model does; ``paths.lora`` replaces that LoRA and
    ``model_lora=False`` leaves it out (the text-to-image base alone). ``"lora_for": "references"`` applies
    the folder's LoRA only to calls with references (text-only calls run the base).

    ``paths.dreamo`` loads DreamO's checkpoints (version ``dreamo_version``, FLUX.1-Turbo-Alpha from ``paths.turbo``)
    and makes ``dreamo`` the default method. ``fuse_lora`` fuses every LoRA into the weights (DreamO's own choice;
    for UNO's LoRA the same image to float rounding, without the LoRA's extra matmuls at every step).
    ``compile_blocks`` compiles the transformer's repeated blocks with ``torch.compile`` (diffusers' regional
    compilation, dynamic shapes: reference counts and fast mode's steps change the token count).
    ``quantize`` (``int8``, ``fp8``) quantizes the transformer's big Linear layers with torchao
    (checkpoints/quantize.py), on the CPU before the move to ``device``.
    """
    paths = paths or ModelPaths()
    if use_environment:
        paths = paths.with_environment()
    check_device(device)  # not torch's AssertionError after the weights have loaded
    device = device or default_device()
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise UnofluxError(f"dtype {dtype!r} is not one of: {', '.join(DTYPES)}")
        dtype = DTYPES[dtype]
    # "cpu:0" (what accelerate names a CPU process's device) is a CPU too: fp32, not the GPU default bf16
    dtype = dtype or (torch.bfloat16 if torch.device(device).type != "cpu" else torch.float32)
    check_offload(offload, device)
    if weights_dtype not in (None, "fp8"):
        raise UnofluxError(f"weights dtype {weights_dtype!r} is not supported; use fp8 or leave it unset")
    check_quantization(quantize, device)
    if quantize and weights_dtype:
        raise UnofluxError(
            f"--quantize {quantize} and --weights-dtype {weights_dtype} both set how weights are stored; give one"
        )
    if paths.flux and Path(paths.flux).suffix == ".gguf":
        if quantize:
            raise UnofluxError(f"a .gguf transformer is already quantized; leave --quantize {quantize} out")
        if weights_dtype:
            raise UnofluxError("a .gguf transformer is already quantized; leave --weights-dtype out")
        if fuse_lora:
            raise UnofluxError(
                "--fuse-lora cannot fuse a LoRA into a .gguf transformer's quantized weights; leave it out (the LoRA "
                "runs beside them)"
            )
    # the methods' files first: a typo must not cost minutes of base-model loading
    if bool(paths.projector) != bool(paths.siglip):
        given, needed = ("--uso-projector", "--siglip DIR") if paths.projector else ("--siglip", "--uso-projector FILE")
        raise UnofluxError(f"{given} needs {needed} too: USO's style tokens come from SigLIP through the projector")
    if paths.projector and not Path(paths.projector).is_file():
        raise UnofluxError(f"USO projector file {paths.projector!r} does not exist")
    if paths.turbo and not paths.dreamo:
        raise UnofluxError("--turbo is DreamO's turbo LoRA; it needs --dreamo DIR")
    if paths.dreamo:
        check_dreamo_files(paths.dreamo, dreamo_version, paths.turbo)
    for flag, folder in (
        ("--siglip", paths.siglip),
        ("--face-detector", paths.face_detector),
        ("--face-parser", paths.face_parser),
        ("--background-remover", paths.background_remover),
    ):
        if folder and not Path(folder, "config.json").is_file():
            raise UnofluxError(f"{flag} {folder!r} must be a transformers model folder with config.json")

    model = model_folder(paths)
    if model is not None and not Path(model, "model_index.json").is_file():
        raise UnofluxError(f"model folder {model!r} is not a diffusers pipeline folder (no model_index.json)")

    if model is None:
        given = {"--flux": paths.flux, "--ae": paths.ae, "--t5": paths.t5, "--clip": paths.clip}
        missing = [flag for flag, value in given.items() if not value]
        if missing:
            raise UnofluxError(
                f"no model given for {', '.join(missing)}: pass --model DIR (a diffusers FLUX folder) or all of "
                "--flux, --ae, --t5 and --clip (or set FLUX_DEV, AE, T5 and CLIP)"
            )

    components = {}
    if paths.flux:
        components["transformer"] = load_transformer(paths.flux, dtype)
    if paths.ae:
        components["vae"] = load_vae(paths.ae, vae_dtype)
    if paths.t5:
        components["text_encoder_2"], components["tokenizer_2"] = load_t5(paths.t5, dtype)
    if paths.clip:
        components["text_encoder"], components["tokenizer"] = load_clip(paths.clip, dtype)

    if model is not None:
        pipe = UnoFluxPipeline.from_pretrained(model, dtype=dtype, local_files_only=True, **components)
    else:
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(
            scheduler_config_for(dict(components["transformer"].config))
        )
        pipe = UnoFluxPipeline(scheduler=scheduler, **components)
    _cast(pipe.vae, vae_dtype)
    if str(device) == "cpu":
        align_weights(pipe)

    defaults = model_defaults(model)
    pipe.model_defaults = sampling_defaults_from(defaults)
    if "reference_long_side" in defaults:
        sides = defaults["reference_long_side"]
        pipe.reference_long_sides = (int(sides["one"]), int(sides["several"]))
    if "mag_ratios" in defaults:
        pipe.mag_ratios = [float(r) for r in defaults["mag_ratios"]]
    if paths.dreamo:
        load_dreamo_models(pipe, paths.dreamo, dreamo_version, paths.turbo, fuse_lora, declared=defaults)
    steps = {}  # role -> preprocessing steps in order (DreamO: crop the face, then parse it)
    if paths.face_detector:
        steps.setdefault("id", []).append(load_face_detector(paths.face_detector))
    if paths.face_parser:
        steps.setdefault("id", []).append(load_face_parser(paths.face_parser))
    if paths.background_remover:
        steps["subject"] = [load_background_remover(paths.background_remover)]
    if steps:
        pipe.reference_preprocessors = {**pipe.reference_preprocessors, **steps}
    if paths.projector:
        load_uso_style_models(pipe, paths.projector, paths.siglip, offload=offload != "none", declared=defaults)
    lora = paths.lora or (str(Path(model, defaults["lora"])) if model_lora and defaults.get("lora") else None)
    if lora:
        pipe.load_uno_lora(lora)
        pipe.lora_only_with_references = not paths.lora and defaults.get("lora_for") == "references"
        if fuse_lora:  # W += B A once, instead of two more matmuls per layer and step; the adapter is gone after
            if pipe.lora_only_with_references:
                raise UnofluxError(
                    f"--fuse-lora cannot fuse {model!r}'s LoRA: it applies only to calls with references, so "
                    "text-only calls need the weights without it; leave --fuse-lora out"
                )
            pipe.fuse_lora(adapter_names=["uno"], lora_scale=1.0)
            pipe.unload_lora_weights()
    if quantize:  # after the LoRA is loaded (or fused), so its base layers are the ones quantized
        quantize_transformer(pipe.transformer, quantize)
    if weights_dtype == "fp8":
        # Keep LoRA, norms and embeddings in the compute dtype; store the big Linear weights as float8.
        pipe.transformer.enable_layerwise_casting(
            storage_dtype=torch.float8_e4m3fn,
            compute_dtype=dtype,
            skip_modules_pattern=("pos_embed", "norm", "^proj_out$", "lora_"),
        )
    if vae_tiling:
        pipe.vae.enable_tiling()
        pipe.vae.enable_slicing()
    move_to_device(pipe, offload, device)
    if compile_blocks:  # last: after LoRA, casting and offload hooks are in place
        pipe.transformer.compile_repeated_blocks(dynamic=True)
    pipe.set_progress_bar_config(desc="denoising", leave=False)
    return pipe
