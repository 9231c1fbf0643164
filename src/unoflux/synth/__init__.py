"""In-context pair synthesis (UNO's data pipeline, never released): two-panel prompts -> a text-to-image FLUX
pipeline -> (reference, target) pairs -> similarity filter -> VLM filter, each stage a resumable JSONL manifest. See
docs/synthesis.md.

    from unoflux.synth import SynthConfig, run_synth

    run_synth(SynthConfig(output_dir="data/synth", count=64))  # the embedded world, every stage
"""

from .config import LOCATORS, SIMILARITY_BACKENDS, STAGES, VLM_BACKENDS, SynthConfig
from .filter import run_filter_similarity, world_judgement
from .generate import run_generate
from .manifest import Manifest, read_manifest
from .prompts import prompt_record, run_prompts
from .report import run_report, threshold_table
from .run import record_config, run_synth
from .split import run_split, world_locator
from .vlm import PROMPT, ReplyError, parse_reply, run_filter_vlm, world_vlm_score

__all__ = [
    "LOCATORS",
    "SIMILARITY_BACKENDS",
    "PROMPT",
    "STAGES",
    "VLM_BACKENDS",
    "ReplyError",
    "Manifest",
    "SynthConfig",
    "prompt_record",
    "read_manifest",
    "record_config",
    "parse_reply",
    "run_filter_similarity",
    "run_filter_vlm",
    "run_generate",
    "run_prompts",
    "run_report",
    "run_split",
    "run_synth",
    "threshold_table",
    "world_judgement",
    "world_locator",
    "world_vlm_score",
]
