"""DreamO's checkpoints from a local folder laid out as ``ByteDance/DreamO`` is published, onto a FLUX.1-dev pipeline.

Files (``--dreamo DIR``):
- ``dreamo.safetensors``: the main LoRA in DreamO's key layout plus three embeddings: ``dreamo_t5_embedding.weight``
  (T5 rows x T5 width; its last 10 rows are the placeholders ``[ref#1]`` .. ``[ref#9]``, ``[res]``),
  ``dreamo_task_embedding.weight`` (2, D) and ``dreamo_idx_embedding.weight`` (10, D);
- ``dreamo_cfg_distill.safetensors``: a LoRA in the same layout (makes true CFG unnecessary);
- v1: ``dreamo_quality_lora_pos.safetensors`` (weight 0.15) and ``dreamo_quality_lora_neg.safetensors`` (-0.8), same
  layout; v1.1 (default): ``v1.1/dreamo_sft_lora.safetensors`` (1) and ``v1.1/dreamo_dpo_lora.safetensors`` (1.25),
  in a layout diffusers' loader recognises;
- FLUX.1-Turbo-Alpha (``--turbo FILE``, diffusers format, weight 1): 12 steps instead of 25.

A folder that ``unoflux train`` wrote for ``method: dreamo`` (its ``final/``) holds ``dreamo.safetensors`` alone, in
the same layout, marked by its metadata (:data:`TRAINED_METADATA`): it loads as the only adapter (weight 1; no cfg
or quality LoRAs, whatever the version; a turbo LoRA still may be added).

DreamO's LoRA layout names blocks ``double_blocks_{i}`` / ``single_blocks_{i}`` with XLabs' processor parts
(``qkv_lora1``, ``proj_lora1`` image stream; ``qkv_lora2``, ``proj_lora2`` text stream; ``qkv_lora``, ``proj_lora``
single blocks) and ``.down.weight`` / ``.up.weight``; a fused qkv part has one down matrix shared by q, k and v and
an up matrix split in three equal row blocks; no alpha (scale 1). Adapters are combined as DreamO does:
``W + sum_i w_i up_i down_i``, kept as PEFT adapters or fused (``fuse=True``, DreamO's own choice).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from ..errors import UnofluxError
from ..methods.dreamo import FACE_PARSING_WHITE, DreamOEmbeddings, FaceCrop, PaintWhite
from .files import read_tensors
from .lora import XLABS_PARTS, check_lora_fits, load_lora_into_pipeline

Tensors = dict[str, torch.Tensor]
PLACEHOLDERS = [f"[ref#{i}]" for i in range(1, 10)] + ["[res]"]  # DreamO's order: ids len(tokenizer) + 0..9
EMBEDDING_KEYS = ("dreamo_t5_embedding.weight", "dreamo_task_embedding.weight", "dreamo_idx_embedding.weight")
MAIN_FILE, CFG_FILE = "dreamo.safetensors", "dreamo_cfg_distill.safetensors"
VERSIONS = {  # version -> [(file, adapter name, weight, DreamO's layout?)] after the main and cfg LoRAs
    "v1": [
        ("dreamo_quality_lora_pos.safetensors", "quality_pos", 0.15, True),
        ("dreamo_quality_lora_neg.safetensors", "quality_neg", -0.8, True),
    ],
    "v1.1": [
        ("v1.1/dreamo_sft_lora.safetensors", "sft", 1.0, False),
        ("v1.1/dreamo_dpo_lora.safetensors", "dpo", 1.25, False),
    ],
}
DEFAULT_GUIDANCE = {"v1": 3.5, "v1.1": 4.5}  # DreamO's app
TRAINED_METADATA = {"format": "dreamo", "trained_by": "unoflux"}  # dreamo.safetensors of a unoflux training run
_BLOCK = re.compile(r"(double|single)_blocks_(\d+)")
_DIFFUSERS_BLOCKS = {"double": "transformer_blocks", "single": "single_transformer_blocks"}


def dreamo_lora_to_diffusers(state: Tensors, path: str) -> Tensors:
    """A LoRA in DreamO's layout -> diffusers keys (``transformer.<module>.lora_{A,B}.weight``); any key it cannot
    place is an error naming it."""
    parts = {"double": dict(XLABS_PARTS["double_blocks"]), "single": dict(XLABS_PARTS["single_blocks"])}
    out: Tensors = {}
    for key, tensor in state.items():
        block = _BLOCK.search(key)
        direction = "down" if key.endswith(".down.weight") else "up" if key.endswith(".up.weight") else None
        # the longest part name that occurs ("qkv_lora1" before "qkv_lora")
        part = max((p for p in parts[block.group(1)] if p in key), key=len, default=None) if block else None
        if block is None or direction is None or part is None:
            raise UnofluxError(
                f"DreamO LoRA {path!r} has {key!r}, which is not DreamO's layout "
                "(expected e.g. 'double_blocks_0...qkv_lora1.down.weight')"
            )
        modules = [
            f"transformer.{_DIFFUSERS_BLOCKS[block.group(1)]}.{block.group(2)}.{m}" for m in parts[block.group(1)][part]
        ]
        if direction == "down":
            for module in modules:  # one down matrix shared by q, k and v
                out[f"{module}.lora_A.weight"] = tensor
        else:
            if tensor.shape[0] % len(modules):
                raise UnofluxError(
                    f"DreamO LoRA {path!r}: {key!r} has {tensor.shape[0]} rows, not {len(modules)} equal parts"
                )
            for module, chunk in zip(modules, tensor.chunk(len(modules), dim=0)):
                out[f"{module}.lora_B.weight"] = chunk
    return out


def add_placeholders(pipe, t5_rows: torch.Tensor) -> list[int]:
    """DreamO's ``_prepare_t5``: the T5 embedding is resized to the tokenizer's length (FLUX's T5: 32128 -> 32100),
    the 10 placeholders are added as non-special tokens and their rows set to ``t5_rows``. Returns their ids."""
    tokenizer, encoder = pipe.tokenizer_2, pipe.text_encoder_2
    if all(tokenizer.convert_tokens_to_ids(t) != tokenizer.unk_token_id for t in PLACEHOLDERS):
        ids = tokenizer.convert_tokens_to_ids(PLACEHOLDERS)
    else:  # (the new rows are set below: no need for transformers' mean resizing)
        encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        tokenizer.add_tokens(PLACEHOLDERS, special_tokens=False)
        encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        ids = tokenizer.convert_tokens_to_ids(PLACEHOLDERS)
    weight = encoder.get_input_embeddings().weight
    with torch.no_grad():
        weight[ids] = t5_rows.to(weight)
    return ids


def read_embeddings(state: Tensors, pipe, path: str) -> tuple[torch.Tensor, DreamOEmbeddings]:
    """Pop DreamO's three embeddings from the main file's tensors, checked against the pipeline's widths."""
    missing = [k for k in EMBEDDING_KEYS if k not in state]
    if missing:
        raise UnofluxError(f"DreamO checkpoint {path!r} has no {missing[0]!r}; expected DreamO's dreamo.safetensors")
    t5, task, index = (state.pop(k) for k in EMBEDDING_KEYS)
    t5_width = pipe.text_encoder_2.get_input_embeddings().weight.shape[1]
    config = pipe.transformer.config
    hidden = config.num_attention_heads * config.attention_head_dim
    for key, tensor, shape in (
        (EMBEDDING_KEYS[1], task, (2, hidden)),
        (EMBEDDING_KEYS[2], index, (10, hidden)),
    ):
        if tuple(tensor.shape) != shape:
            raise UnofluxError(
                f"DreamO checkpoint {path!r} has {key!r} of shape {tuple(tensor.shape)}, expected {shape}"
            )
    if t5.ndim != 2 or t5.shape[0] < len(PLACEHOLDERS) or t5.shape[1] != t5_width:
        raise UnofluxError(
            f"DreamO checkpoint {path!r} has {EMBEDDING_KEYS[0]!r} of shape {tuple(t5.shape)}; expected at least "
            f"{len(PLACEHOLDERS)} rows of this T5's width {t5_width}"
        )
    return t5[-len(PLACEHOLDERS) :], DreamOEmbeddings(task=task, index=index)


def _load_dreamo_layout(pipe, path: Path, adapter: str, state: Tensors | None = None) -> None:
    if state is None:
        state, _ = read_tensors(path, what="DreamO LoRA")
    lora = dreamo_lora_to_diffusers(state, str(path))
    check_lora_fits(pipe.transformer, lora, str(path))
    pipe.load_lora_weights(lora, adapter_name=adapter)


def check_dreamo_files(folder: str | Path, version: str, turbo: str | Path | None) -> None:
    """Every file DreamO ``version`` needs is there (cheap: run before the base model loads)."""
    folder = Path(folder)
    if version not in VERSIONS:
        raise UnofluxError(f"DreamO version {version!r} is not one of: {', '.join(VERSIONS)}")
    if not folder.is_dir():
        raise UnofluxError(f"DreamO folder {str(folder)!r} does not exist (expected ByteDance/DreamO's files)")
    files = [folder / MAIN_FILE, folder / CFG_FILE, *(folder / name for name, *_ in VERSIONS[version])]
    if is_trained_folder(folder):
        files = [folder / MAIN_FILE]
    missing = [str(f.relative_to(folder)) for f in files if not f.is_file()]
    if missing:
        raise UnofluxError(f"DreamO folder {str(folder)!r} lacks {', '.join(missing)} (DreamO {version})")
    if turbo is not None and not Path(turbo).is_file():
        raise UnofluxError(f"turbo LoRA {str(turbo)!r} does not exist (FLUX.1-Turbo-Alpha's safetensors file)")


def is_trained_folder(folder: str | Path) -> bool:
    """Whether ``folder``'s ``dreamo.safetensors`` was written by ``unoflux train`` (a header read, cheap)."""
    path = Path(folder) / MAIN_FILE
    if not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise UnofluxError(f"DreamO checkpoint {str(path)!r} is not a readable safetensors file ({err})") from None
    return all(metadata.get(k) == v for k, v in TRAINED_METADATA.items())


def load_dreamo(
    pipe, folder: str | Path, version: str = "v1.1", turbo: str | Path | None = None, fuse: bool = False
) -> list[tuple[str, float]]:
    """Load DreamO's checkpoints from ``folder`` onto ``pipe`` as DreamO combines them; returns (adapter, weight)
    in order. Sets ``pipe.dreamo_embeddings`` and adds the T5 placeholders."""
    folder = Path(folder)
    check_dreamo_files(folder, version, turbo)
    with warnings.catch_warnings():  # peft notes that a model with several adapters has several adapters
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        return _load_dreamo(pipe, folder, version, turbo, fuse)


def _load_dreamo(pipe, folder: Path, version: str, turbo, fuse: bool) -> list[tuple[str, float]]:
    main, _ = read_tensors(folder / MAIN_FILE, what="DreamO checkpoint")
    t5_rows, embeddings = read_embeddings(main, pipe, str(folder / MAIN_FILE))
    trained = is_trained_folder(folder)
    adapters = [("dreamo", 1.0)] if trained else [("dreamo", 1.0), ("cfg", 1.0)]
    _load_dreamo_layout(pipe, folder / MAIN_FILE, "dreamo", main)
    if not trained:
        _load_dreamo_layout(pipe, folder / CFG_FILE, "cfg")
    if turbo is not None:
        load_lora_into_pipeline(pipe, turbo, adapter_name="turbo")
        adapters.append(("turbo", 1.0))
    for name, adapter, weight, dreamo_layout in [] if trained else VERSIONS[version]:
        if dreamo_layout:
            _load_dreamo_layout(pipe, folder / name, adapter)
        else:
            load_lora_into_pipeline(pipe, folder / name, adapter_name=adapter)
        adapters.append((adapter, weight))
    pipe.set_adapters([a for a, _ in adapters], [w for _, w in adapters])
    if fuse:  # W += sum_i w_i B_i A_i, as DreamO does; the adapters are gone afterwards
        pipe.fuse_lora(adapter_names=[a for a, _ in adapters], lora_scale=1.0)
        pipe.unload_lora_weights()
    add_placeholders(pipe, t5_rows)
    pipe.dreamo_embeddings = embeddings
    return adapters


def _load_vision_model(folder: str | Path, auto_class: str, what: str):
    """(model, image processor) of a transformers folder, loaded with ``transformers.<auto_class>``."""
    import transformers

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise UnofluxError(f"{what} {str(folder)!r} must be a transformers model folder with config.json")
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        model = getattr(transformers, auto_class).from_pretrained(str(folder), local_files_only=True)
        processor = transformers.AutoImageProcessor.from_pretrained(str(folder), local_files_only=True, use_fast=False)
    except (OSError, ValueError, KeyError) as err:
        raise UnofluxError(f"{what} {str(folder)!r} cannot be loaded ({err})") from None
    finally:
        transformers.logging.set_verbosity(verbosity)
    return model.requires_grad_(False), processor


def load_segmentation_step(folder: str | Path, white: tuple[str, ...], what: str) -> PaintWhite:
    """A semantic-segmentation model folder in transformers layout -> a step painting the ``white`` labels white."""
    model, processor = _load_vision_model(folder, "AutoModelForSemanticSegmentation", what)
    return PaintWhite(model, processor, white, what)


def load_face_detector(folder: str | Path) -> FaceCrop:
    """An object-detection model folder (transformers, a "face" label) -> the face crop for ``id`` references."""
    model, processor = _load_vision_model(folder, "AutoModelForObjectDetection", "face detector")
    return FaceCrop(model, processor)


def load_face_parser(folder: str | Path) -> PaintWhite:
    """DreamO's face parsing for ``id`` references (CelebAMask-HQ label names, e.g. a Segformer face parser)."""
    return load_segmentation_step(folder, FACE_PARSING_WHITE, "face parser")


def load_background_remover(folder: str | Path) -> PaintWhite:
    """Background removal for subject references: every pixel labelled ``background`` becomes white."""
    return load_segmentation_step(folder, ("background",), "background remover")
