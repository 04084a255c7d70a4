"""Datasets: the Arrow trajectory store, normalization, training windows, generation, importers, feature cache."""

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
    "read_manifest",
]
