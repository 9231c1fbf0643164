"""A reference image and the role it plays: what the subject looks like (``subject``) or how the image should look
(``style``), or whose face it is (``id``). Torch-free, so the CLI checks references before the heavy imports.

A plain path or PIL image is a subject reference (UNO's only kind). A method says which roles it takes
(:attr:`unoflux.methods.Method.roles`): UNO subjects only; USO one subject (its "content" image) and any number
of styles; DreamO subjects, faces and styles in any order (the order numbers them). The role is always said, never guessed from a position: ``--ref a.png --style s.png`` on the command
line, ``Reference("s.png", "style")`` (or ``style_images=``) in Python, ``{"image": "s.png", "role": "style"}``
in a batch file.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

SUBJECT, STYLE, IDENTITY = "subject", "style", "id"
ROLES = (SUBJECT, STYLE, IDENTITY)  # id: a face whose identity to keep (DreamO)


@dataclass(frozen=True)
class Reference:
    """One reference: an image (a path or a PIL image) and its role (one of :data:`ROLES`)."""

    image: Any
    role: str = SUBJECT

    def __post_init__(self) -> None:
        from .errors import UnofluxError

        if self.role not in ROLES:
            raise UnofluxError(f"reference role {self.role!r} is not one of: {', '.join(ROLES)}")

    def with_image(self, image: Any) -> Reference:
        return Reference(image, self.role)


def as_reference(value: Any) -> Reference:
    """A :class:`Reference` as given, a ``{"image", "role"}`` record (batch files, settings), or a plain path or
    image (a subject)."""
    if isinstance(value, Reference):
        return value
    if isinstance(value, dict):
        from .errors import UnofluxError

        if set(value) - {"image", "role"} or "image" not in value:
            raise UnofluxError(f"reference {value!r} must be a path or {{'image': path, 'role': role}}")
        return Reference(value["image"], value.get("role", SUBJECT))
    return Reference(value)


def as_references(values: Iterable[Any] | None) -> list[Reference]:
    return [as_reference(v) for v in values or []]


def reference_record(reference: Reference) -> str | dict[str, str]:
    """What settings records and batch files hold: a subject as its plain path (UNO's eval JSON), any other role
    as ``{"image": path, "role": role}``."""
    image = str(reference.image)
    return image if reference.role == SUBJECT else {"image": image, "role": reference.role}


def count_roles(references: Iterable[Reference]) -> dict[str, int]:
    counts = dict.fromkeys(ROLES, 0)
    for reference in references:
        counts[reference.role] += 1
    return counts


def slot_name(reference: Reference) -> str:
    """How messages name a reference's slot: "reference" for a subject, "style reference", "id reference"."""
    return "reference" if reference.role == SUBJECT else f"{reference.role} reference"
