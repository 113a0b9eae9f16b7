"""Hashes of files: the one place hub_export reads a file to fingerprint it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable

_BLOCK = 1 << 20  # bytes read at a time: constant memory, whatever the file's size


def _update(digest, path: str | os.PathLike) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            digest.update(block)


def sha256_file(path: str | os.PathLike) -> str:
    """The hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    _update(digest, path)
    return digest.hexdigest()


def sha256_files(paths: Iterable[str | os.PathLike]) -> str:
    """One hex sha256 over several files: each file's name, a NUL, then its bytes."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).name.encode() + b"\0")
        _update(digest, path)
    return digest.hexdigest()
