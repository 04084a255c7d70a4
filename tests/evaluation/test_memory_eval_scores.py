"""No memory score can be produced without running the model: with the model's rollout replaced by noise every
choice task falls to chance (inside its interval) and memory brings nothing at the revisit; with the true frames
substituted for the predictions (the oracle) every score is perfect. Plus the planning rule and the intervals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dinowm_core import build_world_model, load_config
from dinowm_core.config import MemoryEvalConfig
from dinowm_core.evaluation.memory import (
    EpisodeBuilder,
    ModelImaginer,
    TruthImaginer,
    episode_specs,
    run_memory_eval,
    score_episode,
)
from dinowm_core.evaluation.memory.scores import mean_summary, rate_summary
from dinowm_core.evaluation.report import wilson_interval
from dinowm_core.models.world_model import WorldModel

MODEL = ["env=four_rooms", "encoder=dino_tiny", "decoder=none", "img_size=64", "frameskip=1", "num_hist=3",
         "predictor=transformerxl", "predictor.depth=1", "predictor.heads=2", "predictor.dim_head=16",
         "predictor.mlp_dim=64", "predictor.memory.capacity=16"]  # fmt: skip
GRID = MemoryEvalConfig(episodes=4, num_objects=[2, 3], horizons=[6], error_horizons=[1, 3, 10],
                        error_context=8, tasks=["object_recall", "colour_memory", "sequence_memory",
                                                "loop_closure", "error_horizon"])  # fmt: skip
NOISE_DRAWS = 6  # noise draws per episode for the choice tasks (a memory-free model: no memory to write)


@pytest.fixture(scope="module")
def wm():
    torch.manual_seed(0)
    return build_world_model(load_config(MODEL)).eval()


@pytest.fixture(scope="module")
def vit_wm():
    torch.manual_seed(0)
    return build_world_model(load_config([*MODEL, "predictor=vit_small"])).eval()


@pytest.fixture(scope="module")
def episodes():
    builder = EpisodeBuilder()
    return [builder.build(s) for s in episode_specs(GRID, img_size=64)]


def _noise_rollout(self, obs0, act, *, z_obs0=None, memory=None):
    """Random latents of the rollout's shapes: a model that has learnt nothing and remembers nothing."""
    b, n = act.shape[0], act.shape[1] + 1
    p, d = 16, self.visual_dim
    visual = torch.randn(b, n, p, d)
    return {"visual": visual, "proprio": torch.randn(b, n, self.proprio_dim)}, visual


def test_noise_predictions_score_chance(wm, vit_wm, episodes, monkeypatch):
    monkeypatch.setattr(WorldModel, "rollout", _noise_rollout)
    imaginer = ModelImaginer(vit_wm)
    torch.manual_seed(1)
    for task in ("object_recall", "colour_memory", "sequence_memory"):
        eps = [e for e in episodes if e.spec.task == task]
        hits = [score_episode(imaginer, e)["correct"] for e in eps for _ in range(NOISE_DRAWS)]
        chance = float(np.mean([e.chance for e in eps]))
        lo, hi = wilson_interval(sum(hits), len(hits))
        assert lo <= chance <= hi, (task, sum(hits), len(hits), chance)
    imaginer = ModelImaginer(wm)  # with a memory: with or without it, noise is noise
    rows = [score_episode(imaginer, e) for e in episodes if e.spec.task == "loop_closure" for _ in range(2)]
    gain = mean_summary([r["err_revisit_no_memory"] - r["err_revisit"] for r in rows])
    assert gain["ci95"][0] <= 0 <= gain["ci95"][1]  # memory brings nothing to noise


def test_oracle_scores_perfect(wm, episodes):
    result = run_memory_eval(GRID, TruthImaginer(wm), episodes)
    tasks = result["tasks"]
    for task in ("object_recall", "colour_memory", "sequence_memory"):
        assert tasks[task]["pooled"]["rate"] == 1.0 and tasks[task]["pooled"]["n"] == 8
        assert all(c["rate"] == 1.0 for c in tasks[task]["cells"])
    assert tasks["loop_closure"]["pooled"]["err_revisit"]["mean"] == 0.0
    assert all(v["mean"] == 0.0 for v in tasks["error_horizon"]["mse"])


def test_model_scores_come_from_its_rollout(wm, episodes, monkeypatch):
    """The real model's numbers change when its rollout changes, and every frame is written to memory once."""
    imaginer = ModelImaginer(wm)
    ep = next(e for e in episodes if e.spec.task == "colour_memory")
    commits = []
    real = WorldModel.predict_memory

    def counting(self, z, memory, commit=0):
        commits.append(commit)
        return real(self, z, memory, commit)

    monkeypatch.setattr(WorldModel, "predict_memory", counting)
    row = score_episode(imaginer, ep)
    assert sum(commits) == len(ep.frames) - wm.num_hist  # each observed frame before the context, once
    monkeypatch.setattr(WorldModel, "rollout", _noise_rollout)
    torch.manual_seed(0)
    assert score_episode(imaginer, ep)["distances"] != row["distances"]


def test_intervals():
    s = rate_summary([True] * 7 + [False] * 3, chance=0.5)
    assert s["n"] == 10 and s["rate"] == 0.7 and s["ci95"] == list(wilson_interval(7, 10))
    m = mean_summary(np.arange(100.0))
    assert m["n"] == 100 and m["mean"] == 49.5 and 43 < m["ci95"][0] < 49.5 < m["ci95"][1] < 56
    assert mean_summary([3.0, 3.0])["ci95"] == [3.0, 3.0]
