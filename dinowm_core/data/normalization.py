"""Action / proprio normalization (reference DINO-WM section 2.6 ``Preprocessor``, section 3.2 table).

Two pieces:

* :class:`RunningStats` accumulates mean and unbiased std over timesteps in float64 (Chan et al.'s
  parallel merge, so shard statistics computed by different workers combine exactly as one pass would);
* :class:`Normalizer` holds the dataset's action / proprio statistics, maps per-step actions ``(..., d)``
  between env units and the model's normalized space, and round-trips through a JSON dict so a checkpoint
  can store it as ``normalization.json``.

Actions are normalized *after* division by ``action_scale`` (PushT: relative pixels / 100), as the
reference does; the stored action statistics are therefore statistics of ``action / action_scale``.
Deviation: the reference hard-codes PushT's statistics; we always use the dataset's own statistics.

Discrete actions (``num_actions`` set, e.g. four_rooms): the env action is an index, stored as (..., 1); the
model space is its one-hot (..., num_actions), with no mean/std. :meth:`Normalizer.normalize_actions` maps
indices to one-hots and :meth:`Normalizer.denormalize_actions` takes the argmax of each row, so a relaxed
(continuous) plan also maps to valid env actions. Every caller that converts actions goes through these two
methods (training windows, the evaluation adapter, the planning service), so the frameskip concatenation
``(f d) -> f * num_actions`` needs nothing else.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

# Dims whose std is (near) zero, e.g. the deformables' dummy proprio, would blow up; the reference adds
# 1e-6 to the deformable std. We divide by 1 instead, which yields the same (zero) normalized values.
MIN_STD = 1e-6


class RunningStats:
    """Streaming per-dimension count / mean / sum of squared deviations (float64)."""

    def __init__(self, dim: int) -> None:
        self.count = 0
        self.mean = np.zeros(dim, np.float64)
        self.m2 = np.zeros(dim, np.float64)

    def update(self, x: np.ndarray) -> None:
        """Add rows ``x`` (N, dim)."""
        x = np.asarray(x, np.float64).reshape(len(x), -1)
        if len(x) == 0:
            return
        other = RunningStats(x.shape[1])
        other.count = len(x)
        other.mean = x.mean(axis=0)
        other.m2 = ((x - other.mean) ** 2).sum(axis=0)
        self.merge(other)

    def merge(self, other: RunningStats) -> None:
        if other.count == 0:
            return
        n = self.count + other.count
        delta = other.mean - self.mean
        self.mean = self.mean + delta * (other.count / n)
        self.m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / n)
        self.count = n

    @property
    def std(self) -> np.ndarray:
        """Unbiased (ddof=1) standard deviation, as ``torch.std`` in the reference."""
        if self.count < 2:
            return np.zeros_like(self.mean)
        return np.sqrt(self.m2 / (self.count - 1))

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean.tolist(), "m2": self.m2.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunningStats:
        s = cls(len(d["mean"]))
        s.count = int(d["count"])
        s.mean = np.asarray(d["mean"], np.float64)
        s.m2 = np.asarray(d["m2"], np.float64)
        return s


def _as_tensor_like(x: Any, ref: np.ndarray) -> Any:
    # torch is imported lazily (generation workers never need it): if it is not loaded, x is no tensor.
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return torch.as_tensor(ref, dtype=x.dtype, device=x.device)
    return ref.astype(np.asarray(x).dtype if np.asarray(x).dtype.kind == "f" else np.float32)


@dataclass(frozen=True)
class Normalizer:
    """Per-step action and proprio statistics; works on numpy arrays and torch tensors alike."""

    action_mean: np.ndarray
    action_std: np.ndarray
    proprio_mean: np.ndarray
    proprio_std: np.ndarray
    action_scale: float = 1.0
    #: discrete actions: size of the action set (model space = one-hot); None = continuous
    num_actions: int | None = None

    def __post_init__(self) -> None:
        for name in ("action_mean", "action_std", "proprio_mean", "proprio_std"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), np.float64).reshape(-1))
        if (
            self.action_mean.shape != self.action_std.shape
            or self.proprio_mean.shape != self.proprio_std.shape
        ):
            raise ValueError("normalizer: mean and std shapes differ")
        if self.action_scale <= 0:
            raise ValueError(f"normalizer: action_scale must be positive, got {self.action_scale}")
        if self.num_actions is not None and (self.num_actions < 2 or self.action_mean.shape != (1,)):
            raise ValueError(
                f"normalizer: discrete actions need num_actions >= 2 and a 1-dim stored index, got "
                f"num_actions={self.num_actions}, action dim {self.action_mean.shape[0]}"
            )

    @property
    def model_action_dim(self) -> int:
        """Per-step width of an action in model space (d, or num_actions for a one-hot)."""
        return self.action_mean.shape[0] if self.num_actions is None else int(self.num_actions)

    @staticmethod
    def _safe(std: np.ndarray) -> np.ndarray:
        return np.where(std < MIN_STD, 1.0, std)

    @classmethod
    def identity(
        cls, action_dim: int, proprio_dim: int, action_scale: float = 1.0, num_actions: int | None = None
    ) -> Normalizer:
        """Reference behaviour with ``normalize_action=False``: mean 0, std 1 (actions still scaled)."""
        return cls(
            np.zeros(action_dim),
            np.ones(action_dim),
            np.zeros(proprio_dim),
            np.ones(proprio_dim),
            action_scale,
            num_actions,
        )

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], enabled: bool = True) -> Normalizer:
        spaces = manifest["spaces"]
        scale = float(manifest["env"].get("action_scale", 1.0))
        num_actions = spaces["action"].get("num_actions")
        if not enabled:
            return cls.identity(
                spaces["action"]["shape"][0], spaces["proprio"]["shape"][0], scale, num_actions
            )
        stats = manifest["normalization"]
        return cls(
            stats["action"]["mean"],
            stats["action"]["std"],
            stats["proprio"]["mean"],
            stats["proprio"]["std"],
            scale,
            num_actions,
        )

    def normalize_actions(self, a: Any) -> Any:
        """Env-unit actions ``(..., d)`` -> model space: ``(a / action_scale - mean) / std`` (discrete: indices
        ``(..., 1)`` -> one-hots ``(..., num_actions)``)."""
        if self.num_actions is not None:
            return self._one_hot(a)
        return (a / self.action_scale - _as_tensor_like(a, self.action_mean)) / _as_tensor_like(
            a, self._safe(self.action_std)
        )

    def denormalize_actions(self, a: Any) -> Any:
        """Model-space actions ``(..., d)`` -> env units (inverse of :meth:`normalize_actions`; discrete: the
        argmax of each ``(..., num_actions)`` row, as an index ``(..., 1)``)."""
        if self.num_actions is not None:
            if a.shape[-1] != self.num_actions:
                raise ValueError(
                    f"normalizer: expected (..., {self.num_actions}) one-hots, got {tuple(a.shape)}"
                )
            idx = a.argmax(-1)[..., None]
            torch = sys.modules.get("torch")
            if torch is not None and isinstance(idx, torch.Tensor):
                return idx.to(a.dtype if a.dtype.is_floating_point else torch.float64)
            return idx.astype(np.float64)
        return (
            a * _as_tensor_like(a, self._safe(self.action_std)) + _as_tensor_like(a, self.action_mean)
        ) * (self.action_scale)

    def _one_hot(self, a: Any) -> Any:
        k = int(self.num_actions)  # type: ignore[arg-type]
        if a.shape[-1] != 1:
            raise ValueError(f"normalizer: discrete actions are indices (..., 1), got {tuple(a.shape)}")
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(a, torch.Tensor):
            idx = a[..., 0].round().long()
            if bool(((idx < 0) | (idx >= k) | (idx != a[..., 0])).any()):
                raise ValueError(f"normalizer: discrete actions must be whole numbers in [0, {k})")
            return torch.nn.functional.one_hot(idx, k).to(
                a.dtype if a.dtype.is_floating_point else torch.float32
            )
        a = np.asarray(a)
        idx = np.rint(a[..., 0]).astype(np.int64)
        if np.any((idx < 0) | (idx >= k) | (idx != a[..., 0])):
            raise ValueError(f"normalizer: discrete actions must be whole numbers in [0, {k})")
        return np.eye(k, dtype=a.dtype if a.dtype.kind == "f" else np.float32)[idx]

    def normalize_proprio(self, p: Any) -> Any:
        return (p - _as_tensor_like(p, self.proprio_mean)) / _as_tensor_like(p, self._safe(self.proprio_std))

    def denormalize_proprio(self, p: Any) -> Any:
        return p * _as_tensor_like(p, self._safe(self.proprio_std)) + _as_tensor_like(p, self.proprio_mean)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "action_mean": self.action_mean.tolist(),
            "action_std": self.action_std.tolist(),
            "proprio_mean": self.proprio_mean.tolist(),
            "proprio_std": self.proprio_std.tolist(),
            "action_scale": self.action_scale,
        }
        if self.num_actions is not None:  # only for discrete envs: continuous checkpoints stay byte-identical
            out["num_actions"] = int(self.num_actions)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalizer:
        keys = {"action_mean", "action_std", "proprio_mean", "proprio_std", "action_scale"}
        missing, extra = keys - set(d), set(d) - keys - {"num_actions"}
        if missing or extra:
            raise ValueError(f"normalizer dict: missing keys {sorted(missing)}, unknown keys {sorted(extra)}")
        return cls(**{k: d[k] for k in keys}, num_actions=d.get("num_actions"))
