"""Datasets: the Arrow trajectory store, normalization, training windows, generation, importers, feature cache."""

from dinowm_core.data.integrity import check_files
from dinowm_core.data.normalization import Normalizer, RunningStats
from dinowm_core.data.store import DatasetError, Episode, TrajectoryStore, read_manifest
from dinowm_core.data.writer import DatasetWriter

__all__ = [
    "DatasetError",
    "DatasetWriter",
    "Episode",
    "Normalizer",
    "RunningStats",
    "TrajectoryStore",
    "check_files",
    "read_manifest",
]
