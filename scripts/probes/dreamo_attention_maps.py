"""Where does each reference's attention land? DreamO's response maps (arXiv 2504.16915 Eq. 2, what the routing
constraint trains: each reference's mean attention logit onto every target token) on held-out two-reference cases,
for several models side by side (issue 22: without and with the routing constraint).

Per case: the two reference shots and the held-out scene's subject masks (where each reference's subject should go:
red = reference 1, blue = reference 2); per model the generated image and each reference's map over it (averaged
over heads, the routing blocks and every step's conditional pass; scaled to its own range). Printed per model, over
the cases' references:

- ``own wins``: the map is higher, on average, over its own subject's region than over the other subject's;
- ``own - other``: that difference in units of the map's standard deviation over the target;
- ``routing loss``: Eq. 3 (what training minimised) against the held-out layout's masks.

The regions are the held-out scene's (the layout the caption asks for), not the generated image's.

    .venv/bin/python scripts/probes/dreamo_attention_maps.py uno=embedded off=RUNS/dreamo-off-stage2/final \\
        route10x=RUNS/dreamo-route10x-stage2/final --cases 20 --show 6 --out docs/images/dreamo_attention.png
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from unoflux.plots import BLUE, RED

CELL = 96  # px per picture in the figure


def response_maps_while(pipe, generate, n_target: int, n_references: int, blocks: list[int]):
    """``generate()``'s image and each reference's response map (n_references, n_target), averaged over the chosen
    blocks and every conditional transformer pass (DreamO's negative pass sees no reference and is left out)."""
    import torch

    from unoflux.train.routing import RoutingCapture

    capture, maps = RoutingCapture(pipe.transformer, blocks), []

    def after_forward(module, args, output):
        length = capture.queries[blocks[0]].shape[1]
        if length == n_target:
            return
        # the world's reference shots are one size, so their tokens split evenly
        counts = [(length - n_target) // n_references] * n_references
        if sum(counts) != length - n_target:
            raise ValueError(f"{length - n_target} reference tokens do not split into {n_references} equal shots")
        maps.append(capture.response_maps(n_target, counts).detach().mean(dim=0)[0])

    handle = pipe.transformer.register_forward_hook(after_forward)
    try:
        with capture, torch.no_grad():
            image = generate()
    finally:
        handle.remove()
    return image, torch.stack(maps).mean(dim=0)


def subject_shares(pair, size: int, grid: tuple[int, int]):
    """Per target subject, its share of every target token (the trainer's routing target) in the held-out scene."""
    import torch

    from unoflux.train.data import mask_token_shares
    from unoflux.world.raster import rle_encode
    from unoflux.world.render import render_scene

    rendered = render_scene(pair.target, size)
    shares = []
    for subject in rendered.subjects:
        rle = rle_encode(subject.mask)
        shares.append(mask_token_shares((size, size, tuple(int(c) for c in rle["counts"])), grid))
    return rendered, torch.stack(shares)


def agreement(maps, shares) -> tuple[list[bool], list[float]]:
    """Per reference: is its map higher over its own subject than over the other's, and by how many of its
    standard deviations."""
    wins, margins = [], []
    for i in range(len(maps)):
        other = 1 - i
        own_mean = float((maps[i] * shares[i]).sum() / shares[i].sum())
        other_mean = float((maps[i] * shares[other]).sum() / shares[other].sum())
        wins.append(own_mean > other_mean)
        margins.append((own_mean - other_mean) / float(maps[i].std().clamp(min=1e-8)))
    return wins, margins


def heat(image: Image.Image, values, grid: tuple[int, int], colour: tuple[int, int, int]) -> Image.Image:
    """``values`` (one per target token) scaled to [0, 1] and laid over a grey copy of ``image`` in ``colour``."""
    v = np.asarray(values, dtype=np.float64).reshape(grid)
    v = (v - v.min()) / max(v.max() - v.min(), 1e-8)
    alpha = np.asarray(Image.fromarray((v * 255).astype(np.uint8)).resize((CELL, CELL), Image.BILINEAR)) / 255.0
    grey = np.asarray(image.convert("L").convert("RGB").resize((CELL, CELL)), dtype=np.float64)
    out = grey * (1 - 0.75 * alpha[..., None]) + np.array(colour) * 0.75 * alpha[..., None]
    return Image.fromarray(out.clip(0, 255).astype(np.uint8))


def masks_picture(rendered) -> Image.Image:
    colours = np.array([RED, BLUE], dtype=np.float64)
    grey = np.asarray(rendered.image.convert("L").convert("RGB"), dtype=np.float64) * 0.5 + 127
    for subject, colour in zip(rendered.subjects, colours):
        grey[subject.mask] = colour
    return Image.fromarray(grey.astype(np.uint8)).resize((CELL, CELL), Image.NEAREST)


def load(directory: str):
    import torch

    from unoflux.checkpoints import ModelPaths, load_pipeline
    from unoflux.checkpoints.specs import EMBEDDED_MODEL_DIR

    embedded = directory == "embedded"  # the embedded model with its shipped UNO LoRA
    pipe = load_pipeline(
        ModelPaths(model=str(EMBEDDED_MODEL_DIR), dreamo=None if embedded else directory),
        device="cpu",
        dtype=torch.float32,
        use_environment=False,
        model_lora=embedded,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", metavar="NAME=DIR", help="a DreamO run's final/, or 'embedded'")
    parser.add_argument("--cases", type=int, default=20, help="the first N held-out two-reference cases")
    parser.add_argument("--show", type=int, default=6, help="cases in the figure")
    parser.add_argument("--blocks", default="0,1,2", help="double blocks averaged (the configs' routing_blocks)")
    parser.add_argument("--size", type=int, default=128, help="output and reference-shot size")
    parser.add_argument("--ref-long-side", type=int, default=80, help="the models' multi-reference long side")
    parser.add_argument("--out", type=Path, default=Path("dreamo_attention.png"))
    args = parser.parse_args()
    models = dict(spec.split("=", 1) for spec in args.models)
    blocks = [int(b) for b in args.blocks.split(",")]
    import torch  # after parsing: --help stays fast

    from unoflux.evaluate.subject import SubjectEvalSettings, reference_shots
    from unoflux.evaluate.world import with_model_defaults
    from unoflux.images import save_png
    from unoflux.plots import font
    from unoflux.train.routing import routing_loss
    from unoflux.world.heldout import heldout_subject_pairs

    pairs = [p for p in heldout_subject_pairs() if len(p.references) == 2][: args.cases]
    grid = (args.size // 16, args.size // 16)
    n_target = grid[0] * grid[1]
    # per case, the same for every model: the reference shots, the held-out scene and its subjects' token shares
    inputs = [(reference_shots(pair, args.size), *subject_shares(pair, args.size, grid)) for pair in pairs]
    shown = {name: [] for name in models}  # per model, per shown case: (image, map 1, map 2)
    print(f"{len(pairs)} held-out two-reference cases, blocks {blocks}, {args.size} px")
    print(f"{'model':>10} {'own wins':>9} {'own - other (sd)':>17} {'routing loss':>13}")
    for name, directory in models.items():
        pipe = load(directory)
        pipe.reference_long_sides = (args.size, args.ref_long_side)
        options = with_model_defaults(SubjectEvalSettings(size=args.size), pipe).sampling_options()
        wins, margins, losses = [], [], []
        for k, (pair, (references, _, shares)) in enumerate(zip(pairs, inputs)):
            size = {"width": args.size, "height": args.size, "seed": pair.seed}
            generate = functools.partial(pipe, pair.caption, references, options, **size)
            output, maps = response_maps_while(pipe, generate, n_target, 2, blocks)
            case_wins, case_margins = agreement(maps, shares)
            wins += case_wins
            margins += case_margins
            losses.append(float(routing_loss(maps[None, None], shares[None], torch.ones(1))))
            if k < args.show:
                shown[name].append((output.images[0], maps[0].numpy(), maps[1].numpy()))
        print(f"{name:>10} {100 * np.mean(wins):>8.1f}% {np.mean(margins):>17.2f} {np.mean(losses):>13.1f}", flush=True)

    # the figure: per case a row of references, masks, then per model its image and its two maps
    cases = min(args.show, len(pairs))
    columns = 3 + 3 * len(models)
    label_h = 30
    figure = Image.new("RGB", (columns * CELL, label_h + cases * CELL), "white")
    draw = ImageDraw.Draw(figure)
    headers = ["reference 1", "reference 2", "target masks"]
    for name in models:
        headers += [f"{name}: image", f"{name}: ref 1", f"{name}: ref 2"]
    for c, header in enumerate(headers):
        draw.text((c * CELL + 3, 8), header, fill=(20, 20, 20), font=font(11))
    for row in range(cases):
        references, rendered, _ = inputs[row]
        y = label_h + row * CELL
        figure.paste(references[0].resize((CELL, CELL)), (0, y))
        figure.paste(references[1].resize((CELL, CELL)), (CELL, y))
        figure.paste(masks_picture(rendered), (2 * CELL, y))
        for m, name in enumerate(models):
            image, map_1, map_2 = shown[name][row]
            x = (3 + 3 * m) * CELL
            figure.paste(image.resize((CELL, CELL)), (x, y))
            figure.paste(heat(image, map_1, grid, RED), (x + CELL, y))
            figure.paste(heat(image, map_2, grid, BLUE), (x + 2 * CELL, y))
    save_png(figure, args.out, {"models": models, "cases": len(pairs), "blocks": blocks, "size": args.size})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
