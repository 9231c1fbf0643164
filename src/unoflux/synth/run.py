"""Run synthesis stages in order from one config, the config copied beside the manifests first."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import yaml

from ..errors import UnofluxError
from ..images import atomic_write
from .config import STAGES, SynthConfig
from .filter import run_filter_similarity
from .generate import Share, run_generate
from .multi import MULTI, MULTI_TARGETS, run_multi_subject
from .prompts import run_prompts
from .report import run_report
from .split import run_split
from .vlm import VLM, run_filter_vlm

CONFIG = "config.yaml"
# Settings that only a later stage reads may change until the manifest they shape exists (the VLM's until
# vlm.jsonl, the multi-subject targets' until multi_targets.jsonl, the Stage-I model's until multi.jsonl): one
# folder can take its single-subject pairs to training and come back for multi-subject ones with a Stage-I model.
GUARDED = {
    **{f.name: VLM for f in fields(SynthConfig) if f.name.startswith("vlm")},
    "multi_count": MULTI_TARGETS,
    "multi_sizes": MULTI_TARGETS,
    "stage1_model": MULTI,
    "stage1_lora": MULTI,
}
RUNNERS = {
    "prompts": run_prompts,
    "generate": run_generate,
    "split": run_split,
    "filter-similarity": run_filter_similarity,
    "filter-vlm": run_filter_vlm,
    "multi-subject": run_multi_subject,
    "report": run_report,
}


def record_config(config: SynthConfig) -> Path:
    """Copy ``config`` to ``output_dir/config.yaml``; an output folder made with other settings is refused, since
    resuming there would mix records made two ways. The VLM's settings may change while ``vlm.jsonl`` does not
    exist (delete it to score the same pairs with another VLM), and so may the multi-subject settings (see
    :data:`GUARDED`); a file written before some settings existed counts as having their defaults; the file is then
    written again with the settings now."""
    out = Path(config.output_dir)
    path, now = out / CONFIG, config.to_dict()
    if path.is_file():
        before = yaml.safe_load(path.read_text()) or {}
        added = set(now) - set(before)
        if added and set(before) <= set(now):  # from before these settings existed: it ran with their defaults
            before = SynthConfig.from_dict(before).to_dict()
        changed = sorted(k for k in set(before) | set(now) if k != "output_dir" and before.get(k) != now.get(k))
        refused = [k for k in changed if k not in GUARDED or (out / GUARDED[k]).is_file()]
        if refused:
            name = refused[0]
            raise UnofluxError(
                f"{str(path)!r} was written with {name} = {before.get(name)!r}, not {now.get(name)!r}; use a new "
                "output_dir, or the settings it was made with"
                + (f" (or delete {GUARDED[name]} to redo its stage with the new settings)" if name in GUARDED else "")
            )
        if not (added or changed):
            return path
    text = yaml.safe_dump(now, sort_keys=False)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def run_synth(
    config: SynthConfig, stages: list[str] | None = None, progress: bool = True, share: Share | None = None
) -> list[Path]:
    """Run ``stages`` (default: all, in pipeline order; filter-vlm only with a ``vlm`` backend) and return what each
    wrote.

    With several processes (``share``) every process generates its share; the other stages are light and run on
    the main process alone, the others waiting at a barrier after each stage."""
    share = share or Share()
    if stages is None:  # no VLM filter without a vlm backend (a user vocabulary), no multi-subject without targets
        skipped = {"filter-vlm"} if config.vlm is None else set()
        skipped |= set() if config.multi_count else {"multi-subject"}
        stages = [s for s in STAGES if s not in skipped]
    for stage in stages:
        if stage not in RUNNERS:
            raise UnofluxError(f"stage {stage!r} is not one of: {', '.join(STAGES)}")
    if share.index == 0:
        record_config(config)
    share.wait()
    written = []
    for stage in [s for s in STAGES if s in stages]:
        if stage == "generate":
            written.append(run_generate(config, progress=progress, share=share))
        elif share.index == 0:
            written.append(RUNNERS[stage](config, progress=progress))
        share.wait()
    return written if share.index == 0 else []
