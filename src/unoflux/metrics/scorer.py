"""DINO, CLIP-I and CLIP-T scores as in the DreamBooth protocol (Ruiz et al., CVPR 2023), batched.

Protocol choices made here (each also in docs/metrics.md):

- DINO: the CLS token of the last layer after the final LayerNorm (``last_hidden_state[:, 0]``; not a pooler
  output), cosine similarity between a generated and a reference image (what DINO's own hub model returns and
  what the DreamBooth authors describe in google/dreambooth issue #3).
- CLIP-I: ``get_image_features`` (the projected, post-LayerNorm CLS token, as OpenAI's ``encode_image``),
  L2-normalised, cosine between a generated and a reference image.
- CLIP-T: ``get_text_features`` of the prompt (projected end-of-text token, as OpenAI's ``encode_text``),
  L2-normalised, cosine with the generated image's CLIP embedding. Reported as a plain cosine in [-1, 1], which is
  the scale of DreamBooth's and UNO's tables (about 0.3; UNO: 0.304); see :func:`scale_clip_t` for the x100 and
  CLIPScore (2.5 * max(cos, 0)) scales other papers use. The prompt is scored as given (no rare-token identifier
  is added or removed here); longer prompts are truncated to the text tower's 77 tokens.
- Averaging: per generated image, DINO and CLIP-I are the mean over that subject's reference images; the overall
  number is the mean over generated images (:func:`mean_scores`). With the same number of references for every
  image this equals DreamBooth's "average pairwise similarity" over all (generated, real) pairs.
- Images are read by the reference loader users hit (:func:`unoflux.images.load_image`: EXIF orientation applied,
  any mode to 8-bit RGB, transparency on white); each distinct image (same path, or same PIL object) is encoded
  once, read and encoded ``batch_size`` at a time (never all in memory), with a tqdm bar per backbone. An unreadable
  image stops the run, or with ``errors="record"`` only takes its cases' scores away (:attr:`CaseScore.error`).
- Optional masked DINO: pixels outside a subject mask (mask value < 128 after conversion to greyscale, resized
  to the image with nearest neighbour) are set to the DINO processor's mean colour (ImageNet mean in 8 bits), so
  they normalise to (almost, 8-bit rounding) zero, before the usual preprocessing.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import UnofluxError
from ..images import ImageInput, load_image
from .backbones import ClipBackbone, DinoBackbone, load_clip, load_dino

METRICS = ("dino", "clip_i", "clip_t", "dino_masked")


def default_device() -> str:
    """``cuda`` when a GPU is present, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def scale_clip_t(cosine: float, scale: str = "cosine") -> float:
    """A CLIP-T cosine on another paper's scale: ``"cosine"`` (as is: DreamBooth, UNO), ``"x100"`` (100 * cos,
    some tables) or ``"clipscore"`` (2.5 * max(cos, 0), Hessel et al. 2021; torchmetrics' CLIPScore is
    100 * max(cos, 0))."""
    if scale == "cosine":
        return cosine
    if scale == "x100":
        return 100.0 * cosine
    if scale == "clipscore":
        return 2.5 * max(cosine, 0.0)
    raise UnofluxError(f"CLIP-T scale {scale!r} is not one of cosine, x100, clipscore")


def apply_mask(image: Image.Image, mask: ImageInput, fill: Sequence[float]) -> Image.Image:
    """``image`` with every pixel where ``mask`` is dark (< 128 in greyscale) set to ``fill`` (RGB in [0, 1])."""
    mask_image = mask if isinstance(mask, Image.Image) else load_image(mask, "mask image")
    keep = np.asarray(mask_image.convert("L").resize(image.size, Image.Resampling.NEAREST)) >= 128
    pixels = np.asarray(image.convert("RGB")).copy()
    pixels[~keep] = np.round(np.asarray(fill, dtype=np.float64) * 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def _key(source: ImageInput) -> tuple:
    if isinstance(source, Image.Image):
        return ("pil", id(source))
    return ("path", os.path.abspath(os.fspath(source)))


@dataclass
class Case:
    """One generated image with its subject's reference images and the prompt it was generated from.

    ``generated_mask`` / ``reference_masks`` (one per reference, ``None`` for none) switch on masked DINO."""

    generated: ImageInput
    references: Sequence[ImageInput]
    prompt: str | None = None
    generated_mask: ImageInput | None = None
    reference_masks: Sequence[ImageInput | None] | None = None


@dataclass
class CaseScore:
    """The scores of one :class:`Case`: per-metric means over the references, and the per-reference values.
    A metric whose backbone (or prompt, or masks) was not given is ``None``."""

    dino: float | None = None
    clip_i: float | None = None
    clip_t: float | None = None
    dino_masked: float | None = None
    dino_per_reference: list[float] = field(default_factory=list)
    clip_i_per_reference: list[float] = field(default_factory=list)
    dino_masked_per_reference: list[float] = field(default_factory=list)
    error: str | None = None  # why this case has no scores (an unreadable image), with ``errors="record"``

    def as_dict(self) -> dict:
        return {**{name: getattr(self, name) for name in METRICS}, "error": self.error}


def mean_scores(scores: Iterable[CaseScore]) -> dict[str, float | None]:
    """The protocol's overall numbers: each metric's mean over the generated images that have it (``None`` if none),
    and ``failed``: how many cases had no scores (an unreadable image)."""
    scores = list(scores)
    out: dict = {"failed": sum(s.error is not None for s in scores)}
    for name in METRICS:
        values = [getattr(s, name) for s in scores if getattr(s, name) is not None]
        out[name] = float(np.mean(values)) if values else None
    return out


class Scorer:
    """DINO / CLIP-I / CLIP-T scoring with backbones loaded once from local folders.

    ``dino``: a ViT DINO (``facebook/dino-vits16``, the protocol's) or DINOv2 folder; ``clip``: a CLIP folder
    (``openai/clip-vit-base-patch32``, the protocol's); either may be left out. ``device`` defaults to CUDA when
    present, ``batch_size`` images (or prompts) go through a backbone at a time, ``progress`` shows a tqdm bar per
    backbone. ``dino_preprocess`` / ``clip_preprocess``: ``"protocol"`` (DINO's / OpenAI CLIP's evaluation
    transforms, the default) or ``"folder"`` (the folder's ``preprocessor_config.json``). ``dtype``: the backbones'
    weights (float32 by default; embeddings and cosines are always computed in float32).
    """

    def __init__(
        self,
        dino: str | os.PathLike | None = None,
        clip: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        batch_size: int = 32,
        progress: bool = True,
        dino_preprocess: str = "protocol",
        clip_preprocess: str = "protocol",
        dtype: torch.dtype = torch.float32,
    ):
        if dino is None and clip is None:
            raise UnofluxError("a Scorer needs a DINO folder (dino=DIR), a CLIP folder (clip=DIR), or both")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise UnofluxError(f"batch_size {batch_size!r} must be a whole number of at least 1")
        try:
            self.device = torch.device(device if device is not None else default_device())
        except (RuntimeError, TypeError):
            raise UnofluxError(f"device {device!r} is not a torch device (cpu, cuda, cuda:1, ...)") from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise UnofluxError(f"device {device!r} asks for CUDA, but torch sees no CUDA GPU here; use device='cpu'")
        self.batch_size = batch_size
        self.progress = progress
        self.dino: DinoBackbone | None = load_dino(dino, dino_preprocess, dtype) if dino is not None else None
        self.clip: ClipBackbone | None = load_clip(clip, clip_preprocess, dtype) if clip is not None else None
        for backbone in (self.dino, self.clip):
            if backbone is not None:
                backbone.model.to(self.device)

    def describe(self) -> dict:
        """Which backbones (folder, family) and settings the scores come from, for a summary file."""
        return {
            "dino": None
            if self.dino is None
            else {"folder": self.dino.folder, "kind": self.dino.kind, "preprocess": self.dino.preprocess},
            "clip": None if self.clip is None else {"folder": self.clip.folder, "preprocess": self.clip.preprocess},
            "device": str(self.device),
            "batch_size": self.batch_size,
        }

    # ------------------------------------------------------------------------------------------- encoders
    def _batches(self, items: list, desc: str):
        from tqdm.auto import tqdm

        starts = range(0, len(items), self.batch_size)
        for start in tqdm(starts, desc=desc, unit="batch", disable=not self.progress or not items, leave=False):
            yield items[start : start + self.batch_size]

    def _pixels(self, processor, images: list[Image.Image], dtype: torch.dtype) -> torch.Tensor:
        return processor(images=images, return_tensors="pt")["pixel_values"].to(self.device, dtype)

    def _need(self, backbone, name: str, flag: str):
        if backbone is None:
            raise UnofluxError(f"{name} needs a {flag} backbone folder; make the Scorer with {flag}=DIR")
        return backbone

    def _encode_images(self, sources, model, processor, run, desc, masks=None, failures=None) -> torch.Tensor:
        """Load ``sources`` a batch at a time (never all at once), encode with ``run(pixel_values)``, L2-normalise.
        With a ``failures`` dict, an image that cannot be read gets a NaN row and its one-sentence message under its
        index instead of stopping the run."""
        rows: list[torch.Tensor | None] = [None] * len(sources)
        dtype = next(model.parameters()).dtype
        for indices in self._batches(list(range(len(sources))), desc):
            kept, pictures = [], []
            for i in indices:
                try:
                    picture = load_image(sources[i], "image")
                    if masks is not None and masks[i] is not None:
                        picture = apply_mask(picture, masks[i], processor.image_mean)
                except UnofluxError as err:
                    if failures is None:
                        raise
                    failures[i] = str(err)
                    continue
                kept.append(i)
                pictures.append(picture)
            if pictures:
                for i, row in zip(kept, run(self._pixels(processor, pictures, dtype)).float().cpu(), strict=True):
                    rows[i] = row
        done = [row for row in rows if row is not None]
        if not done:
            return torch.full((len(sources), 0), float("nan"))
        nan = torch.full_like(done[0], float("nan"))
        return F.normalize(torch.stack([nan if row is None else row for row in rows]), dim=-1)

    @torch.no_grad()
    def dino_embeddings(self, images: Sequence[ImageInput], masks=None, failures: dict | None = None) -> torch.Tensor:
        """L2-normalised DINO CLS embeddings (``last_hidden_state[:, 0]``; float32, CPU), one row per image;
        ``masks`` (one per image, ``None`` for none) set backgrounds to the processor's mean colour first."""
        dino = self._need(self.dino, "DINO", "dino")
        run = lambda pixels: dino.model(pixel_values=pixels).last_hidden_state[:, 0]  # noqa: E731
        return self._encode_images(list(images), dino.model, dino.processor, run, "DINO", masks, failures)

    @torch.no_grad()
    def clip_image_embeddings(self, images: Sequence[ImageInput], failures: dict | None = None) -> torch.Tensor:
        """L2-normalised CLIP image embeddings (``get_image_features``; float32, CPU), one row per image."""
        clip = self._need(self.clip, "CLIP-I/CLIP-T", "clip")
        run = lambda pixels: _features(clip.model.get_image_features(pixel_values=pixels))  # noqa: E731
        return self._encode_images(list(images), clip.model, clip.processor, run, "CLIP image", None, failures)

    @torch.no_grad()
    def clip_text_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        """L2-normalised CLIP text embeddings (``get_text_features``; float32, CPU), one row per prompt."""
        clip = self._need(self.clip, "CLIP-T", "clip")
        for prompt in prompts:
            if not isinstance(prompt, str):
                raise UnofluxError(f"CLIP-T needs a prompt string for every image, got {prompt!r}")
        max_length = clip.model.config.text_config.max_position_embeddings
        rows = []
        for batch in self._batches(list(prompts), "CLIP text"):
            tokens = clip.tokenizer(batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            out = clip.model.get_text_features(
                input_ids=tokens["input_ids"].to(self.device), attention_mask=tokens["attention_mask"].to(self.device)
            )
            rows.append(_features(out).float().cpu())
        return F.normalize(torch.cat(rows), dim=-1) if rows else torch.empty(0)

    # ------------------------------------------------------------------------------------------- pairs
    def _pairwise(self, embed, generated: Sequence[ImageInput], references: Sequence[ImageInput]) -> list[float]:
        if len(generated) != len(references):
            raise UnofluxError(f"{len(generated)} generated images but {len(references)} references; pair them 1:1")
        table = _unique_embeddings(embed, list(generated) + list(references))
        return [float(table[_key(g)] @ table[_key(r)]) for g, r in zip(generated, references, strict=True)]

    def dino_pairs(self, generated: Sequence[ImageInput], references: Sequence[ImageInput]) -> list[float]:
        """DINO score of each (generated[i], references[i]) pair."""
        return self._pairwise(self.dino_embeddings, generated, references)

    def clip_i_pairs(self, generated: Sequence[ImageInput], references: Sequence[ImageInput]) -> list[float]:
        """CLIP-I score of each (generated[i], references[i]) pair."""
        return self._pairwise(self.clip_image_embeddings, generated, references)

    def clip_t_pairs(self, images: Sequence[ImageInput], prompts: Sequence[str]) -> list[float]:
        """CLIP-T score (plain cosine) of each (images[i], prompts[i]) pair."""
        if len(images) != len(prompts):
            raise UnofluxError(f"{len(images)} images but {len(prompts)} prompts; pair them 1:1")
        table = _unique_embeddings(self.clip_image_embeddings, list(images))
        texts = self.clip_text_embeddings(list(prompts))
        return [float(table[_key(im)] @ texts[i]) for i, im in enumerate(images)]

    # ------------------------------------------------------------------------------------------- cases
    def score(self, cases: Sequence[Case], errors: str = "raise") -> list[CaseScore]:
        """Every metric the Scorer's backbones allow for each case (see :class:`CaseScore`); every distinct image is
        encoded once. CLIP-T is scored for cases with a prompt, masked DINO for cases with masks.

        ``errors="raise"`` stops at the first unreadable image (one :class:`UnofluxError` sentence);
        ``errors="record"`` scores everything else and gives each case that needs a bad image (its generated image,
        a reference or a mask) no scores and that image's message in :attr:`CaseScore.error`."""
        if errors not in ("raise", "record"):
            raise UnofluxError(f"errors={errors!r} is not one of raise, record")
        cases = list(cases)
        for i, case in enumerate(cases):
            if not case.references:
                raise UnofluxError(f"case {i} ({case.generated!r}) has no reference images")
            if case.reference_masks is not None and len(case.reference_masks) != len(case.references):
                raise UnofluxError(
                    f"case {i} has {len(case.reference_masks)} reference masks for {len(case.references)} references"
                )
        bad: dict[tuple, str] | None = {} if errors == "record" else None
        images = [case.generated for case in cases] + [r for case in cases for r in case.references]
        results = [CaseScore() for _ in cases]
        if self.dino is not None:
            table = _unique_embeddings(self.dino_embeddings, images, bad)
            for case, out in zip(cases, results, strict=True):
                out.dino_per_reference = [float(table[_key(case.generated)] @ table[_key(r)]) for r in case.references]
                out.dino = float(np.mean(out.dino_per_reference))
            self._score_masked(cases, results, bad)
        if self.clip is not None:
            table = _unique_embeddings(self.clip_image_embeddings, images, bad)
            for case, out in zip(cases, results, strict=True):
                g = table[_key(case.generated)]
                out.clip_i_per_reference = [float(g @ table[_key(r)]) for r in case.references]
                out.clip_i = float(np.mean(out.clip_i_per_reference))
            prompts = list(dict.fromkeys(case.prompt for case in cases if case.prompt is not None))
            texts = dict(zip(prompts, self.clip_text_embeddings(prompts), strict=True))  # each prompt encoded once
            for case, out in zip(cases, results, strict=True):
                if case.prompt is not None:
                    out.clip_t = float(table[_key(case.generated)] @ texts[case.prompt])
        for i, case in enumerate(cases):
            needed = [case.generated, *case.references, case.generated_mask, *(case.reference_masks or [])]
            messages = [bad[_key(x)] for x in needed if bad and x is not None and _key(x) in bad]
            if messages:
                results[i] = CaseScore(error=messages[0])
        return results

    def _score_masked(self, cases: list[Case], results: list[CaseScore], bad: dict | None) -> None:
        masked = [i for i, c in enumerate(cases) if c.generated_mask is not None or c.reference_masks is not None]
        if not masked:
            return
        items: dict[tuple, tuple[ImageInput, ImageInput | None]] = {}

        def key(image, mask):
            k = _key(image) + ((None,) if mask is None else _key(mask))
            items.setdefault(k, (image, mask))
            return k

        plan = []
        for i in masked:
            case = cases[i]
            masks = case.reference_masks or [None] * len(case.references)
            refs = [key(r, m) for r, m in zip(case.references, masks, strict=True)]
            plan.append((i, key(case.generated, case.generated_mask), refs))
        keys = list(items)
        failures = None if bad is None else {}
        embeddings = self.dino_embeddings([items[k][0] for k in keys], [items[k][1] for k in keys], failures)
        for index, message in (failures or {}).items():  # a bad mask (the images themselves were read before)
            mask = items[keys[index]][1]
            if mask is not None:
                bad.setdefault(_key(mask), message)
        table = dict(zip(keys, embeddings, strict=True))
        for i, g, refs in plan:
            results[i].dino_masked_per_reference = [float(table[g] @ table[r]) for r in refs]
            results[i].dino_masked = float(np.mean(results[i].dino_masked_per_reference))


def _features(out) -> torch.Tensor:
    """``get_*_features`` returns a tensor in transformers 4 and an output whose ``pooler_output`` is the projected
    embedding in transformers 5."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _unique_embeddings(embed, images: list[ImageInput], bad: dict | None = None) -> dict[tuple, torch.Tensor]:
    """``{image key: embedding}`` with each distinct image encoded once; unreadable ones go to ``bad`` (key ->
    message) when it is given."""
    unique: dict[tuple, ImageInput] = {}
    for image in images:
        unique.setdefault(_key(image), image)
    keys = list(unique)
    failures = None if bad is None else {}
    table = dict(zip(keys, embed([unique[k] for k in keys], failures=failures), strict=True))
    for index, message in (failures or {}).items():
        bad.setdefault(keys[index], message)
    return table


def score_cases(
    cases: Sequence[Case], dino: str | os.PathLike | None = None, clip: str | os.PathLike | None = None, **scorer
) -> tuple[list[CaseScore], dict[str, float | None]]:
    """One call: load a :class:`Scorer` (``scorer`` are its keyword options), score ``cases``, and average as the
    protocol says -> (per-case scores, overall means)."""
    scores = Scorer(dino=dino, clip=clip, **scorer).score(cases)
    return scores, mean_scores(scores)
