"""Shared fixtures data for the evaluation tests: a small Wall dataset and tiny untrained world models."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from dinowm_core import build_world_model, load_config, save_world_model
from dinowm_core.data.generate import generate
from dinowm_core.data.store import TrajectoryStore
from tests.conftest import TINY

# The tiny model with num_hist 1 as the reference wall config; small CEM so one MPC step costs milliseconds.
EVAL_TINY = [
    *TINY,
    "num_hist=1",
    "planner=mpc_cem",
    "planner.cem.num_samples=12",
    "planner.cem.topk=3",
    "planner.cem.opt_steps=2",
    "eval.device=cpu",
    "eval.n_plot_samples=0",
]


def make_wall_dataset(root: Path, episodes: int = 8, steps: int = 40) -> Path:
    out = root / "wall_ds"
    if not out.exists():
        generate("wall", episodes, steps, out, seed=0, workers=1, img_size=64, progress=False)
    return out


def tiny_cfg(*overrides: str):
    return load_config([*EVAL_TINY, *overrides])


def tiny_wm(cfg, data: Path | None = None):
    torch.manual_seed(0)
    wm = build_world_model(cfg).eval()
    if data is not None:
        from dinowm_core.data.normalization import Normalizer

        wm.normalization = Normalizer.from_manifest(TrajectoryStore(data).manifest).to_dict()
    return wm


def tiny_checkpoint(root: Path, cfg, data: Path | None = None) -> Path:
    return save_world_model(tiny_wm(cfg, data), root / "ckpt")


PROGRESS_LINE = re.compile(
    r"seed (\d+): step (\d+)/(\d+), (\d+)/(\d+) episodes done, (\d+) at the goal now(, ETA \d+m?\d*s)?$"
)


def progress_lines(caplog) -> list[tuple[str, ...]]:
    """The evaluation loop's progress lines as (seed, step, steps, done, episodes, at goal, ETA or None)."""
    from dinowm_core.evaluation import loop

    return [m.groups() for r in caplog.records
            if r.name == loop.__name__ and (m := PROGRESS_LINE.match(r.getMessage()))]  # fmt: skip


def check_progress(lines, result, seeds, n, steps) -> None:
    """One line per planning step; the last step of a seed reports all its episodes done and no ETA."""
    assert [(int(s), int(k), int(t)) for s, k, t, *_ in lines] == [
        (s, k, steps) for s in seeds for k in range(1, steps + 1)
    ]
    for seed, k, _, done, total, at_goal, eta in lines:
        assert int(total) == n and (eta is None) == (int(k) == steps)
        if int(k) == steps:
            assert int(done) == n
            assert int(at_goal) == sum(m.success for m in result.per_seed[int(seed)])
        else:
            assert int(done) == 0  # a fixed budget without oracle stop: nobody finishes early
