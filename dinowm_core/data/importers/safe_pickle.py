"""Loading the reference's small pickles (``seq_lengths.pkl``, ``shapes.pkl``) without executing anything.

``pickle.load`` on a downloaded file can run arbitrary code. This unpickler resolves no globals at all (so no
class or function can be constructed) and the result must be a flat list/tuple of the allowed scalar types.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path


class UnsafePickleError(ValueError):
    """The pickle references code or holds something other than the expected plain values."""


class _NoGlobalsUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> type:
        raise UnsafePickleError(
            f"{self.source}: refuses to load {module}.{name} (only plain lists are accepted)"
        )

    def persistent_load(self, pid: object) -> object:
        raise UnsafePickleError(f"{self.source}: persistent ids are not accepted")


def load_plain_list(path: str | Path, item_type: type) -> list:
    """A pickled list (or tuple) whose items are all ``item_type`` (``int`` or ``str``); anything else raises."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            value = _NoGlobalsUnpickler(f, str(path)).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise UnsafePickleError(f"{path}: not a valid plain pickle ({e})") from None
    if not isinstance(value, list | tuple):
        raise UnsafePickleError(f"{path}: expected a list, got {type(value).__name__}")
    for item in value:
        # bool is an int subclass; a list of flags is not a list of lengths.
        if type(item) is not item_type:
            raise UnsafePickleError(
                f"{path}: expected only {item_type.__name__} items, found {type(item).__name__}"
            )
    return list(value)
