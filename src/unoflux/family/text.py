"""Tokenizers trained on the world's captions, and the tiny T5 / CLIP text encoders of the model family.

Both tokenizers are the classes FLUX uses (``T5Tokenizer``: Unigram; ``CLIPTokenizer``: byte-level BPE
with ``</w>``), trained with the ``tokenizers`` library on captions sampled from the world, and saved so
``AutoTokenizer.from_pretrained`` loads them like the real ones.

The encoders stay at their seeded random initialisation and are frozen. Why: the world's captions are a
closed, compositional vocabulary, so what the transformer needs from the text is which words appear
where; a random transformer encoder keeps token identity and order (residual stream), and FLUX's joint
attention learns to read it. The measured evidence is the base model's held-out scores (docs/model.md).
"""

from __future__ import annotations

import json
import math
import re
import string
from collections import Counter
from collections.abc import Iterable

import numpy as np
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5Tokenizer

from ..world.captions import caption
from ..world.sampling import distinct_looks, sample_scene, sample_two_panel
from ..world.subjects import training_identity

T5_SPECIALS = ["<pad>", "</s>", "<unk>"]  # ids 0, 1, 2, as T5Tokenizer expects
CLIP_SPECIALS = ["<|startoftext|>", "<|endoftext|>"]
CLIP_MAX_LENGTH = 77


def sample_captions(count: int, seed: int = 0) -> list[str]:
    """Captions of random training scenes: single, multi-subject and two-panel, in the builder's mix."""
    rng = np.random.default_rng(seed)
    captions = []
    for i in range(count):
        kind = i % 4
        if kind == 3:
            spec = sample_two_panel(rng, training_identity(rng))
        else:
            spec = sample_scene(rng, distinct_looks(rng, 1 if kind < 2 else int(rng.integers(2, 4))))
        captions.append(caption(spec, seed=int(rng.integers(2**31))))
    return captions


def train_t5_tokenizer(captions: Iterable[str], max_length: int) -> T5Tokenizer:
    """A Unigram model fitted to the captions: every word (``"\u2581word"``) and punctuation mark seen is a
    piece scored by its log frequency (the maximum-likelihood unigram model of a closed vocabulary),
    with single characters as low-scored fallbacks so any text still tokenizes."""
    counts = Counter(
        piece
        for text in captions
        for word, punct in re.findall(r"(\w[\w-]*)|([^\w\s])", text)
        for piece in (["\u2581" + word] if word else [punct])
    )
    total = sum(counts.values())
    vocab = [(piece, 0.0) for piece in T5_SPECIALS]
    vocab += [(piece, math.log(n / total)) for piece, n in counts.most_common()]
    known = {piece for piece, _ in vocab}
    vocab += [
        (c, -20.0) for c in "\u2581" + string.ascii_letters + string.digits + string.punctuation if c not in known
    ]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=max_length)


def train_clip_tokenizer(captions: Iterable[str], vocab_size: int) -> CLIPTokenizer:
    # CLIP's byte-level alphabet maps printable ASCII to itself, so a BPE trained on lower-cased words
    # with the "</w>" suffix gives a vocabulary and merges CLIPTokenizer reads as its own.
    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=CLIP_SPECIALS,
        end_of_word_suffix="</w>",
        initial_alphabet=list(string.ascii_lowercase + string.digits + string.punctuation),
    )
    tok.train_from_iterator(captions, trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return CLIPTokenizer(vocab=model["vocab"], merges=merges, model_max_length=CLIP_MAX_LENGTH)


def tiny_text_encoders(t5_tokenizer, clip_tokenizer, width: int, seed: int) -> tuple[T5EncoderModel, CLIPTextModel]:
    """FLUX's two text encoders at ``width`` channels, seeded random weights, frozen."""
    import torch

    torch.manual_seed(seed)
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(t5_tokenizer),
            d_model=width,
            d_kv=width // 4,
            d_ff=2 * width,
            num_layers=2,
            num_heads=4,
            feed_forward_proj="gated-gelu",
            relative_attention_num_buckets=16,
            pad_token_id=0,
            eos_token_id=1,
        )
    )
    eos = clip_tokenizer.convert_tokens_to_ids("<|endoftext|>")
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(clip_tokenizer),
            hidden_size=width,
            intermediate_size=2 * width,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=CLIP_MAX_LENGTH,
            projection_dim=width,
            bos_token_id=clip_tokenizer.convert_tokens_to_ids("<|startoftext|>"),
            eos_token_id=eos,
            pad_token_id=eos,
        )
    )
    return t5.eval().requires_grad_(False), clip.eval().requires_grad_(False)
