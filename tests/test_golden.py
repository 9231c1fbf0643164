"""Golden numbers: the tiny pipeline's output latents for fixed inputs, stored as numbers.

They pin behaviour through refactors: "the output changes" tests pass for any change, these only for the
same computation. Each case stores four fingerprints of its latents (their sum and three fixed random
projections, in float64). Float rounding from a reordered but equal computation moves them by ~1e-6 (another
CPU's kernels by ~4e-5); a change of behaviour (an id, a scale, an order of tokens) by > 1e-3. Regenerate (only after a change that is *meant* to
alter outputs, and say so in the commit): ``.venv/bin/python -m tests.test_golden``.
"""

from __future__ import annotations

import pytest
import torch

from .conftest import random_image

# absolute, on fingerprints of magnitude ~1-30. Another CPU (other SIMD kernels in MKL / oneDNN) moves every case by
# ~4e-5 (measured 2026-12-02: an AVX-512-FP16 Xeon against the numbers below), a change of behaviour by > 1e-3.
TOLERANCE = 2e-4
PROMPT = "a red cup on the beach"
COMMON = dict(width=48, height=32, num_inference_steps=3, seed=11)

CASES = {
    "text-to-image": dict(refs=0),
    "one reference": dict(refs=1),
    "two references, diagonal": dict(refs=2, position_mode="diagonal"),
    "two references, height": dict(refs=2, position_mode="height"),
    "two references, width": dict(refs=2, position_mode="width"),
    "two references, none": dict(refs=2, position_mode="none"),
    "true CFG, one reference": dict(refs=1, true_cfg_scale=3.0, negative_prompt="a blue dog"),
    "true CFG, text-to-image": dict(refs=0, true_cfg_scale=2.5),
    "stochastic, one reference": dict(refs=1, stochasticity=0.5),
    "two images, flux schedule": dict(refs=1, num_images_per_prompt=2, schedule="flux"),
    "fixed time shift, guidance 2": dict(refs=2, time_shift=3.0, guidance_scale=2.0),
}

GOLDEN = {
    "text-to-image": [-8.492636401206255, 6.70243802043071, -16.04997665303538, -1.176810638236513],
    "one reference": [-8.539723739027977, 6.663758998629113, -16.04395773747503, -1.2015335194763108],
    "two references, diagonal": [-8.571696005761623, 6.607797002807079, -16.045592653825505, -1.1773028935203718],
    "two references, height": [-8.549575496464968, 6.620943672606932, -16.053246499733945, -1.1258706271716785],
    "two references, width": [-8.559985507279634, 6.661202120229298, -16.040352503373605, -1.1935597059453635],
    "two references, none": [-8.545995526015759, 6.65750348707712, -16.046527318546218, -1.1581713062307255],
    "true CFG, one reference": [-7.237191716209054, 9.929075940016723, -12.28024457802612, -1.2028314492784156],
    "true CFG, text-to-image": [-4.600989978760481, 7.729768512428162, -17.84623114682074, 0.7624294869048339],
    "stochastic, one reference": [1.8515189662575722, -7.675334304347432, -16.055835465016465, 8.05993136996447],
    "two images, flux schedule": [-66.76213220693171, 9.889867627072618, 34.31626746784535, -0.6184521667108046],
    "fixed time shift, guidance 2": [-4.787770997732878, 6.244591131977108, -17.253241635989788, -0.7688905236550841],
}


def references(count: int) -> list:
    return [random_image(64, 48, seed=1), random_image(40, 72, seed=2)][:count]


def run_case(pipe, case: dict) -> torch.Tensor:
    kwargs = {k: v for k, v in case.items() if k != "refs"}
    return pipe(
        PROMPT, references(case["refs"]), reference_long_side=32, output_type="latent", **COMMON, **kwargs
    ).images


def fingerprint(latents: torch.Tensor) -> list[float]:
    """Sum and three fixed random projections of the latents, in float64."""
    x = latents.double().flatten()
    g = torch.Generator().manual_seed(0)
    projections = torch.randn(3, x.numel(), generator=g, dtype=torch.float64)
    return [x.sum().item(), *(projections @ x).tolist()]


@pytest.mark.parametrize("name", list(CASES))
def test_pipeline_latents_match_their_golden_numbers(tiny_pipe, name):
    got = fingerprint(run_case(tiny_pipe, CASES[name]))
    assert got == pytest.approx(GOLDEN[name], abs=TOLERANCE, rel=0), got


def test_golden_cases_differ_from_each_other():
    """The fingerprints can tell the cases apart: no two are within many tolerances of each other."""
    values = list(GOLDEN.values())
    for i, a in enumerate(values):
        for b in values[i + 1 :]:
            assert max(abs(x - y) for x, y in zip(a, b)) > 100 * TOLERANCE


if __name__ == "__main__":  # print the table to paste above
    from unoflux.testing import tiny_pipeline

    pipe = tiny_pipeline(seed=0)
    for name, case in CASES.items():
        print(f"    {name!r}: {fingerprint(run_case(pipe, case))},")
