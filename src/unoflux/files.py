"""Writing folders atomically (single files: :func:`unoflux.images.atomic_write`): a folder is filled under a
temporary name and renamed into place, so a kill never leaves a half-written folder where readers look.

Used by training checkpoints and final folders, the family builder's model folders and the world builder's
shards; each caller names its own temporary folder, since resume logic looks for (or past) those names."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replacing_folder(target: Path, tmp: Path | None = None) -> Iterator[Path]:
    """Yield an empty scratch folder ``tmp`` (default: ``target`` + ``.tmp``, beside it; a leftover of a killed
    write is cleared first); once the block has filled it, it takes ``target``'s place. An exception in the block
    leaves ``target`` as it was."""
    tmp = tmp if tmp is not None else target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    yield tmp
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
