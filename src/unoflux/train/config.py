"""Training configuration: documented dataclasses, validated on construction, read from and written to YAML.

A YAML file holds the fields of :class:`TrainConfig` at its top level, with ``lora``, ``ema``,
``validation`` and ``dreamo`` as nested mappings::

    model: models/tiny-flux          # a diffusers FLUX folder (model_index.json)
    data: [data/scenes]              # world dataset folders (manifest.jsonl)
    output_dir: runs/t2i
    max_steps: 1000
    mode: lora
    lora: {rank: 16, alpha: 16}
    buckets: [[512, 512], [384, 640], [640, 384]]

Training with references (UNO Stage I / II) reads paired data (world ``pairs`` / ``multi-pairs`` folders or
UNO's training JSON files) and is switched on automatically when the data holds references.

Unknown keys are an error (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ..errors import UnofluxError

# The torch-free copies (tests pin them to conditioning's and methods'): `unoflux` finds its subcommands by
# importing this package, and importing torch there would cost every command, even a failing one, seconds.
from ..options import METHOD_NAMES as METHODS
from ..options import POSITION_MODES

MODES = ("full", "lora")
MIXED_PRECISION = ("no", "bf16")
LR_SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine")
# Every attention projection and every output projection of FLUX's double and single blocks (UNO puts its
# LoRA on the fused qkv and proj of all blocks; diffusers splits qkv into to_q/k/v and add_{q,k,v}_proj).
DEFAULT_LORA_TARGETS = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "add_q_proj",
    "add_k_proj",
    "add_v_proj",
    "to_add_out",
    "proj_mlp",
    "proj_out",
)
# ``target_modules: uno``: exactly the layers UNO's XLabs LoRA adapts (fused qkv and proj of both streams of every
# double block; qkv and the output projection of every single block). A regex, because the suffix ``proj_out``
# would also match the model's final projection and ``proj_mlp`` has no place in the XLabs layout.
UNO_TARGETS = "uno"
UNO_LORA_PATTERN = (
    r"transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)"
    r"|single_transformer_blocks\.\d+\.(attn\.to_q|attn\.to_k|attn\.to_v|proj_out)"
)


@dataclass
class LoraSettings:
    """PEFT ``LoraConfig`` for ``mode: lora``. UNO uses rank 512 with alpha = rank (scale 1).

    ``target_modules`` is a list of module-name suffixes (PEFT's matching) or ``uno`` (UNO's layers exactly,
    what the XLabs ``dit_lora.safetensors`` layout can hold). ``share_qkv_down`` ties the down projections
    (``lora_A``) of q, k and v of each attention, which is UNO's parameterisation (one fused qkv LoRA): the
    XLabs export then keeps the rank; without it the export is exact but q/k/v get rank ``3 x rank``.
    """

    rank: int = 16
    alpha: float | None = None  # None = rank, i.e. scale alpha / rank = 1 as in UNO
    target_modules: list[str] | str = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))
    dropout: float = 0.0
    share_qkv_down: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or self.rank < 1:
            raise UnofluxError(f"lora.rank {self.rank!r} must be a positive integer")
        if self.alpha is not None and not (isinstance(self.alpha, (int, float)) and self.alpha > 0):
            raise UnofluxError(f"lora.alpha {self.alpha!r} must be a positive number or null (= rank)")
        if isinstance(self.target_modules, str):
            if self.target_modules != UNO_TARGETS:
                raise UnofluxError(
                    f"lora.target_modules {self.target_modules!r} must be a list of module names or {UNO_TARGETS!r}"
                )
        elif not self.target_modules or not all(isinstance(m, str) and m for m in self.target_modules):
            raise UnofluxError(f"lora.target_modules {self.target_modules!r} must be a non-empty list of module names")
        else:
            self.target_modules = list(self.target_modules)
        if not 0 <= self.dropout < 1:
            raise UnofluxError(f"lora.dropout {self.dropout!r} must be in [0, 1)")
        if not isinstance(self.share_qkv_down, bool):
            raise UnofluxError(f"lora.share_qkv_down {self.share_qkv_down!r} must be true or false")

    @property
    def peft_targets(self) -> list[str] | str:
        """What PEFT's ``LoraConfig.target_modules`` gets (a regex string is matched against full names)."""
        return UNO_LORA_PATTERN if self.target_modules == UNO_TARGETS else self.target_modules


@dataclass
class EmaSettings:
    """Exponential moving average of the trained weights (diffusers ``EMAModel``); used for the final save."""

    enabled: bool = False
    decay: float = 0.9999

    def __post_init__(self) -> None:
        if not 0 < self.decay < 1:
            raise UnofluxError(f"ema.decay {self.decay!r} must be in (0, 1)")


@dataclass
class ValidationSettings:
    """Images generated every ``validate_every`` steps with the same seeds, saved as one PNG grid.

    ``references`` (optional) gives each prompt its reference image paths (one list per prompt).
    """

    prompts: list[str] = field(default_factory=list)
    references: list[list[str]] = field(default_factory=list)
    width: int = 256
    height: int = 256
    steps: int = 20
    seed: int = 0
    guidance: float | None = None  # None: the model's default (unoflux.json; 4 for FLUX.1-dev)
    true_cfg: float | None = None  # None: the model's default (off for FLUX.1-dev)

    def __post_init__(self) -> None:
        if not all(isinstance(p, str) and p.strip() for p in self.prompts):
            raise UnofluxError(f"validation.prompts {self.prompts!r} must be non-empty strings")
        for name in ("width", "height"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 16 or value % 16:
                raise UnofluxError(f"validation.{name} {value!r} must be a multiple of 16, at least 16")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise UnofluxError(f"validation.steps {self.steps!r} must be a positive integer")
        self.prompts = list(self.prompts)
        if self.references:
            ok = len(self.references) == len(self.prompts) and all(
                isinstance(r, (list, tuple)) and all(isinstance(p, str) and p for p in r) for r in self.references
            )
            if not ok:
                raise UnofluxError("validation.references must hold one list of image paths per validation prompt")
            self.references = [list(r) for r in self.references]


@dataclass
class DreamOSettings:
    """``method: dreamo`` (train/dreamo.py): the task and index embeddings always train beside the LoRA;
    ``train_placeholders`` also trains T5's input rows of the placeholders ``[ref#1]`` .. ``[ref#9]``, ``[res]``
    (the captions name the references with them). ``routing_weight`` > 0 adds DreamO's routing constraint
    (train/routing.py) from the double blocks ``routing_blocks`` (the paper's 2, 8, 14), on samples with one
    subject box per reference (world records). ``holder_weight`` > 0 adds its placeholder loss (Eq. 4) from the
    same blocks, on samples whose captions name every reference with its ``[ref#i]``."""

    train_placeholders: bool = True
    routing_weight: float = 0.0  # lambda_route; 0 = off
    routing_blocks: list[int] = field(default_factory=lambda: [2, 8, 14])
    holder_weight: float = 0.0  # lambda_holder; 0 = off

    def __post_init__(self) -> None:
        if not isinstance(self.train_placeholders, bool):
            raise UnofluxError(f"dreamo.train_placeholders {self.train_placeholders!r} must be true or false")
        for name, what in (("routing_weight", "routing constraint"), ("holder_weight", "placeholder loss")):
            weight = getattr(self, name)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
                raise UnofluxError(f"dreamo.{name} {weight!r} must be a number >= 0 (0 = no {what})")
        blocks = self.routing_blocks
        ok = isinstance(blocks, (list, tuple)) and blocks and len(set(blocks)) == len(blocks)
        if not ok or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 0 for b in blocks):
            raise UnofluxError(
                f"dreamo.routing_blocks {blocks!r} must be a non-empty list of distinct double-block indices (>= 0)"
            )
        self.routing_blocks = list(blocks)


def read_settings_file(path: str | Path) -> dict[str, Any]:
    """A YAML config file's mapping of settings (training's and ``unoflux synth``'s), each misfit one sentence."""
    path = Path(path)
    if not path.is_file():
        raise UnofluxError(f"config file {str(path)!r} does not exist")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UnofluxError(f"config file {str(path)!r} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise UnofluxError(f"config file {str(path)!r} must hold a mapping of settings")
    return values


def apply_overrides(values: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``values`` (a config file's mapping) with each ``KEY=VALUE`` of ``overrides`` set: ``KEY`` a setting or a
    dotted path into a nested one (``dreamo.routing_weight``), ``VALUE`` read as YAML (``0``, ``null``, ``[0, 1]``).
    Validation is the config's own, so a misspelt key fails as it would in the file."""
    values = {k: dict(v) if isinstance(v, dict) else v for k, v in values.items()}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UnofluxError(f"--set {item!r} must be KEY=VALUE, e.g. dreamo.routing_weight=0")
        *parents, leaf = key.strip().split(".")
        node = values
        for parent in parents:
            node = node.setdefault(parent, {})
            if not isinstance(node, dict):
                raise UnofluxError(f"--set {item!r}: {parent!r} is not a nested mapping of settings")
        try:
            node[leaf] = yaml.safe_load(text)
        except yaml.YAMLError:
            raise UnofluxError(f"--set {item!r}: the value {text!r} is not valid YAML") from None
    return values


_NESTED = {"lora": LoraSettings, "ema": EmaSettings, "validation": ValidationSettings, "dreamo": DreamOSettings}


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved as ``config.yaml`` beside its outputs.

    Steps count optimizer updates; one update sees ``batch_size * gradient_accumulation * processes``
    samples. ``buckets`` are (height, width) pairs in pixels (multiples of 16); each image goes to the
    bucket nearest its aspect ratio and each batch holds one bucket. Without ``buckets`` every image is
    trained at ``resolution x resolution``.

    With references (UNO), each sample's references are resized to ``reference_long_side_single`` (one
    reference) or ``reference_long_side_multi`` (several) as the pipeline does, and a batch holds samples
    that share the target bucket and the size of every reference.
    """

    data: list[str]  # world dataset folders holding manifest.jsonl, or UNO training JSON files (paired data)
    output_dir: str
    model: str | None = None  # diffusers FLUX folder; None = the embedded model
    seed: int = 0
    max_steps: int = 1000
    batch_size: int = 1  # per process, per micro-step
    gradient_accumulation: int = 1
    learning_rate: float = 1e-5  # UNO
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    weight_decay: float = 0.01
    lr_schedule: str = "constant_with_warmup"
    warmup_steps: int = 0
    # The schedule's horizon when it is not max_steps: a run stopped early along a longer decay is then one
    # command that reproduces it.
    lr_schedule_steps: int | None = None
    # A wall-clock budget (minutes, counted from the trainer's start: loading and caching included). When it
    # runs out, the run ends there and final/config.yaml says max_steps = the step reached (and
    # lr_schedule_steps = the horizon it was on), so that file reproduces the run. None = no budget.
    max_minutes: float | None = None
    max_grad_norm: float | None = 1.0  # None = no clipping
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    text_dropout: float = 0.1  # probability of training on the empty prompt (UNO: 0.1)
    # With references: probability of training on a world record's caption without looks ("a small figure on
    # the left in the snow"), so the subject's look must be read from its reference (0 = UNO's captions only).
    look_free_captions: float = 0.0
    # With references: how much more a target token inside a world record's subject box weighs in the loss than
    # a background token (the weights are scaled to average 1 per sample), so that the subjects' details, a small
    # part of a scene, get more of the gradient. 1 = the plain MSE of UNO; records without boxes (UNO's JSON)
    # always train unweighted.
    subject_loss_weight: float = 1.0
    # With references: the share of reference tokens each step leaves out (a fresh random subset per micro-batch;
    # the kept tokens keep their positions). DreamO's stage 3 reconstructs images from themselves with 0.95
    # dropped, so that the model cannot copy its reference. 0 = every token (UNO; DreamO's stages 1 and 2).
    reference_token_drop: float = 0.0
    max_sequence_length: int | None = None  # T5 tokens; None = the model's own (as the pipeline pads)
    mode: str = "lora"
    # Full mode: train the T5 encoder (text_encoder_2, the sequence the joint attention reads) with the transformer.
    # The world's frozen random encoders bind shape words to the wrong subject (scripts/probes/binding_probe.py,
    # docs/model.md); CLIP's pooled vector stays frozen. Run without dropout, so resume stays exact.
    train_text_encoder: bool = False
    lora: LoraSettings = field(default_factory=LoraSettings)
    ema: EmaSettings = field(default_factory=EmaSettings)
    resolution: int = 512
    buckets: list[tuple[int, int]] | None = None
    num_workers: int = 0  # DataLoader worker processes per training process
    # Encode every image, reference and caption once before training and keep the results in device memory
    # (train/cache.py). Exact (the VAE's latent mode and the text encoders are frozen) and much faster for small
    # images; memory grows with the dataset (28000 world images at 64 px: 1 GB), so FLUX.1-dev scale datasets
    # leave it off.
    cache_encodings: bool = False
    checkpoint_every: int = 500  # 0 = only the final save
    keep_checkpoints: int | None = None  # None = keep all
    validate_every: int = 0  # 0 = never
    validation: ValidationSettings = field(default_factory=ValidationSettings)
    dreamo: DreamOSettings = field(default_factory=DreamOSettings)  # used with method: dreamo
    log_every: int = 1
    resume: str | None = None  # "latest" or a checkpoint folder
    # ---- training with references (UNO Stage I / II)
    references: bool | None = None  # None = when the data holds references (pairs, multi-pairs, UNO JSON)
    method: str = "uno"  # how references become conditioning (unoflux.methods), as at inference
    position_mode: str = "diagonal"  # UnoPE: diagonal | height | width | none (the paper's ablation)
    reference_long_side_single: int = 512  # UNO: 512 with one reference
    reference_long_side_multi: int = 320  # UNO: 320 with several
    init_lora: str | None = None  # a LoRA file (or a folder holding one) to start from: Stage II from Stage I

    def __post_init__(self) -> None:
        for name, cls in _NESTED.items():
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, _build(cls, value, prefix=f"{name}."))
            elif not isinstance(value, cls):
                raise UnofluxError(f"{name} must be a mapping of {cls.__name__} fields, got {value!r}")
        if isinstance(self.data, str):
            self.data = [self.data]
        if not self.data or not all(isinstance(d, str) and d for d in self.data):
            raise UnofluxError(f"data {self.data!r} must name at least one dataset folder")
        self.data = list(self.data)
        if not isinstance(self.output_dir, str) or not self.output_dir:
            raise UnofluxError(f"output_dir {self.output_dir!r} must be a folder path")
        positive = ("max_steps", "batch_size", "gradient_accumulation", "resolution", "log_every")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UnofluxError(f"{name} {value!r} must be a positive integer")
        for name in ("warmup_steps", "checkpoint_every", "validate_every", "seed", "num_workers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise UnofluxError(f"{name} {value!r} must be a non-negative integer")
        if self.lr_schedule_steps is not None and (
            not isinstance(self.lr_schedule_steps, int) or self.lr_schedule_steps < self.max_steps
        ):
            raise UnofluxError(
                f"lr_schedule_steps {self.lr_schedule_steps!r} must be an integer >= max_steps ({self.max_steps})"
            )
        if self.max_minutes is not None and (
            isinstance(self.max_minutes, bool)
            or not isinstance(self.max_minutes, (int, float))
            or self.max_minutes <= 0
        ):
            raise UnofluxError(f"max_minutes {self.max_minutes!r} must be a positive number of minutes or null")
        if self.keep_checkpoints is not None and (
            not isinstance(self.keep_checkpoints, int) or self.keep_checkpoints < 1
        ):
            raise UnofluxError(f"keep_checkpoints {self.keep_checkpoints!r} must be a positive integer or null")
        if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0):
            raise UnofluxError(f"learning_rate {self.learning_rate!r} must be a positive number")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise UnofluxError(f"{name} {getattr(self, name)!r} must be in [0, 1)")
        if self.weight_decay < 0 or self.adam_epsilon <= 0:
            raise UnofluxError("weight_decay must be >= 0 and adam_epsilon > 0")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise UnofluxError(f"max_grad_norm {self.max_grad_norm!r} must be positive or null (no clipping)")
        if self.lr_schedule not in LR_SCHEDULES:
            raise UnofluxError(f"lr_schedule {self.lr_schedule!r} is not one of: {', '.join(LR_SCHEDULES)}")
        if self.mixed_precision is False:  # YAML reads a bare `no` as false
            self.mixed_precision = "no"
        if self.mixed_precision not in MIXED_PRECISION:
            raise UnofluxError(f"mixed_precision {self.mixed_precision!r} is not one of: {', '.join(MIXED_PRECISION)}")
        if self.mode not in MODES:
            raise UnofluxError(f"mode {self.mode!r} is not one of: {', '.join(MODES)}")
        if self.train_text_encoder not in (True, False):
            raise UnofluxError(f"train_text_encoder {self.train_text_encoder!r} must be true or false")
        if self.train_text_encoder and self.mode != "full":
            raise UnofluxError("train_text_encoder needs mode: full (a LoRA trains the transformer only)")
        if not 0 <= self.text_dropout <= 1:
            raise UnofluxError(f"text_dropout {self.text_dropout!r} must be a probability in [0, 1]")
        if not 0 <= self.look_free_captions <= 1:
            raise UnofluxError(f"look_free_captions {self.look_free_captions!r} must be a probability in [0, 1]")
        if not (isinstance(self.subject_loss_weight, (int, float)) and self.subject_loss_weight >= 1):
            raise UnofluxError(
                f"subject_loss_weight {self.subject_loss_weight!r} must be a number >= 1 (1 = unweighted)"
            )
        drop = self.reference_token_drop
        if isinstance(drop, bool) or not isinstance(drop, (int, float)) or not 0 <= drop < 1:
            raise UnofluxError(f"reference_token_drop {drop!r} must be a share in [0, 1) (0 = keep every token)")
        if self.resolution % 16:
            raise UnofluxError(f"resolution {self.resolution!r} must be a multiple of 16")
        if self.buckets is not None:
            buckets = []
            for b in self.buckets:
                ok = (
                    isinstance(b, (list, tuple))
                    and len(b) == 2
                    and all(isinstance(s, int) and s >= 16 and s % 16 == 0 for s in b)
                )
                if not ok:
                    raise UnofluxError(f"bucket {b!r} must be [height, width] in pixels, multiples of 16")
                buckets.append((int(b[0]), int(b[1])))
            if not buckets:
                raise UnofluxError("buckets is empty; give at least one [height, width] or leave it unset")
            self.buckets = buckets
        if self.validate_every and not self.validation.prompts:
            raise UnofluxError("validate_every is set but validation.prompts is empty; add prompts or set it to 0")
        if self.resume not in (None, "latest") and not Path(self.resume).is_dir():
            raise UnofluxError(f"resume {self.resume!r} must be 'latest' or an existing checkpoint folder")
        for name in ("gradient_checkpointing", "cache_encodings"):
            if not isinstance(getattr(self, name), bool):
                raise UnofluxError(f"{name} {getattr(self, name)!r} must be true or false")
        if self.references not in (None, True, False):
            raise UnofluxError(f"references {self.references!r} must be true, false or null (= from the data)")
        if self.method not in METHODS:
            raise UnofluxError(f"method {self.method!r} is not one of: {', '.join(METHODS)}")
        if self.position_mode not in POSITION_MODES:
            raise UnofluxError(f"position_mode {self.position_mode!r} is not one of: {', '.join(POSITION_MODES)}")
        for name in ("reference_long_side_single", "reference_long_side_multi"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 16:
                raise UnofluxError(f"{name} {value!r} must be an integer of at least 16 (pixels)")
        for name in ("routing_weight", "holder_weight"):
            if getattr(self.dreamo, name) and self.method != "dreamo":
                raise UnofluxError(f"dreamo.{name} needs method: dreamo")
            if getattr(self.dreamo, name) and self.reference_token_drop:  # both read every reference token
                raise UnofluxError(f"reference_token_drop cannot be used with dreamo.{name} > 0; set one to 0")
        if self.method == "dreamo":  # DreamO's file holds its LoRA in the XLabs layout: UNO's layers exactly
            if self.mode != "lora":
                raise UnofluxError("method dreamo trains a LoRA beside its embeddings; set mode: lora")
            if self.lora.target_modules != UNO_TARGETS:
                raise UnofluxError(
                    f"method dreamo needs lora.target_modules: {UNO_TARGETS} (DreamO's dreamo.safetensors has room "
                    f"for those layers only), not {self.lora.target_modules!r}"
                )
        if self.init_lora is not None:
            if self.mode != "lora":
                raise UnofluxError("init_lora needs mode: lora (it initialises the LoRA adapter)")
            if not Path(self.init_lora).exists():
                raise UnofluxError(f"init_lora {self.init_lora!r} does not exist")

    @property
    def bucket_sizes(self) -> list[tuple[int, int]]:
        """The (height, width) buckets in use."""
        return self.buckets or [(self.resolution, self.resolution)]

    def reference_long_side(self, num_references: int) -> int:
        """UNO's rule: one long side for a single reference, a smaller one for several."""
        return self.reference_long_side_single if num_references <= 1 else self.reference_long_side_multi

    # ------------------------------------------------------------------------------------------ YAML
    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        return _build(cls, values)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
        """The config in ``path``, with ``overrides`` (``KEY=VALUE``, :func:`apply_overrides`) applied first."""
        return cls.from_dict(apply_overrides(read_settings_file(path), overrides))

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        if values["buckets"] is not None:
            values["buckets"] = [list(b) for b in values["buckets"]]
        return values

    def to_yaml(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        tmp.replace(path)
        return path

    def replace(self, **changes: Any) -> TrainConfig:
        """A validated copy with ``changes`` applied (None values are ignored: "not given")."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def _build(cls, values: dict[str, Any], prefix: str = ""):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UnofluxError(
            f"unknown setting {(prefix + unknown[0])!r} in the training config; known: {', '.join(sorted(known))}"
        )
    try:
        return cls(**values)
    except TypeError as err:  # a missing required field
        raise UnofluxError(f"training config: {err}") from None
