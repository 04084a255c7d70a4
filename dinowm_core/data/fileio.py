"""File helpers shared by the trajectory store's reader and writers: checksums and atomic text writes.

They sit below both :mod:`dinowm_core.data.store` (which verifies checksums) and :mod:`dinowm_core.data.writer`
(which records them), so neither of those has to import the other for them.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
