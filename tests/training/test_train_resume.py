"""Exact resume (fixes reference bug 7): k steps + resume for m more == k + m uninterrupted steps."""

from __future__ import annotations

import torch
from safetensors.torch import load_file
from train_helpers import RecordingHooks

from dinowm_core import load_config
from dinowm_core.training.checkpoint import load_train_state
from dinowm_core.training.loop import fit


def test_resume_mid_epoch_is_exact(train_overrides, tmp_path):
    # 3 train episodes -> 63 windows -> 8 steps per epoch. Dropout > 0 so the RNG restore matters; a cosine
    # schedule with warm-up so the scheduler restore matters; the resume point (step 5) is mid-epoch and the
    # resumed run crosses an epoch boundary (step 8).
    overrides = [*train_overrides, "data.n_rollout=4", "predictor.dropout=0.2", "training.scheduler=cosine",
                 "training.warmup_frac=0.2", "training.max_steps=13", "training.epochs=3",
                 "training.checkpoint_every_steps=5", "training.num_val_rollouts=1",
                 "training.val_max_batches=1", "training.artifacts_every_epochs=0"]  # fmt: skip
    cfg = load_config(overrides)
    full = fit(cfg, RecordingHooks(tmp_path / "full"))
    assert full.steps == 13 and full.epochs == 1
    mid = tmp_path / "full" / "checkpoints" / "epoch0000-step00000005"
    state = load_train_state(mid)
    assert (state["epoch"], state["batch_in_epoch"], state["global_step"]) == (0, 5, 5)

    resumed = fit(cfg, RecordingHooks(tmp_path / "resumed", resume_from=mid))
    assert resumed.steps == 13 and resumed.epochs == 1

    want = load_file(full.checkpoint / "model.safetensors")
    got = load_file(resumed.checkpoint / "model.safetensors")
    assert want.keys() == got.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, msg=k)
    # Training moved the weights after the resume point (so equality is not vacuous).
    start = load_file(mid / "model.safetensors")
    assert any(not torch.equal(start[k], want[k]) for k in want)
    # Optimizer moments and the LR position were carried over too.
    a, b = load_train_state(full.checkpoint), load_train_state(resumed.checkpoint)
    assert a["schedulers"]["predictor"]["last_epoch"] == b["schedulers"]["predictor"]["last_epoch"] == 13
    for x, y in zip(a["optimizers"]["predictor"]["state"].values(), b["optimizers"]["predictor"]["state"].values(),
                    strict=True):  # fmt: skip
        torch.testing.assert_close(y["exp_avg_sq"], x["exp_avg_sq"], rtol=0, atol=0)
