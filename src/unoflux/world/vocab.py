"""The world's closed vocabulary: what text can say about a subject and a scene.

Everything a caption can name lives here, so captions, renderer and checker agree by construction.
Subject colours are saturated and the backgrounds are muted or neutral, which keeps subjects
separable from every background by colour alone (the checker relies on that).
"""

from __future__ import annotations

RGB = tuple[int, int, int]

# Subject main colours: saturated, well separated hues.
COLOURS: dict[str, RGB] = {
    "red": (220, 38, 38),
    "orange": (245, 135, 15),
    "yellow": (245, 212, 25),
    "green": (40, 175, 70),
    "teal": (15, 170, 165),
    "blue": (40, 85, 225),
    "purple": (140, 55, 200),
    "pink": (240, 95, 175),
}

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart", "diamond", "cross", "moon")
PATTERNS: tuple[str, ...] = ("plain", "striped", "dotted", "checkered")

# Neutral accent colours for emblems: never a palette colour, so they cannot change the
# text-describable look, only the identity.
ACCENTS: dict[str, RGB] = {
    "white": (250, 250, 248),
    "black": (28, 28, 32),
    "cream": (250, 236, 205),
    "charcoal": (75, 75, 85),
    "silver": (190, 192, 200),
}
EMBLEMS: tuple[str, ...] = ("dot", "ring", "bar", "plus", "triangle", "eyes")

BACKGROUNDS: tuple[str, ...] = ("beach", "snow", "grass", "night", "desert", "room", "underwater", "city")

# Horizontal placement -> centre x as a fraction of the width (the centres of the thirds; a subject
# too large to fit there is pushed inwards but stays in its third).
PLACEMENTS: dict[str, float] = {"left": 1 / 6, "center": 0.5, "right": 5 / 6}

# Size -> largest side of the subject's box as a fraction of the image height.
SIZES: dict[str, float] = {"small": 0.22, "medium": 0.34, "large": 0.48}

# Plain light backdrop of reference (product) shots.
REFERENCE_BACKGROUND: RGB = (244, 243, 239)
REFERENCE_FILL = 0.72  # the subject's largest side on a reference shot, as a fraction of the image


def placement_of_x(x_fraction: float) -> str:
    """Named placement of a horizontal centre given as a fraction of the width: its third."""
    return "left" if x_fraction < 1 / 3 else "right" if x_fraction > 2 / 3 else "center"


def size_of_extent(extent_fraction: float) -> str:
    """Nearest named size for a box's largest side given as a fraction of the image height."""
    return min(SIZES, key=lambda name: abs(SIZES[name] - extent_fraction))
