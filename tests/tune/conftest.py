"""Sweep fixtures: the session's Ray cluster and the tiny Wall dataset of tests/ray."""

from __future__ import annotations

import pytest

from tests.ray import conftest as ray_conftest


@pytest.fixture(scope="session")
def ray_cluster():
    """tests/ray's session cluster: the one already running when another directory came first, else a new one."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    yield from ray_conftest.ray_cluster.__wrapped__()


@pytest.fixture(scope="session")
def wall_dataset(tmp_path_factory):
    return ray_conftest.wall_dataset.__wrapped__(tmp_path_factory)
