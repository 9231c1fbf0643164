"""Model specs and loading from the local files users have (BFL single files, diffusers folders, LoRAs)."""

from .loading import ModelPaths, load_pipeline
from .specs import SPECS, ModelSpec

__all__ = ["ModelPaths", "load_pipeline", "SPECS", "ModelSpec"]
