"""Importers of other projects' checkpoints: the original DINO-WM's pickled-module runs."""

from dinowm_core.training.importers.original_checkpoint import import_original_checkpoint, original_run_files
from dinowm_core.training.importers.original_config import OriginalConfigError, map_original_config
from dinowm_core.training.importers.original_state import StateMappingError
from dinowm_core.training.importers.restricted_load import UnsafeCheckpointError, load_original_checkpoint

__all__ = [
    "OriginalConfigError", "StateMappingError", "UnsafeCheckpointError", "import_original_checkpoint",
    "load_original_checkpoint", "map_original_config", "original_run_files",
]  # fmt: skip
