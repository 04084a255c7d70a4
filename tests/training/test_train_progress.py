"""Console progress of fit: step lines with loss and ETA inside an epoch, validation start/done, time-based."""

from __future__ import annotations

import logging
import re

from train_helpers import RecordingHooks

from dinowm_core import load_config
from dinowm_core.training.loop import fit
from dinowm_core.training.progress import Progress, hms

STEP_LINE = re.compile(
    r"epoch [12]/2 step (\d+)/10 \(batch \d+/8\) \| train/loss \d\S* \| .* \| ETA \d+:\d\d:\d\d$"
)


def test_fit_logs_step_and_validation_progress(train_overrides, tmp_path, caplog):
    # 3 train episodes -> 8 steps per epoch; stop at step 10. A line at every step (progress_every_s=0) except
    # those followed by an epoch line (steps 8 and 10).
    cfg = load_config([*train_overrides, "data.n_rollout=4", "training.max_steps=10", "training.epochs=2",
                       "training.progress_every_s=0", "training.num_val_rollouts=1", "training.val_max_batches=2",
                       "training.artifacts_every_epochs=0"])  # fmt: skip
    with caplog.at_level(logging.INFO, logger="dinowm_core"):
        fit(cfg, RecordingHooks(tmp_path / "run"))
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("dinowm_core.training")]

    steps = [int(m.group(1)) for line in lines if (m := STEP_LINE.search(line))]
    assert steps == [1, 2, 3, 4, 5, 6, 7, 9], lines
    assert lines.count("validating: 2 batches, 1 open-loop rollouts") == 2  # after epoch 0 and at the stop
    assert sum(line.startswith("validation batch 1/2 | 0:00:") and "ETA 0:00:" in line for line in lines) == 2
    done = [line for line in lines if re.fullmatch(r"validation done in \d+\.\d s \| val/loss \d\S*", line)]
    assert len(done) == 2, lines
    epochs = [line for line in lines if line.startswith(("epoch 1/2 step 8/10 |", "epoch 2/2 step 10/10 |"))]
    assert len(epochs) == 2 and all("val/loss" in line and "ETA" in line for line in epochs), lines


def test_step_lines_wait_for_the_interval(caplog):
    progress = Progress(enabled=True, every_s=3600, epochs=1, total_steps=100, steps_per_epoch=100,
                        samples_per_step=8)  # fmt: skip
    quiet = Progress(
        enabled=False, every_s=0, epochs=1, total_steps=100, steps_per_epoch=100, samples_per_step=8
    )
    with caplog.at_level(logging.INFO, logger="dinowm_core"):
        for step in range(1, 50):
            progress.step(0, step, step, 1.0, last=False)
            quiet.step(0, step, step, 1.0, last=False)
        quiet.validation_start(3, 0)
        quiet.validation_batch(1, 3)
        quiet.validation_end({"val/loss": 1.0})
    assert caplog.records == []


def test_hms():
    assert hms(3725.2) == "1:02:05"
    assert hms(90000) == "25:00:00"  # not wrapped at a day
    assert hms(float("inf")) == "?"
