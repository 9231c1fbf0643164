"""An open-vocabulary detector from a local ``transformers`` folder: the best box for a text query in an image.

:class:`Detector` loads any folder that ``AutoProcessor`` + ``AutoModelForZeroShotObjectDetection`` read and whose
model is OWL-ViT, OWLv2 (``google/owlv2-base-patch16-ensemble``) or Grounding DINO
(``IDEA-Research/grounding-dino-base``, MM-Grounding-DINO). :meth:`Detector.boxes` takes ``(image, query)`` pairs,
one query each (an image may come several times with different queries, e.g. one per subject), runs them in one
forward pass and returns, per pair, the highest-scoring box above the threshold and its score, or ``None``. Boxes
come from the processor's own post-processing, in the image's pixels, clipped to it.
"""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image

from ..errors import UnofluxError

Box = tuple[int, int, int, int]  # (x0, y0, x1, y1) in pixels, x1 and y1 exclusive (PIL's crop box)
OWL = ("owlvit", "owlv2")  # one query list per image, padded to the tokenizer's 16 tokens
GROUNDING = ("grounding-dino", "mm-grounding-dino")  # one "phrase." text per image; scores per text token
EXAMPLE = "google/owlv2-base-patch16-ensemble"


class Detector:
    """A zero-shot object detector in ``folder``, on ``device`` (None: cuda when present, else cpu), in float32.

    ``threshold``: a box counts only when its score is above it (OWL's scores are sigmoids of the box-query logit,
    Grounding DINO's the largest sigmoid over the query's tokens; both in [0, 1]).
    """

    def __init__(self, folder: str | Path, device: str | None = None, threshold: float = 0.1) -> None:
        import torch
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        from ..metrics.backbones import _from_pretrained, _read_config  # torch: only once a detector loads

        folder = Path(folder)
        model_type = _read_config(folder, "detector", EXAMPLE).get("model_type")
        if model_type not in OWL + GROUNDING:
            raise UnofluxError(
                f"detector folder {str(folder)!r} holds a {model_type!r} model; supported: {', '.join(OWL + GROUNDING)}"
            )
        self.grounding = model_type in GROUNDING
        self.threshold = threshold
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.processor = _from_pretrained(
            lambda: AutoProcessor.from_pretrained(str(folder), local_files_only=True), folder, "detector"
        )
        model = _from_pretrained(
            lambda: AutoModelForZeroShotObjectDetection.from_pretrained(str(folder), local_files_only=True),
            folder,
            "detector",
        )
        self.model = model.to(self.device, dtype=torch.float32).eval()

    def boxes(self, images: list[Image.Image], queries: list[str]) -> list[tuple[Box, float] | None]:
        """Per ``(images[i], queries[i])``: the best box for the query in that image and its score, or ``None``
        when no box scores above the threshold. All pairs go through the model in one batch; the same batch gives
        the same boxes (greedy, no sampling), so callers that must reproduce a run batch the same way."""
        import torch

        if len(images) != len(queries):
            raise UnofluxError(f"{len(images)} images need {len(images)} queries, not {len(queries)}")
        if not images:
            return []
        images = [image.convert("RGB") for image in images]
        sizes = [(image.height, image.width) for image in images]
        if self.grounding:  # "phrase." (lowercase, dot-terminated) is Grounding DINO's query syntax
            texts = [query.strip().lower().replace(".", ",") + "." for query in queries]
            inputs = self.processor(images=images, text=texts, return_tensors="pt", padding=True, truncation=True)
        else:
            inputs = self.processor(images=images, text=[[q] for q in queries], return_tensors="pt", truncation=True)
        inputs = inputs.to(self.device)
        with torch.inference_mode():
            outputs = self.model(**inputs)
        extra = {"input_ids": inputs["input_ids"]} if self.grounding else {}
        results = self.processor.post_process_grounded_object_detection(
            outputs, threshold=self.threshold, target_sizes=sizes, **extra
        )
        best = []
        for result, (height, width) in zip(results, sizes, strict=True):
            scores = result["scores"].float().cpu()
            if not len(scores):
                best.append(None)
                continue
            i = int(torch.argmax(scores))  # the first of equal maxima
            box = pixel_box([float(v) for v in result["boxes"][i].cpu()], width, height)
            best.append((box, round(float(scores[i]), 6)))
        return best


def pixel_box(box: list[float], width: int, height: int) -> Box:
    """A float ``(x0, y0, x1, y1)`` box as the pixels that cover it, clipped to the image, at least 1 px wide and
    high."""
    x0, y0 = (min(max(math.floor(v), 0), side - 1) for v, side in zip(box[:2], (width, height)))
    x1, y1 = (min(max(math.ceil(v), low + 1), side) for v, low, side in zip(box[2:], (x0, y0), (width, height)))
    return (x0, y0, x1, y1)
