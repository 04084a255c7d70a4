"""write_shard consumes episodes as a stream: same bytes as from a list, and no file left behind on errors."""

from __future__ import annotations

import pytest
from data_fake_envs import FakeDotEnv

from dinowm_core.data.generate import GenerationSpec, run_episode
from dinowm_core.data.store import DatasetError, Episode
from dinowm_core.data.writer import write_shard


def _episodes(n: int) -> list[Episode]:
    spec = GenerationSpec("wall", n, 25, seed=3, img_size=16)
    env = FakeDotEnv(img_size=16)
    params = dict(env.env_params)
    return [run_episode(env, params, spec, e) for e in range(n)]


def test_a_stream_writes_the_same_bytes_as_a_list(tmp_path):
    eps = _episodes(3)  # 75 rows: record batches straddle episode boundaries
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = write_shard(tmp_path / "a", 0, eps, 10)
    b = write_shard(tmp_path / "b", 0, (ep for ep in eps), 10)
    assert a == b
    assert (tmp_path / "a" / a.file).read_bytes() == (tmp_path / "b" / b.file).read_bytes()
    assert a.lengths == [25, 25, 25]


def test_an_error_mid_stream_leaves_no_file(tmp_path):
    eps = _episodes(2)

    def stream():
        yield eps[0]
        raise RuntimeError("simulator crashed")

    with pytest.raises(RuntimeError, match="simulator crashed"):
        write_shard(tmp_path, 0, stream(), 0)
    odd = Episode.build(eps[1].frames, eps[1].actions, eps[1].states[:, :1], eps[1].proprio)
    with pytest.raises(DatasetError, match="episode 1: spaces"):
        write_shard(tmp_path, 1, iter([eps[0], odd]), 0)
    with pytest.raises(ValueError, match="no episodes"):
        write_shard(tmp_path, 2, iter([]), 0)
    assert list(tmp_path.iterdir()) == []  # neither a shard nor its .tmp
