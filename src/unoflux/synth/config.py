"""The settings of a synthesis run: one documented dataclass, loaded from YAML and copied beside the manifests."""

from __future__ import annotations

import dataclasses
import string
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ..errors import UnofluxError
from ..train.config import read_settings_file

STAGES = ("prompts", "generate", "split", "filter-similarity", "filter-vlm", "multi-subject", "report")
# world: the spec's exact layout; panel: the whole panel is the subject's box; detector: an open-vocabulary
# detector's best box for the record's subject phrase; masks: the bounding box of your mask of each panel
LOCATORS = ("world", "panel", "detector", "masks")
# those that find each of several subjects in one image: the world's layout, or the detector's best box per phrase
MULTI_LOCATORS = ("world", "detector")
SIMILARITY_BACKENDS = ("world", "dinov2")  # world: the exact checker's identity score; dinov2: crop cosine
# world: the identity beats every look-alike; dinov2: a cosine that random crops of different things rarely reach
DEFAULT_THRESHOLDS = {"world": 0.0, "dinov2": 0.5}
# world: the exact checker's truth mapped to 0-4 (synth.vlm.world_vlm_score); local: a transformers VLM folder;
# http: an OpenAI-compatible chat-completions endpoint
VLM_BACKENDS = ("world", "local", "http")
# world: 4 is the checker's "consistent"; a model's 3 is "the same subject, a minor detail differs" on the prompt's scale
DEFAULT_VLM_THRESHOLDS = {"world": 4, "local": 3, "http": 3}
TEMPLATE_FIELDS = {"subject", "left", "right"}
# UNO-style in-context prompt for user vocabularies (the world's own captions phrase it the same way)
DEFAULT_TEMPLATES = (
    "a two-panel image of the same {subject}: on the left, {left}; on the right, {right}",
    "two side-by-side panels showing the same {subject}: left panel {left}; right panel {right}",
)


@dataclass
class SynthConfig:
    """Everything a synthesis run depends on; saved as ``config.yaml`` in ``output_dir``.

    Vocabularies: leave ``subjects`` and ``scenes`` unset for the embedded world (world identities and
    backgrounds, the world's two-panel captions, exact specs that the world locator and checker use), or give
    both as lists of phrases ("a red mug", "on a wooden desk") expanded through ``templates``.
    """

    output_dir: str  # manifests, images, config.yaml and report.md go here
    count: int = 64  # two-panel prompts to synthesize
    seed: int = 0  # prompt i draws everything (vocabulary picks, its generation seed) from (seed, i)
    # prompts
    subjects: list[str] | None = None  # subject phrases; None = the embedded world's identities
    scenes: list[str] | None = None  # scene phrases (at least two); None = the world's backgrounds
    templates: list[str] | None = None  # with {subject}, {left}, {right}; None = DEFAULT_TEMPLATES
    # generate
    model: str | None = None  # a diffusers FLUX folder; None = the embedded base (its text-to-image model)
    device: str | None = None  # None = cuda when present, else cpu
    size: int = 128  # panel side in pixels: two-panel images are 2 * size wide and size high
    steps: int | None = None  # sampling steps; None = the model's default
    guidance: float | None = None  # guidance input; None = the model's
    true_cfg: float | None = None  # classifier-free guidance scale; None = the model's
    batch_size: int = 4  # prompts per pipeline call (and crops per DINOv2 batch)
    # split
    locator: str = "world"  # one of LOCATORS: where each panel's subject is
    margin: float = 0.1  # crops grow by this fraction of the box's side on each side (clipped to the panel)
    detector: str | None = None  # locator detector: an OWL-ViT / OWLv2 / Grounding DINO folder (transformers layout)
    # locator detector: a subject whose best box scores at most this is not located (split: the whole panel is used,
    # marked so; multi-subject: its target is not kept); 0.1 is OWL's own post-processing default, under which
    # OWLv2's scores for a named object in view rarely fall
    detector_threshold: float = 0.1
    masks: str | None = None  # locator masks: a folder of KEY_left.png and KEY_right.png (white = the subject)
    # filter-similarity
    similarity: str = "world"  # one of SIMILARITY_BACKENDS
    dino: str | None = None  # DINOv2 folder (transformers layout) for similarity: dinov2
    threshold: float | None = None  # keep a pair when its score is at least this; None = the backend's default
    # keep the top_k best-scoring pairs instead of the threshold's (ties: the smaller key first; a pair the detector
    # did not locate in a panel is never kept), ranked once every pair is scored; None = the threshold decides
    # (the multi-subject stage always keeps by threshold)
    top_k: int | None = None
    # filter-vlm (scores the pairs filter-similarity kept, as UNO runs its VLM on DINOv2's survivors)
    vlm: str | None = None  # one of VLM_BACKENDS; None = world on the world's vocabulary, no VLM stage otherwise
    vlm_model: str | None = None  # local: a transformers VLM folder; http: the model name the server serves
    vlm_url: str | None = None  # http: the endpoint's base URL (".../v1"); /chat/completions is appended
    vlm_api_key_env: str | None = None  # http: the environment variable holding the API key; None = send no key
    vlm_timeout: float = 120.0  # http: seconds to wait for one reply
    vlm_attempts: int = 3  # http: tries per pair (timeouts, 408/429/5xx, bad JSON, unparsable replies are retried)
    vlm_backoff: float = 2.0  # http: seconds before the second try, doubling after each further failure
    vlm_max_new_tokens: int = 512  # local and http: the reply's token budget (the reasoning and the SCORE line)
    vlm_batch_size: int | None = None  # pairs per generate call (local) or requests in flight (http); None = batch_size
    vlm_threshold: float | None = None  # keep a pair when its 0-4 score is at least this; None = the backend's
    # multi-subject (targets of 2-3 subjects; a Stage-I model re-generates each subject's crop as its reference)
    multi_count: int = 0  # multi-subject targets to synthesize; 0 = no multi-subject stage
    multi_sizes: list[int] = dataclasses.field(default_factory=lambda: [2, 3])  # subjects per target, drawn per target
    stage1_model: str | None = None  # the Stage-I model (a diffusers FLUX folder); None = model's (the embedded one)
    stage1_lora: str | None = None  # a LoRA file (UNO's layouts) on stage1_model; None = the model's own

    def __post_init__(self) -> None:
        if not isinstance(self.output_dir, str) or not self.output_dir:
            raise UnofluxError(f"output_dir {self.output_dir!r} must be a folder path")
        for name, low in (("count", 1), ("batch_size", 1), ("size", 16)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise UnofluxError(f"{name} {value!r} must be an integer of at least {low}")
        if self.size % 16:
            raise UnofluxError(f"size {self.size!r} must be a multiple of 16 (the VAE and 2x2 packing need it)")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise UnofluxError(f"seed {self.seed!r} must be a non-negative integer")
        if (self.subjects is None) != (self.scenes is None):
            raise UnofluxError("give both subjects and scenes (your vocabulary) or neither (the embedded world's)")
        for name, low in (("subjects", 1), ("scenes", 2)):
            value = getattr(self, name)
            if value is not None and (
                not isinstance(value, list) or len(value) < low or not all(isinstance(v, str) and v for v in value)
            ):
                raise UnofluxError(f"{name} {value!r} must be a list of at least {low} non-empty phrases")
        if self.templates is not None:
            if self.world:
                raise UnofluxError("templates apply to your own subjects and scenes; the world writes its captions")
            if not isinstance(self.templates, list) or not self.templates:
                raise UnofluxError(f"templates {self.templates!r} must be a non-empty list of strings")
            for template in self.templates:
                if template_fields(template) != TEMPLATE_FIELDS:
                    raise UnofluxError(
                        f"template {template!r} must use exactly the fields {{subject}}, {{left}} and {{right}}"
                    )
        if self.steps is not None and (
            not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 1
        ):
            raise UnofluxError(f"steps {self.steps!r} must be a positive integer or null (the model's)")
        if self.locator not in LOCATORS:
            raise UnofluxError(f"locator {self.locator!r} is not one of: {', '.join(LOCATORS)}")
        if self.locator == "world" and not self.world:
            raise UnofluxError(
                "locator world needs the world's vocabulary (no subjects/scenes); use locator panel, detector or masks"
            )
        if self.locator == "detector" and not (
            isinstance(self.detector, str) and self.detector and Path(self.detector, "config.json").is_file()
        ):
            raise UnofluxError(
                f"detector {self.detector!r} must be a detector folder with config.json (e.g. a download of "
                "google/owlv2-base-patch16-ensemble) for locator detector"
            )
        if (
            not isinstance(self.detector_threshold, (int, float))
            or isinstance(self.detector_threshold, bool)
            or not (0 <= self.detector_threshold < 1)
        ):
            raise UnofluxError(f"detector_threshold {self.detector_threshold!r} must be a score in [0, 1)")
        if self.locator == "masks" and not (isinstance(self.masks, str) and self.masks and Path(self.masks).is_dir()):
            raise UnofluxError(
                f"masks {self.masks!r} must be a folder of KEY_left.png and KEY_right.png masks for locator masks"
            )
        if not isinstance(self.margin, (int, float)) or not 0 <= self.margin <= 1:
            raise UnofluxError(f"margin {self.margin!r} must be a fraction in [0, 1]")
        if self.similarity not in SIMILARITY_BACKENDS:
            raise UnofluxError(f"similarity {self.similarity!r} is not one of: {', '.join(SIMILARITY_BACKENDS)}")
        if self.similarity == "world" and not self.world:
            raise UnofluxError("similarity world needs the world's vocabulary (no subjects/scenes); use dinov2")
        if self.similarity == "dinov2" and not (self.dino and Path(self.dino, "config.json").is_file()):
            raise UnofluxError(f"dino {self.dino!r} must be a DINOv2 folder with config.json for similarity dinov2")
        if self.threshold is None:
            self.threshold = DEFAULT_THRESHOLDS[self.similarity]
        if not isinstance(self.threshold, (int, float)) or isinstance(self.threshold, bool):
            raise UnofluxError(f"threshold {self.threshold!r} must be a number or null (the backend's default)")
        if self.top_k is not None and (
            not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 1
        ):
            raise UnofluxError(
                f"top_k {self.top_k!r} must be a positive integer (pairs to keep) or null (the threshold)"
            )
        self._check_vlm()
        self._check_multi()

    def _check_multi(self) -> None:
        if not isinstance(self.multi_count, int) or isinstance(self.multi_count, bool) or self.multi_count < 0:
            raise UnofluxError(f"multi_count {self.multi_count!r} must be a non-negative integer (0: no multi-subject)")
        if (
            not isinstance(self.multi_sizes, list)
            or not self.multi_sizes
            or not all(isinstance(n, int) and not isinstance(n, bool) and 2 <= n <= 3 for n in self.multi_sizes)
        ):
            raise UnofluxError(f"multi_sizes {self.multi_sizes!r} must be a non-empty list of 2s and 3s (subjects)")
        if not self.multi_count:
            return
        if self.locator not in MULTI_LOCATORS:
            raise UnofluxError(
                f"locator {self.locator!r} cannot find each subject of a multi-subject target; use one of: "
                + ", ".join(MULTI_LOCATORS)
            )
        if not self.world and len(self.subjects) < max(self.multi_sizes):
            raise UnofluxError(
                f"multi_sizes {self.multi_sizes!r} needs at least {max(self.multi_sizes)} subjects, got "
                f"{len(self.subjects)}"
            )
        if self.stage1_model is not None and not Path(self.stage1_model).is_dir():
            raise UnofluxError(f"stage1_model {self.stage1_model!r} must be a model folder (or null: model's)")
        if self.stage1_lora is not None and not Path(self.stage1_lora).is_file():
            raise UnofluxError(f"stage1_lora {self.stage1_lora!r} must be a LoRA file (or null: the model's own)")

    def _check_vlm(self) -> None:
        if self.vlm is None and self.world:
            self.vlm = "world"
        if self.vlm is not None and self.vlm not in VLM_BACKENDS:
            raise UnofluxError(f"vlm {self.vlm!r} is not one of: {', '.join(VLM_BACKENDS)} (or null)")
        if self.vlm == "world" and not self.world:
            raise UnofluxError("vlm world needs the world's vocabulary (no subjects/scenes); use vlm local or http")
        if self.vlm == "local" and not (
            isinstance(self.vlm_model, str) and self.vlm_model and Path(self.vlm_model, "config.json").is_file()
        ):
            raise UnofluxError(
                f"vlm_model {self.vlm_model!r} must be a transformers VLM folder with config.json for vlm local"
            )
        if self.vlm == "http":
            if not (isinstance(self.vlm_url, str) and self.vlm_url.startswith(("http://", "https://"))):
                raise UnofluxError(
                    f"vlm_url {self.vlm_url!r} must be an http:// or https:// URL (e.g. http://localhost:8000/v1) "
                    "for vlm http"
                )
            if not isinstance(self.vlm_model, str) or not self.vlm_model:
                raise UnofluxError(f"vlm_model {self.vlm_model!r} must name the served model for vlm http")
        if self.vlm_api_key_env is not None and not (
            isinstance(self.vlm_api_key_env, str) and self.vlm_api_key_env.isidentifier()
        ):
            raise UnofluxError(
                f"vlm_api_key_env {self.vlm_api_key_env!r} must be an environment variable's name or null (no key)"
            )
        if self.vlm_batch_size is not None and (
            not isinstance(self.vlm_batch_size, int) or isinstance(self.vlm_batch_size, bool) or self.vlm_batch_size < 1
        ):
            raise UnofluxError(
                f"vlm_batch_size {self.vlm_batch_size!r} must be a positive integer or null (batch_size)"
            )
        for name, low in (("vlm_attempts", 1), ("vlm_max_new_tokens", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise UnofluxError(f"{name} {value!r} must be an integer of at least {low}")
        for name, positive in (("vlm_timeout", True), ("vlm_backoff", False)):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0 or (positive and not value):
                raise UnofluxError(f"{name} {value!r} must be a {'positive' if positive else 'non-negative'} number")
        if self.vlm_threshold is None and self.vlm is not None:
            self.vlm_threshold = DEFAULT_VLM_THRESHOLDS[self.vlm]
        if self.vlm_threshold is not None and (
            not isinstance(self.vlm_threshold, (int, float))
            or isinstance(self.vlm_threshold, bool)
            or not 0 <= self.vlm_threshold <= 4
        ):
            raise UnofluxError(
                f"vlm_threshold {self.vlm_threshold!r} must be a number in [0, 4] or null (the backend's)"
            )

    @property
    def world(self) -> bool:
        """True when prompts come from the embedded world (exact specs known)."""
        return self.subjects is None

    # ------------------------------------------------------------------------------------------ YAML
    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SynthConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UnofluxError(f"unknown setting {unknown[0]!r} in the synth config; known: {', '.join(sorted(known))}")
        try:
            return cls(**values)
        except TypeError as err:  # a missing required field
            raise UnofluxError(f"synth config: {err}") from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> SynthConfig:
        return cls.from_dict(read_settings_file(path))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def replace(self, **changes: Any) -> SynthConfig:
        return dataclasses.replace(self, **changes)


def template_fields(template: str) -> set[str]:
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError:  # an unmatched brace
        return set()
