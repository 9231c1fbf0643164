"""Training: flow matching on FLUX transformers (full or LoRA), on ``accelerate``: text-to-image, and with
reference images (UNO Stage I / II; see docs/training.md).

    from unoflux.train import TrainConfig, train
    train(TrainConfig.from_yaml("run.yaml"))
"""

from .config import DreamOSettings, EmaSettings, LoraSettings, TrainConfig, ValidationSettings

__all__ = ["TrainConfig", "LoraSettings", "EmaSettings", "ValidationSettings", "DreamOSettings", "train"]


def train(config, resume=None, command=None):
    """See :func:`unoflux.train.trainer.train` (imported lazily: it pulls in diffusers and accelerate)."""
    from .trainer import train as _train

    return _train(config, resume=resume, command=command)
