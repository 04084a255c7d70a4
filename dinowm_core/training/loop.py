"""The Ray-free training loop: ``fit(cfg, hooks) -> FitResult`` (reference DINO-WM section 4, ``train.py``).

Everything that depends on where training runs (DDP wrapping, samplers, reporting, checkpoint storage) goes
through :class:`~dinowm_core.training.hooks.TrainHooks`; a plain process uses the identity hooks::

    python -m dinowm_core.training.loop env=wall encoder=dino_tiny data.path=data/wall training.epochs=5

Per epoch: train (per-component optimizers, see ``optim.py``), validate (loss terms under ``no_grad``, open-loop
rollout errors, image metrics), write a checkpoint on the main rank, and ``hooks.report`` on every rank. The
main rank logs its progress to the console (``progress.py``: step lines with loss and ETA, validation).

Deliberate deviations from the reference, all fixes: ``training.epochs`` is the total (a resumed run does not
train another full ``epochs``); resume restores optimizers, schedulers, RNG streams and the position inside the
epoch (bug 7); the window order is reshuffled every epoch as a function of (seed, epoch) (bug 6); validation
runs under ``no_grad``; the logged-only predicted-frame decoder loss is computed at validation, not on every
training step (it never affects the weights); the action/proprio encoders are restored on resume.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from dinowm_core.config import Config
from dinowm_core.data.store import DatasetError
from dinowm_core.data.windows import build_datasets
from dinowm_core.models.build import build_world_model
from dinowm_core.models.world_model import WorldModel
from dinowm_core.presets import load_config
from dinowm_core.training import artifacts
from dinowm_core.training.checkpoint import load_train_state, load_world_model, save_world_model
from dinowm_core.training.data import CachedWindows, SkipSampler, open_feature_cache, split_batch, to_device
from dinowm_core.training.hooks import TrainHooks
from dinowm_core.training.metrics import finite, image_metrics, rollout_errors, sample_rollouts
from dinowm_core.training.optim import (
    amp_dtype,
    autocast,
    build_optimizers,
    build_schedulers,
    clip_gradients,
    maybe_compile,
    trainable_parameters,
)
from dinowm_core.training.progress import Progress
from dinowm_core.training.state import Position, restore_train_state, seed_everything, train_state

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    steps: int
    epochs: int  # completed epochs
    metrics: dict[str, float] = field(default_factory=dict)
    checkpoint: Path | None = None


class LossModule(nn.Module):
    """What ``hooks.wrap_model`` wraps (e.g. in DDP): ``forward(obs, act) -> wm.loss(obs, act)``."""

    def __init__(self, wm: WorldModel) -> None:
        super().__init__()
        self.wm = wm

    def forward(
        self, obs: dict[str, torch.Tensor], act: torch.Tensor, train_decoder: bool = True
    ) -> tuple[torch.Tensor, dict]:
        return self.wm.loss(obs, act, decode_pred=False, train_decoder=train_decoder)


def per_worker_batch(batch_size: int, world_size: int, grad_accum: int) -> int:
    if batch_size % world_size:
        raise ValueError(
            f"training.batch_size={batch_size} is not divisible by the number of workers ({world_size})"
        )
    per = batch_size // world_size
    if per % grad_accum:
        raise ValueError(f"per-worker batch {per} is not divisible by training.grad_accum={grad_accum}")
    return per


# ---- one optimizer step -----------------------------------------------------------------------------


def accumulate_gradients(
    model: nn.Module,
    obs: dict,
    act: torch.Tensor,
    parts: int,
    device: torch.device,
    amp: torch.dtype | None,
    train_decoder: bool = True,
) -> dict[str, torch.Tensor]:
    """Forward/backward ``parts`` micro-batches; gradients equal one full-batch pass (losses are means, so each
    micro-loss is weighted by its share of the batch). DDP syncs only on the last micro-batch."""
    micro = split_batch(obs, act, parts)
    total, sums = act.shape[0], {}
    for i, (o, a) in enumerate(micro):
        weight = a.shape[0] / total
        last = i == len(micro) - 1
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast(device, amp):
                loss, metrics = model(o, a, train_decoder)
            (loss * weight).backward()
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + v.float() * weight
    return sums


def train_step(
    model, optimizers, schedulers, obs, act, cfg: Config, device, amp, train_decoder: bool = True
) -> dict[str, float]:
    """One optimizer step. With ``train_decoder=False`` the decoder gets no gradient, and its optimizer (which
    skips parameters without one) leaves it as it is."""
    for opt in optimizers.values():
        opt.zero_grad(set_to_none=True)
    metrics = accumulate_gradients(model, obs, act, cfg.training.grad_accum, device, amp, train_decoder)
    metrics["grad_norm"] = clip_gradients(trainable_parameters(optimizers), cfg.training.grad_clip)
    for opt in optimizers.values():
        opt.step()
    for sched in schedulers.values():
        sched.step()
    return {k: float(v) for k, v in metrics.items()}


# ---- validation ---------------------------------------------------------------------------------------


@torch.no_grad()
def _image_batch(wm: WorldModel, obs: dict, act: torch.Tensor) -> tuple[dict[str, float], dict]:
    """Decoded reconstructions / predictions of one batch: image metrics and the grid's tensors (of the first
    window when the samples are long sequences)."""
    window = wm.num_hist + wm.num_pred
    obs, act = {k: v[:, :window] for k, v in obs.items()}, act[:, :window]
    z = wm.encode(obs, act)
    recon, _ = wm.decode_visual(wm.separate(z)[0]["visual"])
    pred, _ = wm.decode_visual(wm.separate(wm.predict(z[:, : wm.num_hist]))[0]["visual"])
    # reference: the "pred" image metrics score the last predicted frame only (frame num_hist, full context)
    last = image_metrics(pred[:, -1:], obs["visual"][:, wm.num_hist : wm.num_hist + 1], "pred")
    metrics = {**image_metrics(recon, obs["visual"], "reconstructed"), **last}
    return metrics, {"truth": obs["visual"], "pred": pred, "recon": recon}


def num_val_batches(loader: DataLoader, cfg: Config) -> int:
    cap = cfg.training.val_max_batches
    return len(loader) if cap is None else min(len(loader), cap)


@torch.no_grad()
def validate(wm, loader, rollouts, cfg: Config, device, amp,
             progress: Callable[[int, int], None] | None = None) -> tuple[dict[str, float], dict]:  # fmt: skip
    """Validation metrics and the first batch's images; ``progress(done, total)`` after each batch."""
    wm.eval()
    sums: dict[str, float] = {}
    count, visuals = 0, {}
    total = num_val_batches(loader, cfg)
    for b, (obs, act, _) in enumerate(loader):
        if b >= total:
            break
        obs, act = to_device(obs, device), to_device(act, device)
        with autocast(device, amp):
            _, metrics = wm.loss(obs, act)
            if b == 0 and wm.decoder is not None and wm.predictor is not None:
                img_metrics, visuals = _image_batch(wm, obs, act)
        n = act.shape[0]
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + float(v) * n
        count += n
        if progress is not None:
            progress(b + 1, total)
    out = {k: v / max(count, 1) for k, v in sums.items()}
    if visuals:
        out.update(img_metrics)
    if rollouts and wm.predictor is not None:
        with autocast(device, amp):
            errors, frames = rollout_errors(wm, rollouts, device)
        out.update(errors)
        if frames:
            visuals["rollout"] = frames
    wm.train()
    return out, visuals


# ---- setup ---------------------------------------------------------------------------------------------


def _datasets(cfg: Config):
    path = cfg.data.path
    if not path:
        raise DatasetError("data.path is not set (pass data.path=<dataset dir>)")
    if not Path(path).is_dir():
        raise DatasetError(
            f"data.path: dataset directory {path} does not exist (make one: dinowm data generate)"
        )
    return build_datasets(cfg)


def _restore_weights(wm: WorldModel, path: Path) -> None:
    """Weights from a checkpoint's safetensors (through the checkpoint loader's shape/key checks)."""
    src = load_world_model(path, map_location="cpu")
    wm.load_state_dict(src.state_dict())


class _Run:
    """The state of one ``fit`` call, so the loop body reads top to bottom."""

    def __init__(self, cfg: Config, hooks: TrainHooks) -> None:
        self.cfg, self.hooks, t = cfg, hooks, cfg.training
        self.device = hooks.device
        self.rank, self.world = hooks.world_rank, hooks.world_size
        self.batch = per_worker_batch(t.batch_size, self.world, t.grad_accum)
        seed_everything(t.seed)  # same initial weights on every rank
        train_w, val_w, _, val_traj = _datasets(cfg)
        self.wm = build_world_model(cfg)
        self.wm.normalization = train_w.normalizer.to_dict()
        resume = hooks.resume_dir()
        state = None
        if resume is not None:
            _restore_weights(self.wm, Path(resume))
            state = load_train_state(resume)
            if state is None:
                raise FileNotFoundError(f"{resume}/train_state.pt: missing; cannot resume exactly")
        self.wm.to(self.device).train()
        if cfg.data.feature_cache:
            cache = open_feature_cache(train_w, self.wm, cfg)
            train_w, val_w = CachedWindows(train_w, cache), CachedWindows(val_w, cache)
        self.sampler = SkipSampler(hooks.make_sampler(train_w, shuffle=True, seed=t.seed))
        self.loader_gen = torch.Generator()
        self.train_loader = hooks.wrap_loader(self._loader(train_w, self.sampler, self.loader_gen))
        self.val_loader = hooks.wrap_loader(
            self._loader(val_w, hooks.make_sampler(val_w, shuffle=False, seed=t.seed), None)
        )
        self.steps_per_epoch = len(self.train_loader)
        if self.steps_per_epoch == 0:
            raise DatasetError(f"{cfg.data.path}: no training windows (episodes shorter than a window?)")
        total = t.epochs * self.steps_per_epoch
        self.total_steps = min(total, t.max_steps) if t.max_steps else total
        self.progress = Progress(enabled=hooks.is_main(), every_s=t.progress_every_s, epochs=t.epochs,
                                 total_steps=self.total_steps, steps_per_epoch=self.steps_per_epoch,
                                 samples_per_step=self.batch * self.world)  # fmt: skip
        self.optimizers: dict[str, Optimizer] = build_optimizers(self.wm, cfg)
        self.schedulers = build_schedulers(self.optimizers, cfg, self.total_steps)
        self.pos = Position()
        if state is not None:
            self.pos = restore_train_state(state, self.optimizers, self.schedulers, per_worker_batch=self.batch,
                                           world_size=self.world)  # fmt: skip
            if self.rank:  # only the main rank's RNG is checkpointed; keep the others independent
                seed_everything(t.seed + self.rank + 7919 * self.pos.global_step)
            log.info("resumed from %s at epoch %d, step %d", resume, self.pos.epoch, self.pos.global_step)
        else:
            seed_everything(t.seed + self.rank)  # independent dropout per rank
        self.amp = amp_dtype(cfg, self.device)
        maybe_compile(self.wm, cfg)
        self.model = hooks.wrap_model(LossModule(self.wm))
        self.rollouts = sample_rollouts(val_traj, t.num_val_rollouts, frameskip=cfg.frameskip,
                                        num_hist=cfg.num_hist, seed=t.seed)  # fmt: skip
        self.last_ckpt: Path | None = None
        self.saved_at_step = -1
        self.checkpoint_due = False  # a step checkpoint fell on the last step of run_epoch: fit writes it

    def _loader(self, ds, sampler, gen) -> DataLoader:
        w = self.cfg.data.num_workers
        return DataLoader(ds, batch_size=self.batch, sampler=sampler, num_workers=w, generator=gen,
                          pin_memory=self.device.type == "cuda", persistent_workers=False)  # fmt: skip

    @property
    def done(self) -> bool:
        return self.pos.epoch >= self.cfg.training.epochs or self.pos.global_step >= self.total_steps

    def checkpoint(self) -> Path | None:
        """Main rank: write a checkpoint of the current position (once per step)."""
        if not self.hooks.is_main() or self.saved_at_step == self.pos.global_step:
            return self.last_ckpt if self.hooks.is_main() else None
        p = self.pos
        path = self.hooks.checkpoint_root() / f"epoch{p.epoch:04d}-step{p.global_step:08d}"
        state = train_state(self.optimizers, self.schedulers, p, per_worker_batch=self.batch,
                            world_size=self.world)  # fmt: skip
        save_world_model(
            self.wm, path, train_state=state, extra_meta={"epoch": p.epoch, "step": p.global_step}
        )
        self.last_ckpt, self.saved_at_step = path, p.global_step
        return path

    def write_artifacts(self, visuals: dict, tag: str) -> None:
        if not self.hooks.is_main() or not visuals:
            return
        out = self.hooks.run_dir() / "artifacts"
        n = self.cfg.training.num_reconstruct_samples
        paths = []
        if "truth" in visuals and n > 0:
            paths.append(artifacts.save_reconstruction_grid(
                out / f"{tag}_reconstruction.png", visuals["truth"][:n], visuals["pred"][:n],
                visuals["recon"][:n], self.cfg.num_pred))  # fmt: skip
        if "rollout" in visuals:
            png, mp4 = out / f"{tag}_rollout.png", out / f"{tag}_rollout.mp4"
            artifacts.save_rollout(png, mp4, visuals["rollout"]["imagined"], visuals["rollout"]["real"])
            paths += [png, mp4]
        for path in paths:
            self.hooks.log_artifact(path, "artifacts")

    # ---- the loop ------------------------------------------------------------------------------------

    def run_epoch(self) -> dict[str, float]:
        """Train from the current position to the end of the epoch (or ``max_steps``); epoch-mean metrics."""
        t, hooks, pos = self.cfg.training, self.hooks, self.pos
        self.sampler.set_epoch(pos.epoch)
        self.sampler.skip = pos.batch_in_epoch * self.batch
        self.loader_gen.manual_seed(t.seed * 100_003 + pos.epoch)  # worker seeds: a function of (seed, epoch)
        # per-key sums and counts: the decoder's metrics come only from the steps it trains on
        sums: dict[str, list[float]] = {}
        window: dict[str, list[float]] = {}
        n_window = 0
        tick = time.perf_counter()
        self.progress.window_start(pos.global_step)
        for obs, act, _ in self.train_loader:
            obs, act = to_device(obs, self.device), to_device(act, self.device)
            metrics = train_step(self.model, self.optimizers, self.schedulers, obs, act, self.cfg,
                                 self.device, self.amp, pos.global_step % t.decoder_every_steps == 0)  # fmt: skip
            pos.global_step += 1
            pos.batch_in_epoch += 1
            for k, v in metrics.items():
                for acc in (sums, window):
                    acc.setdefault(k, [0.0, 0])
                    acc[k][0] += v
                    acc[k][1] += 1
            n_window += 1
            if hooks.is_main() and pos.global_step % t.log_every_steps == 0:
                dt = (time.perf_counter() - tick) / n_window
                row = {f"train/{k}": v / n for k, (v, n) in window.items()}
                row |= {f"lr/{k}": o.param_groups[0]["lr"] for k, o in self.optimizers.items()}
                row |= {"time/step_s": dt, "time/samples_per_s": self.batch * self.world / dt}
                hooks.log_metrics(finite(row), pos.global_step)
                window, n_window, tick = {}, 0, time.perf_counter()
            last = pos.global_step >= self.total_steps or pos.batch_in_epoch >= self.steps_per_epoch
            self.progress.step(pos.epoch, pos.batch_in_epoch, pos.global_step, metrics.get("loss", math.nan),
                               last=last)  # fmt: skip
            if t.checkpoint_every_steps and pos.global_step % t.checkpoint_every_steps == 0:
                if last:
                    # fit reports right after this loop: that one report carries the checkpoint (and the
                    # epoch's metrics). Reporting here too would hand Ray one directory twice, and pruning
                    # the older registration deletes the files the newer one points at.
                    self.checkpoint_due = True
                else:
                    ckpt = self.checkpoint()
                    hooks.report({"epoch": pos.epoch, "step": pos.global_step}, ckpt)
            if pos.global_step >= self.total_steps:
                break
        if pos.batch_in_epoch >= self.steps_per_epoch:
            pos.epoch, pos.batch_in_epoch = pos.epoch + 1, 0
        return {f"train/{k}": v / n for k, (v, n) in sums.items()}

    def val_metrics(self) -> tuple[dict[str, float], dict]:
        rollouts = len(self.rollouts) if self.wm.predictor is not None else 0
        self.progress.validation_start(num_val_batches(self.val_loader, self.cfg), rollouts)
        metrics, visuals = validate(self.wm, self.val_loader, self.rollouts, self.cfg, self.device, self.amp,
                                    self.progress.validation_batch)  # fmt: skip
        metrics = self.hooks.all_reduce_mean({f"val/{k}": v for k, v in metrics.items()})
        self.progress.validation_end(metrics)
        return metrics, visuals


def fit(cfg: Config, hooks: TrainHooks | None = None) -> FitResult:
    """Train the world model of ``cfg`` for ``training.epochs`` epochs or ``training.max_steps`` steps."""
    hooks = hooks or TrainHooks()
    run = _Run(cfg, hooks)
    t, pos, main = cfg.training, run.pos, hooks.is_main()
    metrics: dict[str, float] = {}
    if main:
        n_params = sum(p.numel() for p in trainable_parameters(run.optimizers))
        log.info("training %s params: %d steps/epoch x %d epochs (max %d steps), batch %d = %d workers x %d",
                 f"{n_params:,}", run.steps_per_epoch, t.epochs, run.total_steps, t.batch_size, run.world,
                 run.batch)  # fmt: skip
    if t.val_at_start and pos.global_step == 0:
        val, _ = run.val_metrics()
        if main:
            hooks.log_metrics(finite(val), 0)
    run.progress.start(pos.global_step)
    while not run.done:
        epoch_start, step_before, epoch = time.perf_counter(), pos.global_step, pos.epoch
        train = hooks.all_reduce_mean(run.run_epoch())
        val, visuals = run.val_metrics()
        metrics = {"epoch": pos.epoch, "step": pos.global_step, **train, **val}
        finished = pos.epoch > epoch
        stopping = run.done
        if main:
            hooks.log_metrics(finite(val), pos.global_step)
            period = t.artifacts_every_epochs
            if stopping or (finished and period and pos.epoch % period == 0):
                run.write_artifacts(visuals, f"e{pos.epoch:04d}-s{pos.global_step:08d}")
            run.progress.epoch_end(epoch + 1, pos.global_step, metrics, time.perf_counter() - epoch_start,
                                   pos.global_step - step_before)  # fmt: skip
        save = stopping or run.checkpoint_due or (finished and pos.epoch % t.save_every_epochs == 0)
        ckpt = run.checkpoint() if save else None
        run.checkpoint_due = False
        hooks.report(finite(metrics), ckpt if main else None)
    return FitResult(steps=pos.global_step, epochs=pos.epoch, metrics=metrics, checkpoint=run.last_ckpt)


def main(argv: list[str] | None = None) -> FitResult:
    """``python -m dinowm_core.training.loop [--resume DIR] [--run-dir DIR] key=value ...`` (one process)."""
    ap = argparse.ArgumentParser(description="Train a DINO-WM world model in this process (no Ray).")
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. env=wall data.path=data/wall")
    ap.add_argument("--run-dir", type=Path, default=None, help="default: <output_dir>/train-<time>")
    ap.add_argument("--resume", type=Path, default=None, help="checkpoint directory to resume from")
    ap.add_argument("--device", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.overrides)
    run_dir = args.run_dir or Path(cfg.output_dir) / time.strftime("train-%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(cfg.to_json())
    result = fit(cfg, TrainHooks(device=args.device, resume_from=args.resume, run_dir=run_dir))
    log.info("done: %d steps, %d epochs, last checkpoint %s", result.steps, result.epochs, result.checkpoint)
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
