"""DreamO training (``method: dreamo``; DreamO released no training code): what trains beside the LoRA.

- the task embedding (2, D) and the reference-index embedding (10, D) that :class:`~unoflux.methods.dreamo.DreamOMethod`
  adds after ``x_embedder``, zero-initialised (the first step is UNO's conditioning with DreamO's ids);
- the T5 input rows of the 10 placeholder tokens ``[ref#1]`` .. ``[ref#9]``, ``[res]`` (added to the tokenizer as
  DreamO's inference does), initialised to the mean row of T5's embedding. The rest of T5 stays frozen: the
  trained module (:class:`DreamOModel`) looks the caption's token ids up in T5's frozen table, puts the trainable
  rows at the placeholders and runs T5 on those ``inputs_embeds``, so only those rows get gradients.

The inference method and the trainer share one conditioning code path: the trainer hands its trainable embeddings
to ``DreamOMethod(embeddings=...)``. Files: :func:`dreamo_file_tensors` gives DreamO's own ``dreamo.safetensors``
(its LoRA layout plus ``dreamo_t5_embedding.weight`` (10 rows: the placeholders, DreamO's loader reads the last 10),
``dreamo_task_embedding.weight``, ``dreamo_idx_embedding.weight``), which ``--dreamo FOLDER`` loads.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..checkpoints.dreamo import EMBEDDING_KEYS, MAIN_FILE, PLACEHOLDERS, TRAINED_METADATA, add_placeholders
from ..errors import UnofluxError
from ..methods.dreamo import DreamOEmbeddings

PARTS_FILE = "dreamo_parts.safetensors"  # a checkpoint's DreamO tensors (beside its LoRA file)
NUM_TASKS, NUM_INDICES = 2, 10  # DreamO's file: task (2, D), index (10, D)


class DreamOParts(torch.nn.Module):
    """The trainable DreamO tensors. ``first_placeholder`` is the T5 id of ``[ref#1]``; the 10 ids are consecutive."""

    def __init__(self, hidden: int, t5_rows: torch.Tensor, first_placeholder: int, train_placeholders: bool = True):
        super().__init__()
        self.task = torch.nn.Parameter(torch.zeros(NUM_TASKS, hidden))
        self.index = torch.nn.Parameter(torch.zeros(NUM_INDICES, hidden))
        self.t5_rows = torch.nn.Parameter(t5_rows.detach().float().clone(), requires_grad=train_placeholders)
        self.first_placeholder = first_placeholder

    @property
    def embeddings(self) -> DreamOEmbeddings:
        """The method's view of the task and index embeddings (the Parameters themselves: gradients reach them)."""
        return DreamOEmbeddings(task=self.task, index=self.index)

    def t5_inputs(self, table: torch.nn.Embedding, input_ids: torch.Tensor) -> torch.Tensor:
        """T5's ``inputs_embeds`` (B, L, d) of ``input_ids``: the frozen table's rows, the trainable ones at the
        placeholders."""
        embeds = table(input_ids)
        slot = input_ids - self.first_placeholder
        is_placeholder = (slot >= 0) & (slot < len(PLACEHOLDERS))
        rows = self.t5_rows[slot.clamp(0, len(PLACEHOLDERS) - 1)].to(embeds.dtype)
        return torch.where(is_placeholder[..., None], rows, embeds)


def add_trainable_placeholders(pipe, train_placeholders: bool = True) -> DreamOParts:
    """Add DreamO's placeholders to ``pipe``'s T5 tokenizer and embedding (rows: T5's mean row) and return the
    trainable parts for its transformer."""
    encoder = pipe.text_encoder_2
    mean_row = encoder.get_input_embeddings().weight.detach().float().mean(dim=0)
    ids = add_placeholders(pipe, mean_row.expand(len(PLACEHOLDERS), -1))
    encoder.requires_grad_(False)  # the resized table is a new, trainable Parameter: T5 stays frozen
    if ids != list(range(ids[0], ids[0] + len(PLACEHOLDERS))):  # DreamO's order: len(tokenizer) + 0..9
        raise UnofluxError(f"the T5 tokenizer gave DreamO's placeholders ids {ids}, not 10 consecutive ones")
    config = pipe.transformer.config
    hidden = config.num_attention_heads * config.attention_head_dim
    rows = encoder.get_input_embeddings().weight[ids]
    return DreamOParts(hidden, rows, ids[0], train_placeholders)


def sync_t5_rows(pipe, parts: DreamOParts) -> None:
    """Write the trained placeholder rows into T5's embedding, so that the pipeline (validation) encodes with them."""
    weight = pipe.text_encoder_2.get_input_embeddings().weight
    with torch.no_grad():
        weight[parts.first_placeholder : parts.first_placeholder + len(PLACEHOLDERS)] = parts.t5_rows.to(weight)


def load_init_parts(parts: DreamOParts, init_lora: str | Path) -> Path | None:
    """Start ``parts`` from the run ``init_lora`` came from (Stage II from Stage I): a checkpoint's
    ``dreamo_parts.safetensors`` or a ``final/``'s ``dreamo.safetensors`` in that folder (or beside that file).
    Returns the file read, or None when there is none there (a UNO LoRA: the parts start from their init)."""
    from safetensors.torch import load_file

    folder = Path(init_lora) if Path(init_lora).is_dir() else Path(init_lora).parent
    if (folder / PARTS_FILE).is_file():
        parts.load_state_dict(load_file(str(folder / PARTS_FILE)))
        return folder / PARTS_FILE
    if not (folder / MAIN_FILE).is_file():
        return None
    state = load_file(str(folder / MAIN_FILE))
    t5, task, index = (state.get(k) for k in EMBEDDING_KEYS)
    wanted = ((t5, parts.t5_rows), (task, parts.task), (index, parts.index))
    for key, (tensor, param) in zip(EMBEDDING_KEYS, wanted):
        if tensor is None or tuple(tensor.shape) != tuple(param.shape):
            got = "nothing" if tensor is None else f"shape {tuple(tensor.shape)}"
            raise UnofluxError(
                f"init_lora's {str(folder / MAIN_FILE)!r} has {got} for {key!r}; this run's is {tuple(param.shape)}"
            )
    with torch.no_grad():
        for tensor, param in wanted:
            param.copy_(tensor)
    return folder / MAIN_FILE


class DreamOModel(torch.nn.Module):
    """The transformer, the frozen T5 and the DreamO parts as the one module the trainer prepares, checkpoints and
    clips. Its forward takes T5 token ids (B, L) where the transformer takes ``encoder_hidden_states``; the task and
    index embeddings enter through the conditioning's ``token_embeddings`` (the engine's ``x_embedder`` hook)."""

    def __init__(self, transformer: torch.nn.Module, text_encoder: torch.nn.Module, parts: DreamOParts):
        super().__init__()
        self.transformer, self.text_encoder, self.parts = transformer, text_encoder, parts

    def forward(self, t5_input_ids: torch.Tensor, **transformer_inputs):
        embeds = self.parts.t5_inputs(self.text_encoder.get_input_embeddings(), t5_input_ids)
        prompt_embeds = self.text_encoder(inputs_embeds=embeds, output_hidden_states=False)[0]
        return self.transformer(encoder_hidden_states=prompt_embeds, **transformer_inputs)


def dreamo_file_tensors(parts: DreamOParts, xlabs_lora: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DreamO's ``dreamo.safetensors`` tensors: the LoRA (given in UNO's XLabs layout, ``double_blocks.0...``) under
    DreamO's names (``double_blocks_0...``) and the three embeddings, on the CPU in float32."""
    tensors = {re.sub(r"(double|single)_blocks\.(\d+)", r"\1_blocks_\2", k): v for k, v in xlabs_lora.items()}
    t5, task, index = EMBEDDING_KEYS
    for key, tensor in ((t5, parts.t5_rows), (task, parts.task), (index, parts.index)):
        tensors[key] = tensor.detach().to("cpu", torch.float32).clone()
    return tensors


__all__ = [
    "PARTS_FILE",
    "TRAINED_METADATA",
    "DreamOModel",
    "DreamOParts",
    "add_trainable_placeholders",
    "dreamo_file_tensors",
    "load_init_parts",
    "sync_t5_rows",
]
