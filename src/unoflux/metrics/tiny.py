"""Tiny random metric backbones written in the real models' on-disk layouts (config, weights, image processor,
tokenizer), for tests and for end-to-end runs on a machine without the real checkpoints.

``save_tiny_dino(dir)`` is laid out like ``facebook/dino-vits16`` (``ViTModel``, 224 px, patch 16, its Hub
preprocessor config), ``save_tiny_dino(dir, kind="dinov2")`` like ``facebook/dinov2-base`` (``Dinov2Model``, patch
14, resize 256 / crop 224), ``save_tiny_clip(dir)`` like ``openai/clip-vit-base-patch32`` (``CLIPModel``, patch 32,
a byte-level CLIP tokenizer, OpenAI's preprocessing). Weights are random (seeded) and tiny; the numbers mean nothing.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from ..errors import UnofluxError
from .backbones import IMAGENET_MEAN, IMAGENET_STD, pil_processor_class

TINY_WIDTH = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)


def save_tiny_dino(folder: str | Path, kind: str = "vit", seed: int = 0) -> Path:
    """A random DINO-family folder: ``kind="vit"`` (DINO ViT-S/16 layout) or ``"dinov2"``."""
    import transformers

    folder = Path(folder)
    torch.manual_seed(seed)
    if kind == "vit":
        config = transformers.ViTConfig(image_size=224, patch_size=16, qkv_bias=True, **TINY_WIDTH)
        model = transformers.ViTModel(config, add_pooling_layer=False)
        processor = pil_processor_class("ViTImageProcessor")(  # the Hub's facebook/dino-vits16 settings
            do_resize=True,
            size={"height": 224, "width": 224},
            resample=Image.Resampling.BILINEAR,
            do_normalize=True,
            image_mean=list(IMAGENET_MEAN),
            image_std=list(IMAGENET_STD),
        )
    elif kind == "dinov2":
        config = transformers.Dinov2Config(image_size=224, patch_size=14, layerscale_value=1.0, **TINY_WIDTH)
        model = transformers.Dinov2Model(config)
        processor = pil_processor_class("BitImageProcessor")(  # the Hub's facebook/dinov2-base settings
            size={"shortest_edge": 256},
            resample=Image.Resampling.BICUBIC,
            crop_size={"height": 224, "width": 224},
            do_center_crop=True,
            image_mean=list(IMAGENET_MEAN),
            image_std=list(IMAGENET_STD),
        )
    else:
        raise UnofluxError(f"tiny DINO kind {kind!r} is not one of vit, dinov2")
    model.eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def save_tiny_clip(folder: str | Path, seed: int = 0, image_size: int = 224, patch_size: int = 32) -> Path:
    """A random ``CLIPModel`` folder in the ``openai/clip-vit-base-patch32`` layout, with tokenizer and processor."""
    import transformers

    from ..testing import tiny_clip_tokenizer

    folder = Path(folder)
    tokenizer = tiny_clip_tokenizer()
    torch.manual_seed(seed)
    text = dict(
        TINY_WIDTH,
        vocab_size=len(tokenizer),
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    vision = dict(TINY_WIDTH, image_size=image_size, patch_size=patch_size)
    model = transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=24))
    model.eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    pil_processor_class("CLIPImageProcessor")(  # OpenAI's CLIP preprocessing (the class defaults)
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    ).save_pretrained(folder)
    return folder
