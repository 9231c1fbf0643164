"""In-context pair synthesis (UNO's data pipeline, never released): two-panel prompts -> a text-to-image FLUX
pipeline -> (reference, target) pairs -> similarity filter, each stage a resumable JSONL manifest. See
docs/synthesis.md.

    from unoflux.synth import SynthConfig, run_synth

    run_synth(SynthConfig(output_dir="data/synth", count=64))  # the embedded world, every stage
"""

from .config import LOCATORS, SIMILARITY_BACKENDS, STAGES, SynthConfig
from .filter import run_filter_similarity, world_judgement
from .generate import run_generate
from .manifest import Manifest, read_manifest
from .prompts import prompt_record, run_prompts
from .report import run_report, threshold_table
from .run import record_config, run_synth
from .split import run_split, world_locator

__all__ = [
    "LOCATORS",
    "SIMILARITY_BACKENDS",
    "STAGES",
    "Manifest",
    "SynthConfig",
    "prompt_record",
    "read_manifest",
    "record_config",
    "run_filter_similarity",
    "run_generate",
    "run_prompts",
    "run_report",
    "run_split",
    "run_synth",
    "threshold_table",
    "world_judgement",
    "world_locator",
]
