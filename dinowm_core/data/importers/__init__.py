"""Importers from other dataset layouts (the original DINO-WM's .pth/.mp4/.pkl files)."""

from dinowm_core.data.importers.dino_wm import LAYOUTS, import_dino_wm
from dinowm_core.data.importers.safe_pickle import UnsafePickleError, load_plain_list

__all__ = ["LAYOUTS", "UnsafePickleError", "import_dino_wm", "load_plain_list"]
