"""fit(): learns on a tiny Wall dataset, logs namespaced metrics, writes artifacts and checkpoints; bad input."""

from __future__ import annotations

import imageio.v3 as iio
import pytest
from train_helpers import RecordingHooks

from dinowm_core import load_config
from dinowm_core.data.store import DatasetError
from dinowm_core.training.checkpoint import load_train_state, load_world_model
from dinowm_core.training.loop import fit


def test_fit_reduces_val_loss_and_writes_everything(train_overrides, tmp_path):
    cfg = load_config([*train_overrides, "training.max_steps=30", "training.epochs=2",
                       "training.val_at_start=true", "training.log_every_steps=5"])  # fmt: skip
    hooks = RecordingHooks(tmp_path / "run")
    result = fit(cfg, hooks)

    assert result.steps == 30 and result.epochs == 0  # 37 steps per epoch: stopped mid-epoch
    initial = hooks.logged[0]
    assert initial[0] == 0
    assert result.metrics["val/loss"] < 0.7 * initial[1]["val/loss"]
    # Per-step logs: slash-namespaced, every log_every_steps, with LRs and timings.
    steps = [s for s, m in hooks.logged if "train/loss" in m]
    assert steps == [5, 10, 15, 20, 25, 30]
    row = hooks.logged[1][1]
    for key in (
        "train/loss",
        "train/z_loss",
        "train/decoder_recon_loss_reconstructed",
        "train/grad_norm",
        "lr/predictor",
        "lr/action_encoder",
        "lr/decoder",
        "time/step_s",
        "time/samples_per_s",
    ):
        assert key in row, key  # fmt: skip
    assert "lr/encoder" not in row  # frozen encoder: no optimizer
    final = result.metrics
    for key in (
        "val/loss",
        "val/z_visual_err_rollout",
        "val/z_proprio_err_rollout_1framestart",
        "val/img_psnr_reconstructed",
        "val/img_ssim_pred",
        "val/decoder_recon_loss_pred",
    ):
        assert key in final, key  # fmt: skip
    # The final position is checkpointed, reported, and loads back with the dataset's normalization.
    assert hooks.reported[-1]["checkpoint"] == result.checkpoint
    wm = load_world_model(result.checkpoint)
    assert wm.normalization is not None and len(wm.normalization["action_mean"]) == 2
    state = load_train_state(result.checkpoint)
    assert (state["epoch"], state["batch_in_epoch"], state["global_step"]) == (0, 30, 30)
    # Artifacts: grid rows = truth / prediction / reconstruction per sample; rollout png + mp4 (imagined | real).
    names = sorted(p.name for p in hooks.artifacts)
    assert [n.rsplit("_", 1)[1] for n in names] == ["reconstruction.png", "rollout.mp4", "rollout.png"]
    grid = iio.imread(next(p for p in hooks.artifacts if p.name.endswith("reconstruction.png")))
    assert grid.shape == (2 * 3 * 64, 4 * 64, 3)
    video = iio.imread(next(p for p in hooks.artifacts if p.suffix == ".mp4"), plugin="pyav")
    assert video.shape[1:] == (64, 128, 3) and video.shape[0] >= 6 and video.std() > 1


def test_batch_not_divisible_by_workers(train_overrides, tmp_path):
    class TwoWorkers(RecordingHooks):
        world_size = 2

    cfg = load_config([*train_overrides, "training.batch_size=7"])
    with pytest.raises(ValueError, match=r"batch_size=7 is not divisible by the number of workers \(2\)"):
        fit(cfg, TwoWorkers(tmp_path))
    cfg = load_config([*train_overrides, "training.batch_size=8", "training.grad_accum=3"])
    with pytest.raises(ValueError, match="grad_accum=3"):
        fit(cfg, RecordingHooks(tmp_path))


def test_missing_dataset_names_the_path(train_overrides, tmp_path):
    missing = tmp_path / "no_such_dataset"
    cfg = load_config([*train_overrides, f"data.path={missing}"])
    with pytest.raises(DatasetError, match=str(missing)):
        fit(cfg, RecordingHooks(tmp_path))
    cfg = load_config([o for o in train_overrides if not o.startswith("data.path")])
    with pytest.raises(DatasetError, match="data.path is not set"):
        fit(cfg, RecordingHooks(tmp_path))


def test_fit_with_a_rollout_loss_reads_longer_windows_and_logs_the_last_step(train_overrides, tmp_path):
    cfg = load_config([*train_overrides, "training.rollout_steps=2", "training.max_steps=3",
                       "training.log_every_steps=1", "training.num_val_rollouts=0", "training.val_max_batches=1"])  # fmt: skip
    hooks = RecordingHooks(tmp_path / "run")
    result = fit(cfg, hooks)
    assert result.steps == 3 and result.metrics["val/loss"] > 0
    logged = {k for _, metrics in hooks.logged for k in metrics}
    assert {"train/z_loss_step_k", "val/z_loss_step_k"} <= logged, sorted(logged)


def test_decoder_every_steps_trains_the_decoder_on_its_turns_and_the_predictor_as_before(
    train_overrides, tmp_path
):
    import torch

    def run(name: str, every: int, steps: int):
        cfg = load_config([*train_overrides, f"training.decoder_every_steps={every}", f"training.max_steps={steps}",
                           "training.log_every_steps=1", "training.num_val_rollouts=0", "training.val_max_batches=1"])  # fmt: skip
        hooks = RecordingHooks(tmp_path / name)
        wm = load_world_model(fit(cfg, hooks).checkpoint)
        parts = {"decoder": wm.decoder, "predictor": wm.predictor, "action": wm.action_encoder}
        return {k: torch.cat([p.flatten() for p in m.parameters()]) for k, m in parts.items()}, hooks.logged

    every_step, _ = run("every", 1, 4)
    turns, logged = run("turns", 3, 4)  # the decoder trains on steps 0 and 3
    first_turn, _ = run("first", 3, 1)
    between, _ = run("between", 3, 3)
    for part in ("predictor", "action"):  # its latents are detached: the same predictor training
        torch.testing.assert_close(turns[part], every_step[part], rtol=0, atol=0)
    assert torch.equal(between["decoder"], first_turn["decoder"])  # steps 1 and 2 leave it as it is
    assert not torch.equal(turns["decoder"], between["decoder"])  # its second turn, step 3
    assert not torch.equal(turns["decoder"], every_step["decoder"])
    # per-step rows (logged after each step): decoder metrics only from its turns, z_loss from every step
    rows = {step: m for step, m in logged if "train/z_loss" in m}
    assert sorted(rows) == [1, 2, 3, 4]
    turns_logged = [s for s in sorted(rows) if "train/decoder_loss_reconstructed" in rows[s]]
    assert turns_logged == [1, 4]
