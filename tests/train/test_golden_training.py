"""Golden numbers of training: the loss and the gradient norm (before clipping) of the first updates of tiny runs,
stored as numbers, so that a refactor of the trainer is proven to compute the same thing. Float rounding from a
reordered but equal computation moves them by ~1e-6 relative; a change of behaviour (another t, noise, id or
caption) by far more. After a change that is meant to alter training (say so in the commit), each failure message
shows the new numbers to paste."""

from __future__ import annotations

import pytest

RELATIVE = 1e-5
STEPS = 3

CASES = {  # name: (dataset fixture, config changes)
    "text-to-image LoRA": ("world_data", dict()),
    "text-to-image full": ("world_data", dict(mode="full", learning_rate=1e-4)),
    "stage I LoRA, references": ("pairs_data", dict(max_grad_norm=0.5)),
    "stage II LoRA, cached, gradient accumulation": (
        "multi_pairs_data",
        dict(cache_encodings=True, gradient_accumulation=2),
    ),
}

GOLDEN = {  # name: [(loss, grad norm) per update]
    "text-to-image LoRA": [
        (1.5023136138916016, 0.2922464609146118),
        (1.422018051147461, 0.41111263632774353),
        (1.508393406867981, 0.4732840061187744),
    ],
    "text-to-image full": [
        (1.5023136138916016, 1.2749971151351929),
        (1.4195764064788818, 1.4421786069869995),
        (1.5039944648742676, 1.378974437713623),
    ],
    "stage I LoRA, references": [
        (1.5154238939285278, 0.33996933698654175),
        (1.3813894987106323, 0.464656800031662),
        (1.474315881729126, 0.48427262902259827),
    ],
    "stage II LoRA, cached, gradient accumulation": [
        (1.461937665939331, 0.22187137603759766),
        (1.3748226165771484, 0.2862119972705841),
        (1.3637974262237549, 0.29952144622802734),
    ],
}


def run_case(make_config, data, changes) -> list[tuple[float, float]]:
    from unoflux.train.trainer import Trainer

    trainer = Trainer(make_config(data=[str(data)], max_steps=STEPS, **changes), [])
    batches = iter(trainer.data)
    return [(trainer.train_step(batches), trainer.grad_norm) for _ in range(STEPS)]


@pytest.mark.parametrize("name", list(CASES))
def test_training_losses_and_gradient_norms_match_their_golden_numbers(request, tiny_config, name):
    fixture, changes = CASES[name]
    got = run_case(tiny_config, request.getfixturevalue(fixture), changes)
    expected = GOLDEN.get(name, [])
    assert [v for pair in got for v in pair] == pytest.approx([v for pair in expected for v in pair], rel=RELATIVE), got
