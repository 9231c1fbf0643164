"""Methods: how references become tokens, embeddings and text-stream additions (see :mod:`.base`).

A name -> method table: ``uno`` (subjects, :mod:`.uno`), ``uso`` (a subject and style images, :mod:`.uso`) and
``dreamo`` (subjects, faces and styles with task and index embeddings, :mod:`.dreamo`). A model
folder's ``unoflux.json`` may declare its method (``"method": "uno"``), loading USO's style models makes ``uso`` the
default, and ``--method`` / the app's method field / ``GenerationRequest.method`` choose one per call.
"""

from __future__ import annotations

from ..errors import UnofluxError
from ..options import FLUX_DEV_DEFAULTS
from .base import Conditioning, Method, open_references
from .dreamo import DreamOMethod
from .uno import UnoMethod
from .uso import UsoMethod

METHODS: dict[str, Method] = {method.name: method for method in (UnoMethod(), UsoMethod(), DreamOMethod())}
DEFAULT_METHOD = FLUX_DEV_DEFAULTS["method"]  # one place says it: the options' model defaults


def get_method(method: str | Method) -> Method:
    """A method by name (or a :class:`Method` itself, as tests and extensions pass)."""
    if isinstance(method, Method):
        return method
    if method not in METHODS:
        raise UnofluxError(f"method {method!r} is not one of: {', '.join(METHODS)}")
    return METHODS[method]


__all__ = ["Conditioning", "Method", "METHODS", "DEFAULT_METHOD", "get_method", "open_references"]
