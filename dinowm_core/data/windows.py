"""Training windows over a trajectory store (reference DINO-WM section 3.1: ``TrajDataset``, ``TrajSlicerDataset``).

A window of episode i starting at raw step s holds ``num_frames = num_hist + num_pred`` frames at
s, s+f, ..., s+(num_frames-1)f and the actions of rows [s, s + num_frames*f) grouped "(n f) d -> n (f d)":
row k is the f raw actions taken from frame k to frame k+1. Every start s = 0 .. T - num_frames*f is used.

Deviation (a fix): the reference permutes the window list once at construction and iterates it in the same
order every epoch. Here the dataset is in natural order and shuffling belongs to the sampler:
:class:`EpochShuffleSampler` (seed + epoch, call ``set_epoch``) or ``torch.utils.data.DistributedSampler``
with ``set_epoch`` for multi-process training.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from dinowm_core.data.normalization import Normalizer
from dinowm_core.data.store import DatasetError, TrajectoryStore

if TYPE_CHECKING:
    from dinowm_core.config import Config


def frames_to_tensor(frames: np.ndarray, img_size: int | None = None) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float32 (T, 3, img, img) in [-1, 1] (reference transform: /255, resize, mean/std 0.5)."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div_(255.0)
    if img_size is not None and x.shape[-2:] != (img_size, img_size):
        # Stored frames are square, so Resize(shorter side) + CenterCrop reduces to one bilinear resize.
        x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", antialias=True, align_corners=False)
        x = x.clamp_(0.0, 1.0)
    return x.sub_(0.5).div_(0.5)


def split_episodes(num_episodes: int, ratio: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference ``random_split_traj``: a torch permutation seeded by ``seed``; train = first int(ratio*N)."""
    perm = torch.randperm(num_episodes, generator=torch.Generator().manual_seed(seed)).numpy()
    n_train = int(ratio * num_episodes)
    return perm[:n_train], perm[n_train:]


class TrajectoryDataset(Dataset):
    """Whole trajectories: item i -> ``(obs, act (T, d), state (T, Ds), env_params)`` (reference ``TrajDataset``)."""

    def __init__(
        self,
        store: TrajectoryStore,
        episodes: Any = None,
        *,
        normalizer: Normalizer | None = None,
        img_size: int | None = None,
    ) -> None:
        self.store = store
        self.episodes = np.arange(store.num_episodes) if episodes is None else np.asarray(episodes, np.int64)
        self.normalizer = normalizer or Normalizer.from_manifest(store.manifest)
        self.img_size = img_size
        spaces = store.manifest["spaces"]
        self.action_dim = self.normalizer.model_action_dim  # d, or the one-hot width of a discrete env
        self.proprio_dim = spaces["proprio"]["shape"][0]
        self.state_dim = spaces["state"]["shape"][0]

    def __len__(self) -> int:
        return len(self.episodes)

    def get_seq_length(self, idx: int) -> int:
        return self.store.episode_length(int(self.episodes[idx]))

    def __getitem__(
        self, idx: int
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, dict[str, Any]]:
        ep = int(self.episodes[idx])
        T = self.store.episode_length(ep)
        obs, act, state = _load(self.store, self.normalizer, self.img_size, ep, np.arange(T), 0, T)
        return obs, act, state, self.store.env_params(ep)


def _load(
    store: TrajectoryStore,
    norm: Normalizer,
    img_size: int | None,
    ep: int,
    steps: np.ndarray,
    start: int,
    stop: int,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    visual = frames_to_tensor(store.frames(ep, steps), img_size)
    proprio = torch.from_numpy(
        norm.normalize_proprio(store.proprio(ep, start, stop)[steps - start]).astype(np.float32)
    )
    act = torch.from_numpy(
        norm.normalize_actions(store.actions(ep, start, stop).astype(np.float64)).astype(np.float32)
    )
    state = torch.from_numpy(store.states(ep, start, stop)[steps - start].astype(np.float32))
    return {"visual": visual, "proprio": proprio}, act, state


class WindowDataset(Dataset):
    """Map-style training windows (reference ``TrajSlicerDataset`` with ``process_actions="concat"``).

    Item -> ``(obs {"visual": (T, 3, H, W) float32 in [-1, 1], "proprio": (T, Dp)}, act (T, f*d), state (T, Ds))``
    with T = ``num_frames``; actions and proprio normalized, state raw.
    """

    def __init__(
        self,
        store: TrajectoryStore,
        episodes: Any,
        *,
        num_frames: int,
        frameskip: int,
        normalizer: Normalizer | None = None,
        img_size: int | None = None,
    ) -> None:
        if num_frames < 1 or frameskip < 1:
            raise ValueError(f"num_frames and frameskip must be >= 1, got {num_frames}, {frameskip}")
        self.store = store
        self.episodes = np.asarray(episodes, np.int64)
        self.num_frames, self.frameskip = num_frames, frameskip
        self.normalizer = normalizer or Normalizer.from_manifest(store.manifest)
        self.img_size = img_size
        span = num_frames * frameskip
        starts = [np.arange(store.episode_length(int(e)) - span + 1) for e in self.episodes]
        # (episode, start) per window; an episode shorter than the span contributes nothing.
        self.index = np.concatenate(
            [np.stack([np.full(len(s), e), s], 1) for e, s in zip(self.episodes, starts, strict=True)]
            or [np.zeros((0, 2), np.int64)]
        ).astype(np.int64)
        base = store.manifest["spaces"]
        self.action_dim = self.normalizer.model_action_dim * frameskip  # f one-hots for a discrete env
        self.proprio_dim = base["proprio"]["shape"][0]
        self.state_dim = base["state"]["shape"][0]

    def __len__(self) -> int:
        return len(self.index)

    def window(self, idx: int) -> tuple[int, int]:
        """(episode, start step) of window ``idx``."""
        ep, start = self.index[idx]
        return int(ep), int(start)

    def __getitem__(self, idx: int) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        ep, s = self.window(idx)
        f, n = self.frameskip, self.num_frames
        steps = s + f * np.arange(n)
        obs, act, state = _load(self.store, self.normalizer, self.img_size, ep, steps, s, s + n * f)
        return obs, act.reshape(n, f * act.shape[-1]), state  # "(n f) d -> n (f d)"


class EpochShuffleSampler(Sampler[int]):
    """A fresh permutation every epoch, seeded by ``seed + epoch`` (reproducible, unlike a global RNG)."""

    def __init__(self, num_items: int, seed: int = 0) -> None:
        self.num_items, self.seed, self.epoch = num_items, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_items

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.num_items, generator=g).tolist())


def window_steps(cfg: Config) -> int:
    """Raw steps one training sample spans: ``(num_hist + num_pred) * frameskip`` (or ``data.sequence_length``
    frames)."""
    return cfg.num_sample_frames * cfg.frameskip


def window_requirement(cfg: Config) -> str:
    """What one training window needs, spelled out with the config's values (for error messages)."""
    return (
        f"one training window needs (num_hist + num_pred) * frameskip = ({cfg.num_hist} + {cfg.num_pred}) * "
        f"{cfg.frameskip} = {window_steps(cfg)} steps"
    )


def num_windows(lengths: Any, span: int) -> int:
    """Windows of ``span`` raw steps in episodes of these lengths (every start s = 0 .. T - span)."""
    return int(sum(max(0, int(T) - span + 1) for T in lengths))


def split_for(
    num_episodes: int, splits: dict[str, list[int]] | None, cfg: Config
) -> tuple[np.ndarray, np.ndarray]:
    """``(train, val)`` episode ids for ``cfg``: the manifest's folder split when it has one, else a random split
    by trajectory with ``cfg.data.split_seed`` over the first ``data.n_rollout`` episodes."""
    if splits:
        # A folder split (PushT's train/ and val/) truncates each folder to its first n, as the reference loads
        # them as two datasets; the store numbers train episodes first, so a global cut would empty val.
        cut = cfg.data.n_rollout
        return np.asarray(splits["train"][:cut], np.int64), np.asarray(splits["val"][:cut], np.int64)
    n = num_episodes if cfg.data.n_rollout is None else min(cfg.data.n_rollout, num_episodes)
    return split_episodes(n, cfg.data.split_ratio, cfg.data.split_seed)


def _check_windows(manifest: dict[str, Any], cfg: Config, path: str) -> None:
    """The train split needs a window, and so does the val split when it has episodes (it is validated every
    epoch); counted from the manifest's episode lengths exactly as :func:`build_datasets` slices them."""
    lengths = np.asarray(manifest["episode_lengths"], np.int64)
    train, val = split_for(len(lengths), manifest.get("splits"), cfg)
    if len(train) == 0:
        how = (
            "the manifest's train split is empty"
            if manifest.get("splits")
            else f"int(data.split_ratio * episodes) = int({cfg.data.split_ratio} * "
            f"{len(lengths) if cfg.data.n_rollout is None else min(cfg.data.n_rollout, len(lengths))}) = 0"
        )
        raise DatasetError(
            f"{path}: the train split has no episode ({how}): generate more episodes or raise data.split_ratio"
        )
    span = window_steps(cfg)
    for name, episodes in (("train", train), ("val", val)):
        if len(episodes) and num_windows(lengths[episodes], span) == 0:
            raise DatasetError(
                f"{path}: no {name} window: the {len(episodes)} {name} episodes have at most "
                f"{int(lengths[episodes].max())} steps; {window_requirement(cfg)}: generate longer episodes "
                "(--steps) or lower frameskip/num_hist"
            )


def _describe(num_actions: int | None) -> str:
    return "continuous" if num_actions is None else f"indices of {num_actions} discrete actions"


def check_compatible(manifest: dict[str, Any], cfg: Config, path: str, *, windows: bool = True) -> None:
    """The dataset must be for ``cfg.env`` (name and per-step dims) and, with ``windows``, hold at least one
    training window (and one validation window when the val split has episodes) for ``cfg``; the error names
    both sides. Counted from the manifest alone, so a training driver can run it before any worker starts."""
    env, spaces = manifest["env"], manifest["spaces"]
    if env["name"] != cfg.env.name:
        raise DatasetError(f"{path}: dataset is for env {env['name']!r}, config env.name is {cfg.env.name!r}")
    pairs = {
        "action_dim": spaces["action"]["shape"][0],
        "proprio_dim": spaces["proprio"]["shape"][0],
        "state_dim": spaces["state"]["shape"][0],
    }
    for key, got in pairs.items():
        want = getattr(cfg.env, key)
        if got != want:
            raise DatasetError(
                f"{path}: dataset {key} = {got}, config env.{key} = {want} (env {cfg.env.name})"
            )
    stored_k = spaces["action"].get("num_actions")
    if stored_k != cfg.env.num_actions:
        raise DatasetError(
            f"{path}: dataset actions are {_describe(stored_k)}, config env.num_actions = {cfg.env.num_actions} "
            f"(env {cfg.env.name})"
        )
    stored = int(spaces["image"]["shape"][0])
    if stored != cfg.img_size and not cfg.data.allow_resize:
        raise DatasetError(
            f"{path}: dataset frames are {stored} px, config img_size is {cfg.img_size} "
            "(set data.allow_resize=true to resize frames on load)"
        )
    if windows:
        _check_windows(manifest, cfg, path)


def build_datasets(
    cfg: Config, path: str | None = None
) -> tuple[WindowDataset, WindowDataset, TrajectoryDataset, TrajectoryDataset]:
    """``(train_windows, val_windows, train_traj, val_traj)`` for ``cfg`` (reference ``get_train_val_sliced``).

    The split is the manifest's folder split when it has one (PushT's train/val), else a random split by
    trajectory with ``cfg.data.split_seed``. Statistics come from the manifest (whole dataset).
    """
    path = path or cfg.data.path
    if not path:
        raise DatasetError("data.path is not set")
    store = TrajectoryStore(path)
    # Evaluation also builds these for the val trajectories alone; the window count is the training driver's
    # check (check_compatible before any worker starts), and fit() reports an empty train set itself.
    check_compatible(store.manifest, cfg, str(path), windows=False)
    train, val = split_for(store.num_episodes, store.manifest.get("splits"), cfg)
    norm = Normalizer.from_manifest(store.manifest, enabled=cfg.data.normalize_action)
    kw = {"normalizer": norm, "img_size": cfg.img_size}
    win = {"num_frames": cfg.num_sample_frames, "frameskip": cfg.frameskip}
    return (
        WindowDataset(store, train, **win, **kw),
        WindowDataset(store, val, **win, **kw),
        TrajectoryDataset(store, train, **kw),
        TrajectoryDataset(store, val, **kw),
    )
