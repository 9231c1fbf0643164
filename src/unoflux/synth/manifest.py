"""Crash-safe JSONL manifests: one JSON record per line, each with a unique ``key``.

A stage writes a record's files first (atomically: temp file, then ``os.replace``) and appends its line after, with
flush + fsync, so a line on disk always means its files are complete. A ``kill -9`` can at worst leave a torn last
line (no newline, or half a JSON object): opening the manifest again cuts it off, and the stage redoes that record.
Records already present are skipped by key, so a re-run neither loses nor duplicates one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import UnofluxError


class Manifest:
    """A JSONL manifest at ``path``, opened for resuming: ``records`` holds what is already complete."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.records: list[dict] = read_manifest(self.path, repair=True) if self.path.exists() else []
        self.keys = {r["key"] for r in self.records}

    def __contains__(self, key: str) -> bool:
        return key in self.keys

    def __len__(self) -> int:
        return len(self.records)

    def append(self, record: dict) -> None:
        """Write one record durably (flush + fsync) and remember its key."""
        key = record.get("key")
        if not isinstance(key, str) or not key:
            raise UnofluxError(f"a manifest record needs a non-empty string 'key', got {key!r}")
        if key in self.keys:
            raise UnofluxError(f"record {key!r} is already in {str(self.path)!r}; a stage writes each key once")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = manifest_line(record)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self.records.append(record)
        self.keys.add(key)


def manifest_line(record: dict) -> str:
    """One record as its manifest line (sorted keys: the same record is always the same bytes)."""
    return json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n"


def read_manifest(path: str | os.PathLike, repair: bool = False) -> list[dict]:
    """The complete records of the manifest at ``path``, in file order.

    A torn last line (what a kill leaves) is ignored, and with ``repair`` cut off the file, so that appending
    continues on a clean line. A bad line before the last one is corruption, not a crash, and raises.
    """
    path = Path(path)
    if not path.is_file():
        raise UnofluxError(f"manifest {str(path)!r} does not exist; run the stage that writes it first")
    data = path.read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()  # the text after the last newline: b"" when the file ends cleanly
    records, good_bytes = [], 0
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or "key" not in record:
                raise ValueError
        except ValueError:
            if number == len(lines) and not tail:  # a newline made it to disk but the line is half there
                break
            raise UnofluxError(f"manifest {str(path)!r} line {number} is not a JSON record with a 'key'") from None
        records.append(record)
        good_bytes += len(line) + 1
    if repair and good_bytes != len(data):
        with open(path, "r+b") as f:
            f.truncate(good_bytes)
            f.flush()
            os.fsync(f.fileno())
    return records


def remove_partial_files(folder: str | os.PathLike) -> None:
    """Delete the temporary files (``.NAME.*.part``, see :func:`unoflux.images.atomic_write`) a killed run left in
    ``folder``: their records were never written, so the stage makes those files again."""
    for leftover in Path(folder).glob(".*.part"):
        leftover.unlink(missing_ok=True)
