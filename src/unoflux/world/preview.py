"""A contact sheet of the world: reference shots, every background, multi-subject scenes, two-panels."""

from __future__ import annotations

import numpy as np
from PIL import Image

from .render import render_reference, render_scene, render_two_panel
from .sampling import distinct_looks, sample_scene, sample_two_panel
from .subjects import training_identity
from .vocab import BACKGROUNDS


def contact_sheet(size: int = 128, seed: int = 0, columns: int = 8) -> Image.Image:
    """Four rows of `columns` tiles: reference shots, one scene per background (cycling),
    multi-subject scenes, and two-panel images (each two tiles wide)."""
    rng = np.random.default_rng([seed, 21])
    identities = [training_identity(rng) for _ in range(columns)]
    references = [render_reference(i, size).image for i in identities]
    singles = [
        render_scene(sample_scene(rng, [identities[c]], BACKGROUNDS[c % len(BACKGROUNDS)]), size).image
        for c in range(columns)
    ]
    multis = [render_scene(sample_scene(rng, distinct_looks(rng, 2 + c % 2)), size).image for c in range(columns)]
    panels = [render_two_panel(sample_two_panel(rng, identities[c]), size).image for c in range(columns // 2)]

    gap = max(2, size // 32)
    sheet = Image.new("RGB", (columns * (size + gap) + gap, 4 * (size + gap) + gap), (255, 255, 255))
    for row, tiles in enumerate((references, singles, multis)):
        for col, tile in enumerate(tiles):
            sheet.paste(tile, (gap + col * (size + gap), gap + row * (size + gap)))
    for col, tile in enumerate(panels):
        sheet.paste(tile, (gap + 2 * col * (size + gap), gap + 3 * (size + gap)))
    return sheet
