"""How large are DreamO's routing constraint and placeholder loss against the flow-matching loss, at the world's size?
(issue 22: their weights are calibrated from this; docs/training.md, "DreamO", "Calibration".)

For a few batches of a training config (``method: dreamo``), with the trainer's own data, draws and objective, it
measures each term's value and the norm of its gradient on the trained parameters (LoRA, embeddings, placeholder
rows): the flow loss alone (both DreamO weights ~0), then with each term at weight 1; a term's gradient is the
difference. The routing constraint is a sum over the target's tokens of squared raw attention logits (Eq. 3), so it
grows with the token count and the logits' scale: this is why its weight depends on the resolution.

    OMP_NUM_THREADS=2 .venv/bin/python scripts/probes/dreamo_loss_scales.py configs/dreamo_world_stage2.yaml \\
        --batches 4 [--init-lora src/unoflux/embedded/uno-world/dit_lora.safetensors]
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from unoflux.train import TrainConfig
from unoflux.train.trainer import Trainer, step_generator

TINY = 1e-12  # a weight that keeps a term computed (and logged) while its gradient vanishes next to the flow loss's


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="a method: dreamo training config")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--init-lora", help="start from this LoRA (e.g. the shipped UNO LoRA: a trained state)")
    parser.add_argument("--output-dir", default="data/probe/loss-scales")
    args = parser.parse_args()
    config = TrainConfig.from_yaml(args.config).replace(
        output_dir=args.output_dir, init_lora=args.init_lora, validate_every=0
    )
    config.dreamo.routing_weight, config.dreamo.holder_weight = 1.0, 1.0  # both computed
    trainer = Trainer(config, command=[])
    objective, settings = trainer.objective, trainer.config.dreamo
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    batches = iter(trainer.data)
    rows = []
    for step in range(args.batches):
        batch = next(batches)

        def gradient(route: float, hold: float, step=step, batch=batch):
            settings.routing_weight, settings.holder_weight = route, hold
            gen = step_generator(config.seed, step, 0, 0)
            if trainer.cache is not None:
                loss = objective.cached_loss(trainer.cache, trainer.samples, batch, gen)
            else:
                loss = objective.loss(batch, gen)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            flat = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)])
            return loss.item(), flat, objective.last_routing, objective.last_holder

        flow, g_flow, route, hold = gradient(TINY, TINY)
        _, g_route, _, _ = gradient(1.0, TINY)
        _, g_hold, _, _ = gradient(TINY, 1.0)
        row = {
            "flow_loss": flow,
            "routing_loss": None if route is None else route.item(),
            "holder_loss": None if hold is None else hold.item(),
            "flow_grad_norm": g_flow.norm().item(),
            "routing_grad_norm": (g_route - g_flow).norm().item(),
            "holder_grad_norm": (g_hold - g_flow).norm().item(),
        }
        rows.append(row)
        print(json.dumps({"batch": step, **{k: v if v is None else round(v, 6) for k, v in row.items()}}))
    mean = {k: statistics.fmean(r[k] for r in rows if r[k] is not None) for k in rows[0] if rows[0][k] is not None}
    mean["routing_loss / flow_loss"] = mean["routing_loss"] / mean["flow_loss"]
    mean["routing_grad / flow_grad"] = mean["routing_grad_norm"] / mean["flow_grad_norm"]
    if "holder_loss" in mean:
        mean["holder_loss / flow_loss"] = mean["holder_loss"] / mean["flow_loss"]
        mean["holder_grad / flow_grad"] = mean["holder_grad_norm"] / mean["flow_grad_norm"]
    print(json.dumps({"mean": {k: round(v, 6) for k, v in mean.items()}}, indent=1))


if __name__ == "__main__":
    main()
