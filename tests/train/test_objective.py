"""The training objective on its own: built from the tiny pipeline without accelerate, it computes exactly the loss
of the Trainer's step."""

from __future__ import annotations

import pytest

from unoflux import flow
from unoflux.methods import get_method
from unoflux.testing import tiny_pipeline
from unoflux.train.objective import FlowObjective
from unoflux.train.trainer import Trainer, step_generator

CASES = {  # name: (dataset fixture, config changes); full mode: the weights are the tiny pipeline's own
    "text-to-image": ("world_data", dict(text_dropout=0.5)),
    "references, look-free captions, subject-weighted": (
        "pairs_data",
        dict(
            batch_size=1,
            reference_long_side_single=32,
            text_dropout=0.5,
            look_free_captions=0.5,
            subject_loss_weight=2.0,
        ),
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_the_objective_without_accelerate_gives_the_loss_of_the_trainers_step(request, tiny_config, name):
    fixture, changes = CASES[name]
    trainer = Trainer(tiny_config(data=[str(request.getfixturevalue(fixture))], mode="full", **changes), [])
    batch = next(iter(trainer.data))
    pipe = tiny_pipeline(seed=0)  # what the trainer loaded (tests/conftest.py's diffusers_folder)
    config = trainer.config
    objective = FlowObjective(
        pipe,
        pipe.transformer,
        pipe.transformer,
        get_method(config.method),
        config,
        flow.ShiftConfig.from_scheduler_config(pipe.scheduler.config),
        "cpu",
        references=trainer.references,
    )
    loss = objective.loss(batch, step_generator(config.seed, 0, 0, 0)).item()
    assert loss == trainer.train_step(iter([batch]))  # the first update draws from step_generator(seed, 0, 0, 0)
