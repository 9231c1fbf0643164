"""Tiny random models in official on-disk layouts, for tests and for running the synthesis stages on a machine
without real weights: a vision-language model (``llava-hf/llava-1.5-7b-hf``'s layout) for ``filter-vlm`` with
``vlm: local``, whose replies are random text (they never parse), and an open-vocabulary detector
(``google/owlvit-base-patch32``'s layout) for ``locator: detector``, whose boxes are random (it finds nothing real).

``save_tiny_vlm(dir)`` writes what ``AutoProcessor`` / ``AutoModelForImageTextToText`` read from a LLaVA folder:
``config.json`` (``LlavaConfig``: a CLIP vision tower, a Llama language model), ``model.safetensors``, the
``LlavaProcessor`` (a ``CLIPImageProcessor``, a fast tokenizer, the chat template). The tokenizer is built offline
with the ``tokenizers`` library: one token per printable ASCII character, plus the special tokens.

``save_tiny_detector(dir)`` writes what ``AutoProcessor`` / ``AutoModelForZeroShotObjectDetection`` read from an
OWL-ViT folder: ``config.json`` (``OwlViTConfig``), ``model.safetensors``, the ``OwlViTProcessor`` (an
``OwlViTImageProcessor``, a ``CLIPTokenizer``). OWL-ViT rather than OWLv2 because OWLv2's image processors need
scipy or torchvision, which this project does not depend on; :class:`unoflux.synth.detect.Detector` reads both.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

# LLaVA-1.5's conversation format ("USER: <image>\n... ASSISTANT:"), the images where the content parts put them
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() }}: "
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>\n"
    "{% else %}{{ part['text'] }}\n{% endif %}{% endfor %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
SPECIAL = ("<unk>", "<s>", "</s>", "<pad>", "<image>")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's normalisation, as llava-1.5's processor
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def save_tiny_vlm(folder: str | Path, seed: int = 0, image_size: int = 32, patch_size: int = 8) -> Path:
    """A random ``LlavaForConditionalGeneration`` folder with its processor (hidden size 16, one layer each)."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from ..metrics.backbones import pil_processor_class

    folder = Path(folder)
    words = [*SPECIAL, "\n", *(chr(c) for c in range(32, 127))]
    vocab = {word: i for i, word in enumerate(words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")  # one token per character
    backend.decoder = decoders.Fuse()  # and decoding joins them back without spaces
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        padding_side="left",
        extra_special_tokens={"image_token": "<image>"},
    )
    vision = transformers.CLIPVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=16,
    )
    text = transformers.LlamaConfig(
        vocab_size=len(words),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=vocab["<s>"],
        eos_token_id=vocab["</s>"],
        pad_token_id=vocab["<pad>"],
    )
    config = transformers.LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=vocab["<image>"],
        vision_feature_layer=-2,  # llava-1.5 reads the penultimate CLIP layer
        vision_feature_select_strategy="default",  # and drops its CLS token
    )
    torch.manual_seed(seed)
    model = transformers.LlavaForConditionalGeneration(config).eval()
    image_processor = pil_processor_class("CLIPImageProcessor")(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        resample=Image.Resampling.BICUBIC,
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )
    processor = transformers.LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the CLS token the vision tower adds (and the strategy drops)
        chat_template=CHAT_TEMPLATE,
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def save_tiny_detector(folder: str | Path, seed: int = 0, image_size: int = 64, patch_size: int = 16) -> Path:
    """A random ``OwlViTForObjectDetection`` folder with its processor (hidden size 16, one layer each; a 64 px image
    in 16 px patches gives 16 candidate boxes).

    The tokenizer is a ``CLIPTokenizer`` (byte-level BPE, as the official folder's) with the 256 byte symbols as
    its vocabulary, each also as a word end (``</w>``), and no merges: one token per character. As in the official
    vocabulary ``!`` is id 0 and the padding token (OWL-ViT takes a query whose first id is 0 for padding) and the
    end token has the largest id (the text model pools at the largest id)."""
    import transformers
    from tokenizers import pre_tokenizers

    from ..metrics.backbones import pil_processor_class

    folder = Path(folder)
    symbols = sorted(pre_tokenizers.ByteLevel.alphabet(), key=ord)  # "!" (33) first: printable ASCII map to themselves
    words = [*symbols, *(s + "</w>" for s in symbols), "<|startoftext|>", "<|endoftext|>"]
    vocab = {word: i for i, word in enumerate(words)}
    tokenizer = transformers.CLIPTokenizer(vocab=vocab, merges=[], pad_token="!", model_max_length=16)
    text = {
        **{"vocab_size": len(words), "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1},
        **{"num_attention_heads": 2, "max_position_embeddings": 16, "pad_token_id": vocab["!"]},
        **{"bos_token_id": vocab["<|startoftext|>"], "eos_token_id": vocab["<|endoftext|>"]},
    }
    vision = {
        **{"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2},
        **{"image_size": image_size, "patch_size": patch_size},
    }
    config = transformers.OwlViTConfig(text_config=text, vision_config=vision, projection_dim=16)
    torch.manual_seed(seed)
    model = transformers.OwlViTForObjectDetection(config).eval()
    square = {"height": image_size, "width": image_size}
    image_processor = pil_processor_class("OwlViTImageProcessor")(
        size=square, crop_size=square, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD)
    )
    processor = transformers.OwlViTProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
