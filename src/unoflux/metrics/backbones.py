"""Loading the metric backbones (DINO / DINOv2 and CLIP) from local transformers folders, and their preprocessing.

Protocol choices made here (each also in docs/metrics.md):

- Folders only, ``local_files_only=True``: nothing is downloaded; a missing or wrong folder is one
  :class:`~unoflux.errors.UnofluxError` sentence.
- The DINO family is read from the folder's ``config.json``: ``model_type`` ``vit`` -> ``ViTModel`` (DINO v1,
  ``facebook/dino-vits16`` by default in the protocol), ``dinov2`` -> ``Dinov2Model`` (``facebook/dinov2-base``).
- DINO preprocessing defaults to DINO's own evaluation transforms, which the DreamBooth authors say reproduce their
  numbers (google/dreambooth issue #3): shorter side to 256 (bicubic), centre crop 224, ImageNet mean/std. The Hub
  folder of ``facebook/dino-vits16`` instead squashes to 224x224 (bilinear, aspect ratio lost), which the same
  thread reports does *not* reproduce the paper, so it is used only when asked (``dino_preprocess="folder"``).
  ``facebook/dinov2-base``'s own folder says exactly the protocol transforms, so both settings agree there.
- CLIP preprocessing is the folder's ``preprocessor_config.json`` (for ``openai/clip-vit-base-patch32``: shorter side
  to 224 bicubic, centre crop 224, CLIP mean/std, i.e. OpenAI's ``clip.load`` preprocessing); a folder without one
  gets the same CLIP settings at the model's image size.
- Everything is run through the PIL image processors (no torchvision needed).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from ..errors import UnofluxError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DINO_RESIZE = 256  # shorter side, bicubic (DINO's eval_knn.py transforms)
DINO_CROP = 224  # centre crop
DINO_KINDS = {"vit": "ViTModel", "dinov2": "Dinov2Model"}
DINO_PREPROCESS = ("protocol", "folder")


def pil_processor_class(name: str):
    """transformers' PIL image processor class ``name`` (transformers 5 calls it ``<name>Pil``; the plain name wants
    torchvision and falls back to the PIL one with a warning)."""
    import transformers

    return getattr(transformers, name + "Pil", None) or getattr(transformers, name)


def _read_config(folder: Path, what: str, example: str) -> dict:
    if not folder.is_dir():
        raise UnofluxError(
            f"{what} folder {str(folder)!r} does not exist; give a local transformers model folder (e.g. {example})"
        )
    config = folder / "config.json"
    if not config.is_file():
        raise UnofluxError(
            f"{what} folder {str(folder)!r} has no config.json; give a transformers model folder (e.g. {example})"
        )
    try:
        return json.loads(config.read_text())
    except (OSError, ValueError) as err:
        raise UnofluxError(f"{what} folder {str(folder)!r} has an unreadable config.json ({err})") from None


def _from_pretrained(load, folder: Path, what: str):
    import transformers

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # DINO checkpoints carry a pooler we leave out on purpose
    try:
        return load()
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnofluxError(f"{what} folder {str(folder)!r} cannot be loaded ({first})") from None
    finally:
        transformers.logging.set_verbosity(verbosity)


def dino_protocol_processor():
    """DINO's evaluation transforms as a transformers PIL processor: shorter side 256 (bicubic), centre crop 224,
    rescale to [0, 1], ImageNet mean/std (``torchvision`` Resize(256, interpolation=3), CenterCrop(224), ToTensor,
    Normalize in DINO's ``eval_knn.py``; the same PIL bicubic resize)."""
    return pil_processor_class("BitImageProcessor")(
        do_resize=True,
        size={"shortest_edge": DINO_RESIZE},
        resample=Image.Resampling.BICUBIC,
        do_center_crop=True,
        crop_size={"height": DINO_CROP, "width": DINO_CROP},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
        do_convert_rgb=True,
    )


@dataclass
class DinoBackbone:
    """A DINO-family image encoder: the model, its processor, and which family and folder it came from."""

    model: torch.nn.Module
    processor: object
    kind: str  # "vit" (DINO v1) or "dinov2"
    folder: str
    preprocess: str  # "protocol" or "folder"


@dataclass
class ClipBackbone:
    """A CLIP model (both towers), its image processor and tokenizer."""

    model: torch.nn.Module
    processor: object
    tokenizer: object
    folder: str


def load_dino(folder: str | Path, preprocess: str = "protocol", dtype: torch.dtype = torch.float32) -> DinoBackbone:
    """A DINO (``ViTModel``) or DINOv2 (``Dinov2Model``) folder -> :class:`DinoBackbone` in eval mode on the CPU.

    ``preprocess="protocol"`` (default) uses :func:`dino_protocol_processor`; ``"folder"`` the folder's own
    ``preprocessor_config.json``.
    """
    import transformers

    if preprocess not in DINO_PREPROCESS:
        raise UnofluxError(f"DINO preprocessing {preprocess!r} is not one of {', '.join(DINO_PREPROCESS)}")
    folder = Path(folder)
    kind = _read_config(folder, "DINO", "facebook/dino-vits16 or facebook/dinov2-base").get("model_type")
    if kind not in DINO_KINDS:
        raise UnofluxError(
            f"DINO folder {str(folder)!r} holds a {kind!r} model; DINO scoring needs a ViT DINO "
            "(facebook/dino-vits16, model_type 'vit') or a DINOv2 (facebook/dinov2-base, model_type 'dinov2') folder"
        )
    model_class = getattr(transformers, DINO_KINDS[kind])
    extra = {"add_pooling_layer": False} if kind == "vit" else {}
    model = _from_pretrained(
        lambda: model_class.from_pretrained(str(folder), dtype=dtype, local_files_only=True, **extra), folder, "DINO"
    )
    if preprocess == "protocol":
        processor = dino_protocol_processor()
    else:
        if not (folder / "preprocessor_config.json").is_file():
            raise UnofluxError(
                f"DINO folder {str(folder)!r} has no preprocessor_config.json for dino_preprocess='folder'; "
                "use dino_preprocess='protocol'"
            )
        processor = _from_pretrained(
            lambda: transformers.AutoImageProcessor.from_pretrained(str(folder), local_files_only=True, use_fast=False),
            folder,
            "DINO",
        )
    return DinoBackbone(model.eval().requires_grad_(False), processor, kind, str(folder), preprocess)


def load_clip(folder: str | Path, dtype: torch.dtype = torch.float32) -> ClipBackbone:
    """A CLIP folder (``CLIPModel``: config, weights, tokenizer, image processor) -> :class:`ClipBackbone`."""
    import transformers

    folder = Path(folder)
    kind = _read_config(folder, "CLIP", "openai/clip-vit-base-patch32").get("model_type")
    if kind != "clip":
        raise UnofluxError(
            f"CLIP folder {str(folder)!r} holds a {kind!r} model; CLIP-I/CLIP-T need a full CLIP model folder "
            "(model_type 'clip', both towers, e.g. openai/clip-vit-base-patch32)"
        )
    model = _from_pretrained(
        lambda: transformers.CLIPModel.from_pretrained(str(folder), dtype=dtype, local_files_only=True), folder, "CLIP"
    )
    if not any((folder / name).is_file() for name in ("tokenizer.json", "vocab.json", "tokenizer_config.json")):
        raise UnofluxError(
            f"CLIP folder {str(folder)!r} has no tokenizer files (vocab.json/merges.txt or tokenizer.json), "
            "which CLIP-T needs; download the whole model folder"
        )
    tokenizer = _from_pretrained(
        lambda: transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True), folder, "CLIP"
    )
    processor_class = pil_processor_class("CLIPImageProcessor")
    if (folder / "preprocessor_config.json").is_file():
        processor = _from_pretrained(
            lambda: processor_class.from_pretrained(str(folder), local_files_only=True), folder, "CLIP"
        )
    else:  # OpenAI's CLIP preprocessing (the class defaults) at the model's image size
        size = model.config.vision_config.image_size
        processor = processor_class(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return ClipBackbone(model.eval().requires_grad_(False), processor, tokenizer, str(folder))
