"""A tiny random vision-language model in ``llava-hf/llava-1.5-7b-hf``'s on-disk layout, for tests and for running
``filter-vlm`` with ``vlm: local`` on a machine without a real VLM. Its replies are random text (they never parse).

``save_tiny_vlm(dir)`` writes what ``AutoProcessor`` / ``AutoModelForImageTextToText`` read from a LLaVA folder:
``config.json`` (``LlavaConfig``: a CLIP vision tower, a Llama language model), ``model.safetensors``, the
``LlavaProcessor`` (a ``CLIPImageProcessor``, a fast tokenizer, the chat template). The tokenizer is built offline
with the ``tokenizers`` library: one token per printable ASCII character, plus the special tokens.
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
