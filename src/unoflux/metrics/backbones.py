"""Loading the metric backbones (DINO / DINOv2 and CLIP) from local transformers folders, and their preprocessing.

Protocol choices made here (each also in docs/metrics.md):

- Folders only, ``local_files_only=True``: nothing is downloaded; a missing or wrong folder is one
  :class:`~unoflux.errors.UnofluxError` sentence.
- The DINO family is read from the folder's ``config.json``: ``model_type`` ``vit`` -> ``ViTModel`` (DINO v1,
  ``facebook/dino-vits16`` by default in the protocol), ``dinov2`` -> ``Dinov2Model`` (``facebook/dinov2-base``).
- DINO preprocessing defaults to DINO's own evaluation transforms (``eval_knn.py``), which the DreamBooth authors
  give as what reproduces their numbers (google/dreambooth issue #3): shorter side to 256 (bicubic), centre crop
  224, ImageNet mean/std. The Hub folder of ``facebook/dino-vits16`` holds a ``ViTImageProcessor``, which squashes
  every image to 224 x 224 without keeping its aspect ratio; the same thread reports that it does *not* reproduce
  the paper, so a folder's processor is used only when asked (``dino_preprocess="folder"``). ``facebook/dinov2-base``'s
  folder says the protocol's transforms itself (256 bicubic / crop 224 / ImageNet), so both settings agree there
  up to the crop rounding below. DINOv2 is run at 224 px, as its processor says (not its 518 px training size).
- CLIP preprocessing defaults to OpenAI's ``clip.load`` transforms at the model's input size: shorter side to 224
  (ViT-B/32; 336 for a -336 model) bicubic, centre crop, CLIP mean/std. ``openai/clip-vit-base-patch32``'s folder
  says the same settings (``clip_preprocess="folder"`` uses it).
- Both "protocol" transforms are :class:`EvalTransform`: torchvision's exact arithmetic on PIL images (PIL's
  bicubic resize, centre-crop offsets rounded as torchvision rounds them), so no torchvision is needed; transformers'
  PIL processors give the same pixels except a one-pixel crop shift when the margin is odd.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import UnofluxError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DINO_RESIZE = 256  # shorter side, bicubic (DINO's eval_knn.py transforms)
DINO_CROP = 224  # centre crop
DINO_KINDS = {"vit": "ViTModel", "dinov2": "Dinov2Model"}
PREPROCESS = ("protocol", "folder")


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


class EvalTransform:
    """The evaluation transforms DINO's and OpenAI CLIP's code run, exactly as torchvision runs them on PIL images:
    ``Resize(resize, interpolation=BICUBIC)``, ``CenterCrop(crop)``, ``ToTensor()``, ``Normalize(mean, std)``:

    - resize so the shorter side is ``resize``, the longer ``int(resize * long / short)`` (torchvision's rounding),
      with PIL's bicubic filter (which antialiases when downscaling, as torchvision does on PIL images);
    - centre crop ``crop`` x ``crop`` at torchvision's offsets ``int(round((side - crop) / 2))`` (transformers'
      ``center_crop`` floors instead: the same pixels for even margins, one pixel shifted for odd ones, which is the
      only difference from transformers' PIL processors and the reason for this small class);
    - pixels / 255, then ``(x - mean) / std``.

    Called like a transformers image processor: ``processor(images=[...], return_tensors="pt")["pixel_values"]``.
    """

    def __init__(self, resize: int, crop: int, mean: tuple[float, ...], std: tuple[float, ...]):
        if resize < crop:
            raise UnofluxError(f"an evaluation resize of {resize} px cannot be centre-cropped to {crop} px")
        self.resize, self.crop = resize, crop
        self.image_mean, self.image_std = list(mean), list(std)

    def transform(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB")
        width, height = image.size
        short, long = min(width, height), max(width, height)
        new_short, new_long = self.resize, int(self.resize * long / short)
        image = image.resize((new_short, new_long) if width <= height else (new_long, new_short), Image.BICUBIC)
        width, height = image.size
        top, left = int(round((height - self.crop) / 2.0)), int(round((width - self.crop) / 2.0))
        image = image.crop((left, top, left + self.crop, top + self.crop))
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean, std = torch.tensor(self.image_mean)[:, None, None], torch.tensor(self.image_std)[:, None, None]
        return (pixels - mean) / std

    def __call__(self, images, return_tensors: str = "pt") -> dict[str, torch.Tensor]:
        images = [images] if isinstance(images, Image.Image) else list(images)
        return {"pixel_values": torch.stack([self.transform(image) for image in images])}

    def __repr__(self) -> str:
        return f"EvalTransform(resize={self.resize}, crop={self.crop}, mean={self.image_mean}, std={self.image_std})"


def dino_protocol_processor() -> EvalTransform:
    """DINO's ``eval_knn.py`` transforms: shorter side 256 (bicubic), centre crop 224, ImageNet mean/std."""
    return EvalTransform(DINO_RESIZE, DINO_CROP, IMAGENET_MEAN, IMAGENET_STD)


def clip_protocol_processor(image_size: int) -> EvalTransform:
    """OpenAI CLIP's ``clip.load`` preprocessing at the model's input size (224 for ViT-B/32): shorter side to
    ``image_size`` (bicubic), centre crop ``image_size``, CLIP's mean/std."""
    return EvalTransform(image_size, image_size, CLIP_MEAN, CLIP_STD)


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
    preprocess: str  # "protocol" or "folder"


def load_dino(folder: str | Path, preprocess: str = "protocol", dtype: torch.dtype = torch.float32) -> DinoBackbone:
    """A DINO (``ViTModel``) or DINOv2 (``Dinov2Model``) folder -> :class:`DinoBackbone` in eval mode on the CPU.

    ``preprocess="protocol"`` (default) uses :func:`dino_protocol_processor`; ``"folder"`` the folder's own
    ``preprocessor_config.json``.
    """
    import transformers

    if preprocess not in PREPROCESS:
        raise UnofluxError(f"DINO preprocessing {preprocess!r} is not one of {', '.join(PREPROCESS)}")
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


def load_clip(folder: str | Path, preprocess: str = "protocol", dtype: torch.dtype = torch.float32) -> ClipBackbone:
    """A CLIP folder (``CLIPModel``: config, weights, tokenizer[, image processor]) -> :class:`ClipBackbone`.

    ``preprocess="protocol"`` (default) uses :func:`clip_protocol_processor` at the model's image size;
    ``"folder"`` the folder's ``preprocessor_config.json`` (CLIP's defaults at the model's size if it has none).
    """
    import transformers

    if preprocess not in PREPROCESS:
        raise UnofluxError(f"CLIP preprocessing {preprocess!r} is not one of {', '.join(PREPROCESS)}")
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
    if preprocess == "protocol":
        processor = clip_protocol_processor(model.config.vision_config.image_size)
    elif (folder / "preprocessor_config.json").is_file():
        processor = _from_pretrained(
            lambda: processor_class.from_pretrained(str(folder), local_files_only=True), folder, "CLIP"
        )
    else:  # OpenAI's CLIP preprocessing (the class defaults) at the model's image size
        size = model.config.vision_config.image_size
        processor = processor_class(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return ClipBackbone(model.eval().requires_grad_(False), processor, tokenizer, str(folder), preprocess)
