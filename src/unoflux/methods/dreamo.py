"""DreamO (arXiv 2504.16915, bytedance/DreamO): references of any task as VAE tokens, told apart by embeddings.

Every reference (a subject, ``ip`` in DreamO; a face, ``id``; a style image) is VAE-encoded and packed like the
target, its tokens follow the target's with UnoPE's diagonal ids (cumulative offsets, as UNO), and per-token
embeddings are added right after ``x_embedder``: the target's tokens get ``task_embedding[1]``, every token of the
reference in slot k (1-based, in the order given) gets ``task_embedding[0] + idx_embedding[k]``. DreamO's task
string selects preprocessing only: its code gives task index 0 to every task. The prompt may name references with
the T5 placeholders ``[ref#1]`` .. ``[ref#9]`` (added to the tokenizer when DreamO's checkpoint loads); nothing
inserts them. CFG's negative branch sees the target alone, with no embedding. DreamO samples on the true token
count's shift (schedule "flux") and draws its noise in the compute dtype (diffusers' ``prepare_latents``).

Preprocessing as DreamO's app does it: a subject or style image is resized to an area of ``ref_res``\\ ² (512² by
default; each side floored to a multiple of 16), a face is taken as an aligned 512 x 512 crop and only cropped to
multiples of 16. Before that, per role, optional steps on transformers models stand in for DreamO's BEN2 and
facexlib (:class:`FaceCrop`, :class:`PaintWhite`; loaded with ``--face-detector``, ``--face-parser``,
``--background-remover``, or passed as ``preprocessors``); without them the input is taken as already preprocessed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import torch
from PIL import Image

from ..conditioning import grid_position_ids, image_to_tensor, sequence_position_ids
from ..errors import UnofluxError
from ..references import IDENTITY, STYLE, SUBJECT, Reference
from .base import Conditioning, Method

Step = Callable[[Image.Image], Image.Image]  # a preprocessing step: an RGB image in, an RGB image out


def _steps(steps: Step | Sequence[Step]) -> list[Step]:
    return [steps] if callable(steps) else list(steps)


MAX_DREAMO_REFERENCES = 9  # idx_embedding has 10 rows, slots are 1-based; placeholders go to [ref#9]
DREAMO_REFERENCE_SIDE = 512  # DreamO's ref_res: subjects and styles are resized to this side's area


@dataclasses.dataclass
class DreamOEmbeddings:
    """DreamO's learned embeddings from ``dreamo.safetensors``: task (2, D) and reference index (10, D)."""

    task: torch.Tensor
    index: torch.Tensor


def resize_to_area(image: Image.Image, side: int) -> Image.Image:
    """DreamO's ``resize_numpy_image_area``: scale by sqrt(side² / (h w)) (up or down), each side floored to a
    multiple of 16. Area-averaging (BOX) when shrinking, as cv2's INTER_AREA; bilinear when growing."""
    k = math.sqrt(side * side / (image.width * image.height))
    width, height = int(image.width * k), int(image.height * k)
    width, height = width - width % 16, height - height % 16
    if width < 16 or height < 16:
        raise UnofluxError(f"a {image.width}x{image.height} reference is too thin to resize to {side}x{side} px area")
    if (width, height) == image.size:
        return image
    return image.resize((width, height), Image.BOX if k < 1 else Image.BILINEAR)


def crop_to_16(image: Image.Image) -> Image.Image:
    width, height = image.width - image.width % 16, image.height - image.height % 16
    if width < 16 or height < 16:
        raise UnofluxError(f"a {image.width}x{image.height} face image is smaller than 16 px")
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


# What DreamO paints white on an aligned face crop (facexlib's BiSeNet labels 0, 7, 8, 9, 14, 15, 16, 18), by the
# CelebAMask-HQ names both BiSeNet and transformers' face-parsing models use: hair and face stay.
FACE_PARSING_WHITE = ("background", "l_ear", "r_ear", "ear_r", "neck", "neck_l", "cloth", "hat")


class PaintWhite:
    """A preprocessing step on a semantic-segmentation model (transformers): every pixel whose label is one of
    ``white`` (matched by name in ``config.id2label``) becomes white. Two of DreamO's steps are this:

    - face parsing for ``id`` references (:data:`FACE_PARSING_WHITE`: background, ears, earrings, neck, necklace,
      clothes, hat; hair and face stay), with any model that uses CelebAMask-HQ's label names; on an aligned face crop
      (DreamO's facexlib alignment is not built: pass the crop);
    - background removal for subjects (``("background",)``; DreamO composites BEN2's foreground on white), with any
      segmentation model that has a ``background`` label.
    """

    def __init__(self, model, processor, white: Sequence[str], what: str = "segmentation model"):
        names = {int(i): str(n).lower() for i, n in model.config.id2label.items()}
        missing = [n for n in ("background",) if n not in names.values()]
        if missing:
            raise UnofluxError(f"{what} labels {sorted(names.values())} have no 'background'")
        self.white = torch.tensor([i for i, n in names.items() if n in white], dtype=torch.long)
        self.model, self.processor = model.eval(), processor

    def labels(self, image: Image.Image) -> torch.Tensor:
        """(H, W) label of every pixel of ``image``."""
        inputs = self.processor(images=image, return_tensors="pt")
        with torch.no_grad():
            logits = self.model(pixel_values=inputs["pixel_values"].to(self.model.dtype)).logits
        logits = torch.nn.functional.interpolate(logits.float(), size=(image.height, image.width), mode="bilinear")
        return logits[0].argmax(0)

    def __call__(self, image: Image.Image) -> Image.Image:
        import numpy as np

        painted = np.asarray(image.convert("RGB")).copy()
        painted[torch.isin(self.labels(image), self.white).numpy()] = 255
        return Image.fromarray(painted)


class FaceCrop:
    """A face crop for ``id`` references from an object-detection model (transformers, a label whose name contains
    "face"): the most confident face box, widened to a square of ``scale`` times its longer side around its centre
    (white where it leaves the image) and resized to ``size`` x ``size``. It stands in for facexlib's aligned crop
    (DreamO: retinaface, 5 landmarks, FFHQ template at 512): no rotation, a fixed margin. No face above ``threshold``
    is an error naming the reference, never a crash."""

    def __init__(self, model, processor, threshold: float = 0.5, scale: float = 1.7, size: int = 512):
        labels = [int(i) for i, n in model.config.id2label.items() if "face" in str(n).lower()]
        if not labels:
            raise UnofluxError(f"face detector labels {sorted(model.config.id2label.values())} name no face")
        self.model, self.processor, self.labels = model.eval(), processor, labels
        self.threshold, self.scale, self.size = threshold, scale, size

    def box(self, image: Image.Image) -> tuple[float, float, float, float] | None:
        """The most confident face box (x0, y0, x1, y1) in pixels, or None."""
        inputs = self.processor(images=image, return_tensors="pt")
        with torch.no_grad():
            out = self.model(pixel_values=inputs["pixel_values"].to(self.model.dtype))
        found = self.processor.post_process_object_detection(
            out, threshold=self.threshold, target_sizes=[(image.height, image.width)]
        )[0]
        faces = [i for i, label in enumerate(found["labels"].tolist()) if label in self.labels]
        if not faces:
            return None
        best = max(faces, key=lambda i: found["scores"][i].item())
        return tuple(found["boxes"][best].tolist())

    def __call__(self, image: Image.Image) -> Image.Image:
        box = self.box(image)
        if box is None:
            raise UnofluxError(
                f"no face found in a {image.width}x{image.height} id reference (detector threshold {self.threshold}); "
                "give a face photo, or an aligned face crop without --face-detector"
            )
        x0, y0, x1, y1 = box
        side = self.scale * max(x1 - x0, y1 - y0)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        square = (round(cx - side / 2), round(cy - side / 2), round(cx + side / 2), round(cy + side / 2))
        canvas = Image.new("RGB", (square[2] - square[0], square[3] - square[1]), "white")
        canvas.paste(image, (-square[0], -square[1]))  # white outside the photo
        return canvas.resize((self.size, self.size), Image.BICUBIC)


class DreamOMethod(Method):
    name = "dreamo"
    limits = {SUBJECT: None, IDENTITY: None, STYLE: None}  # together at most MAX_DREAMO_REFERENCES
    default_schedule = "flux"  # diffusers' calculate_shift on the target's token count
    noise_dtype = None  # diffusers' prepare_latents draws in the compute dtype

    def __init__(
        self,
        preprocessors: dict[str, Step | Sequence[Step]] | None = None,
        embeddings: DreamOEmbeddings | None = None,
    ):
        # role -> steps run in order before the resize (e.g. background removal for subjects, face crop + parsing)
        self.preprocessors = {role: _steps(s) for role, s in (preprocessors or {}).items()}
        # the embeddings to use instead of the loaded checkpoint's: training passes its trainable ones
        self.embeddings = embeddings

    def check(self, references: Sequence[Reference]) -> None:
        super().check(references)
        if len(references) > MAX_DREAMO_REFERENCES:
            raise UnofluxError(f"DreamO takes at most {MAX_DREAMO_REFERENCES} references, not {len(references)}")

    resize_reference = staticmethod(resize_to_area)  # DreamO's area resize, not UNO's long side

    def reference_side(self, pipe, references: Sequence[Reference]) -> int:
        # a model that declares its reference sizes (unoflux.json, --ref-long-side: the world's DreamO runs, trained
        # at them) gets them, as with UNO; DreamO's ref_res where none are declared (FLUX.1-dev)
        if getattr(pipe, "reference_long_sides", None) is not None:
            return super().reference_side(pipe, references)
        return DREAMO_REFERENCE_SIDE

    def preprocess_references(self, references: Sequence[Reference], long_side: int, pipe=None) -> list[Reference]:
        # the steps given to this method, else the ones loaded with the pipeline (--face-parser)
        steps = {**getattr(pipe, "reference_preprocessors", {}), **self.preprocessors}
        prepared = []
        for k, reference in enumerate(references, start=1):
            image = reference.image
            for step in _steps(steps.get(reference.role, [])):
                try:
                    image = step(image)
                except UnofluxError as err:
                    raise UnofluxError(f"reference {k} ({reference.role}): {err}") from None
            image = crop_to_16(image) if reference.role == IDENTITY else self.resize_reference(image, long_side)
            prepared.append(reference.with_image(image))
        return prepared

    def conditioning(self, target_grid, reference_tokens, reference_grids, position_mode) -> Conditioning:
        """Training's entry (references already encoded): the same ids and embeddings as :meth:`prepare`, from the
        embeddings this method was given (the trainer's trainable ones)."""
        if self.embeddings is None:
            raise UnofluxError("training with method 'dreamo' needs its trainable embeddings (the trainer passes them)")
        return self._conditioning(self.embeddings, target_grid, reference_tokens, list(reference_grids), position_mode)

    def prepare(self, pipe, references, target_grid, position_mode, device, dtype) -> Conditioning:
        embeddings = self.embeddings or getattr(pipe, "dreamo_embeddings", None)
        if embeddings is None:
            raise UnofluxError("method 'dreamo' needs DreamO's checkpoint: pass --dreamo DIR (its dreamo.safetensors)")
        images = [r.image for r in references]  # every task is VAE tokens
        tokens = [self.encode_references(pipe, image_to_tensor(image).to(device), dtype) for image in images]
        grids = [(image.height // 16, image.width // 16) for image in images]
        embeddings = DreamOEmbeddings(task=embeddings.task.to(device, dtype), index=embeddings.index.to(device, dtype))
        tokens = torch.cat(tokens, dim=1) if tokens else None
        return self._conditioning(embeddings, target_grid, tokens, grids, position_mode)

    @staticmethod
    def _conditioning(embeddings: DreamOEmbeddings, target_grid, tokens, grids, position_mode) -> Conditioning:
        task, index = embeddings.task, embeddings.index
        rows = [task[1].expand(target_grid[0] * target_grid[1], -1)]
        for slot, (rows_k, cols_k) in enumerate(grids, start=1):
            rows.append((task[0] + index[slot]).expand(rows_k * cols_k, -1))
        target_only = Conditioning(image_ids=grid_position_ids(*target_grid))  # DreamO's negative pass
        return Conditioning(
            image_ids=sequence_position_ids(target_grid, grids, position_mode),
            reference_tokens=tokens,
            token_embeddings=torch.cat(rows)[None],
            unconditional=target_only,
        )
