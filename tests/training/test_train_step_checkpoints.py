"""Step checkpoints (``training.checkpoint_every_steps``) that fall on an epoch's last step or the final step."""

from __future__ import annotations

from collections import Counter

from train_helpers import RecordingHooks

from dinowm_core import load_config
from dinowm_core.training.checkpoint import load_train_state
from dinowm_core.training.loop import fit


def test_each_checkpoint_is_reported_once(train_overrides, tmp_path):
    # 3 train episodes -> 8 steps per epoch. Checkpoints every 4 steps: step 4 mid-epoch, step 8 at the end of
    # epoch 0 (its report is the epoch's), step 12 at max_steps (mid-epoch 1, the final report).
    cfg = load_config([*train_overrides, "data.n_rollout=4", "training.checkpoint_every_steps=4",
                       "training.max_steps=12", "training.epochs=3", "training.num_val_rollouts=0",
                       "training.val_max_batches=1", "training.artifacts_every_epochs=0"])  # fmt: skip
    hooks = RecordingHooks(tmp_path / "run")
    result = fit(cfg, hooks)

    assert result.steps == 12
    checkpoints = [r["checkpoint"] for r in hooks.reported if r["checkpoint"] is not None]
    assert [c.name for c in checkpoints] == [
        "epoch0000-step00000004",
        "epoch0001-step00000008",
        "epoch0001-step00000012",
    ]
    assert Counter(checkpoints).most_common(1)[0][1] == 1  # never the same directory twice
    # The epoch-end and final checkpoints come with the validation metrics (Ray keeps only those).
    for report in hooks.reported[1:]:
        assert report["checkpoint"] is not None and "val/loss" in report["metrics"], report
    state = load_train_state(checkpoints[1])
    assert (state["epoch"], state["batch_in_epoch"], state["global_step"]) == (1, 0, 8)
