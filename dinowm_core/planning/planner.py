"""The one planner interface: ``make_planner(cfg, wm).plan(z_obs, z_goal, state) -> (result, state)``.

CEM, iCEM, MPPI and GD are optimizers of one :class:`~dinowm_core.planning.problem.PlanProblem`; a
:class:`Planner` wraps any of them, open loop or receding horizon (MPC, reference section 5.6) depending on the
config alone (``planner.name``: ``cem``, ``icem``, ``mppi``, ``gd`` or the same with ``mpc_``; ``cem_discrete``,
``mpc_cem_discrete`` for a discrete env, over the ``action_set`` passed to :func:`make_planner`). An MPC plan
executes its first ``n_taken_actions`` steps and keeps the untaken tail as the next plan's warm start (padded up
to H by the optimizer); iCEM also keeps its shifted elites. An open-loop plan is executed whole.

Everything that must survive between calls is in :class:`PlanState`, a plain value the caller holds (the
evaluation loop, a Ray actor, an HTTP session): the warm start, the executed actions that the next call's
context frames need, each episode's RNG position and, for memory predictors, their memory. It serializes to
bytes (safetensors: tensors and string metadata, no pickle) and back, so a service can hand it to a client.

Deliberate deviations: the reference's plan.py forces ``n_taken_actions = horizon`` (which removes warm starts,
bug 12) and loops until the simulator reports success (``max_iter: null``); here ``n_taken_actions`` is honoured
(at most the horizon: a config error otherwise) and the episode length is the evaluator's fixed env-step budget.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from dinowm_core.config import PlannerConfig
from dinowm_core.planning.cem import cem, cem_discrete
from dinowm_core.planning.common import ActionBounds, Obs, PlanResult
from dinowm_core.planning.gd import gd
from dinowm_core.planning.icem import icem
from dinowm_core.planning.mppi import mppi
from dinowm_core.planning.problem import PlanProblem
from dinowm_core.planning.rollout import Rollout

STATE_FORMAT = "dinowm-plan-state/1"
#: the optional action tensors of a PlanState (a reader ignores the names it does not know: format /1 stays)
ACTION_TENSORS = ("warm_start", "past_actions", "warm_elites")
#: planner.name without ``mpc_`` -> the optimizer's config section
KINDS = ("cem", "icem", "mppi", "gd", "cem_discrete")


@dataclass(frozen=True)
class PlanState:
    """What a planner carries between calls for B episodes. A value: :meth:`Planner.plan` returns a new one.

    rng (B, L) uint8: each episode's generator state (CPU tensor; ``rng_device`` is where the generator runs);
    warm_start (B, H - n_taken, A) or None; past_actions (B, k, A) or None: the last executed model actions,
    k <= num_hist - 1, the context actions of the next call's earlier frames; step: plan calls so far;
    memory: a memory predictor's per-episode tensors (empty for the ViT predictor); warm_elites
    (B, k, H - n_taken, A) or None: iCEM's kept elites, shifted like the warm start (states written before it
    existed read as None).
    """

    rng: torch.Tensor
    rng_device: str = "cpu"
    warm_start: torch.Tensor | None = None
    past_actions: torch.Tensor | None = None
    step: int = 0
    memory: dict[str, torch.Tensor] = field(default_factory=dict)
    warm_elites: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.rng.dtype != torch.uint8 or self.rng.ndim != 2:
            raise ValueError(
                f"plan state: rng must be (B, L) uint8, got {tuple(self.rng.shape)} {self.rng.dtype}"
            )
        b = self.rng.shape[0]
        for name in ("warm_start", "past_actions"):
            t = getattr(self, name)
            if t is not None and (t.ndim != 3 or t.shape[0] != b):
                raise ValueError(f"plan state: {name} must be ({b}, n, A), got {tuple(t.shape)}")
        e = self.warm_elites
        if e is not None and (e.ndim != 4 or e.shape[0] != b):
            raise ValueError(f"plan state: warm_elites must be ({b}, k, n, A), got {tuple(e.shape)}")
        if self.step < 0:
            raise ValueError(f"plan state: step must be >= 0, got {self.step}")

    @property
    def batch_size(self) -> int:
        return self.rng.shape[0]

    def generators(self) -> list[torch.Generator]:
        """One generator per episode, at the state's RNG position."""
        gens = []
        for s in self.rng:
            g = torch.Generator(self.rng_device)
            g.set_state(s.clone())
            gens.append(g)
        return gens

    def context_actions(self, n_frames: int) -> torch.Tensor | None:
        """The executed actions between ``n_frames`` context frames (B, n_frames - 1, A), or None for one frame."""
        if n_frames <= 1:
            return None
        have = 0 if self.past_actions is None else self.past_actions.shape[1]
        if have < n_frames - 1:
            raise ValueError(
                f"{n_frames} context frames need the {n_frames - 1} actions executed between them; the plan "
                f"state holds {have} (pass fewer frames, or a state with past_actions)"
            )
        return self.past_actions[:, have - (n_frames - 1) :]  # type: ignore[index]

    def to_bytes(self) -> bytes:
        """safetensors bytes: tensors + string metadata (never a pickle)."""
        tensors = {"rng": self.rng.contiguous()}
        for name in ACTION_TENSORS:
            t = getattr(self, name)
            if t is not None:
                tensors[name] = t.detach().float().cpu().contiguous()
        for name, t in self.memory.items():
            tensors[f"memory/{name}"] = t.detach().cpu().contiguous()
        meta = {"format": STATE_FORMAT, "rng_device": self.rng_device, "step": str(self.step)}
        return st_save(tensors, metadata=meta)

    @classmethod
    def from_bytes(cls, data: bytes) -> PlanState:
        """Inverse of :meth:`to_bytes`; raises ``ValueError`` on anything else."""
        try:
            tensors = st_load(data)
            meta = _metadata(data)
        except Exception as e:  # safetensors raises its own error types on malformed input
            raise ValueError(f"plan state: not a valid state ({type(e).__name__}: {e})") from None
        if meta.get("format") != STATE_FORMAT or "rng" not in tensors:
            raise ValueError(f"plan state: expected format {STATE_FORMAT!r}, got {meta.get('format')!r}")
        try:
            step = int(meta.get("step", "0"))
        except ValueError:
            raise ValueError(f"plan state: bad step {meta.get('step')!r}") from None
        memory = {k.removeprefix("memory/"): v for k, v in tensors.items() if k.startswith("memory/")}
        return cls(
            rng=tensors["rng"], rng_device=meta.get("rng_device", "cpu"), warm_start=tensors.get("warm_start"),
            past_actions=tensors.get("past_actions"), step=step, memory=memory,
            warm_elites=tensors.get("warm_elites"),
        )  # fmt: skip

    def cut(self, horizon: int) -> PlanState:
        """The same state with its warm start (and iCEM's kept elites) at most ``horizon`` steps long: what a
        shorter plan than the last one can start from."""
        ws, el = self.warm_start, self.warm_elites
        return replace(self, warm_start=None if ws is None else ws[:, :horizon],
                       warm_elites=None if el is None else el[:, :, :horizon])  # fmt: skip

    def to(self, device: torch.device | str) -> PlanState:
        """The same state with its action tensors on ``device`` (the RNG states stay on the CPU)."""
        move = {n: getattr(self, n).to(device) for n in ACTION_TENSORS if getattr(self, n) is not None}
        return replace(self, **move, memory={k: v.to(device) for k, v in self.memory.items()})


def _metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors buffer (8-byte little-endian header length, then JSON)."""
    n = int.from_bytes(data[:8], "little")
    return dict(json.loads(data[8 : 8 + n]).get("__metadata__") or {})


class Planner:
    """CEM, iCEM, MPPI or GD, open loop or MPC, behind ``plan(z_obs, z_goal, state) -> (PlanResult, PlanState)``.

    Built by :func:`make_planner`. ``closed_loop`` says whether a plan is meant to be followed by another (MPC)
    or executed whole; ``n_execute`` is how many model steps of each plan the caller runs (``result.execute``).
    """

    def __init__(
        self,
        cfg: PlannerConfig,
        wm: object,
        *,
        bounds: ActionBounds | None = None,
        zero_action: torch.Tensor | None = None,
        action_dim: int | None = None,
        action_set: torch.Tensor | None = None,
    ) -> None:
        self.cfg, self.wm, self.bounds = cfg, wm, bounds
        self.zero_action, self.action_dim, self.action_set = zero_action, action_dim, action_set
        self.kind = cfg.name.removeprefix("mpc_")
        if self.kind not in KINDS:
            raise ValueError(f"unknown planner {cfg.name!r}")
        if self.kind == "cem_discrete" and action_set is None:
            raise ValueError(
                f"planner.name={cfg.name} needs the env's discrete action set (action_set): a discrete env "
                "(env.num_actions) and its checkpoint's normalizer provide it"
            )
        self.closed_loop = cfg.name.startswith("mpc_")
        self.n_execute = cfg.mpc.n_taken_actions if self.closed_loop else cfg.horizon
        if not 1 <= self.n_execute <= cfg.horizon:
            raise ValueError(f"n_taken_actions must be in [1, horizon={cfg.horizon}], got {self.n_execute}")
        # The context the next call may need: the actions between up to num_hist frames.
        self.num_past = max(0, int(getattr(wm, "num_hist", 1)) - 1)
        self.rollout = Rollout(wm, kv_cache=cfg.kv_cache, amp=cfg.amp, align=cfg.align, compile=cfg.compile)

    @property
    def horizon(self) -> int:
        return self.cfg.horizon

    def init_state(
        self,
        batch_size: int,
        seeds: Sequence[int] | None = None,
        *,
        device: torch.device | str = "cpu",
        past_actions: torch.Tensor | None = None,
    ) -> PlanState:
        """A fresh state for ``batch_size`` episodes: episode b draws from a generator seeded ``seeds[b]``
        (default: seeds drawn from torch's global RNG), on ``device``; ``past_actions`` (B, k, A) seeds the
        context of a first call with several frames."""
        if seeds is None:
            seeds = torch.randint(0, 2**62, (batch_size,)).tolist()
        if len(seeds) != batch_size:
            raise ValueError(f"got {len(seeds)} seeds for {batch_size} episodes")
        dev = torch.device(device)
        rng = torch.stack([torch.Generator(dev).manual_seed(int(s)).get_state() for s in seeds])
        return PlanState(rng=rng, rng_device=str(dev), past_actions=past_actions)

    def plan(
        self, z_obs: Obs, z_goal: Obs, state: PlanState | None = None, *, horizon: int | None = None
    ) -> tuple[PlanResult, PlanState]:
        """z_obs (B, n, ...) current (and earlier) latents, z_goal (B|1, 1, ...) -> (result with ``execute``
        (B, min(n_execute, horizon), A), the next state). ``state`` None: a fresh state (global-RNG seeds).
        ``horizon``: this call's horizon, at most ``planner.horizon`` (default): an episode's last plans end
        at its budget (``planner.end_at_budget``); a longer warm start is cut to it."""
        h = self.cfg.horizon if horizon is None else int(horizon)
        if not 1 <= h <= self.cfg.horizon:
            raise ValueError(f"a plan's horizon must be in [1, planner.horizon={self.cfg.horizon}], got {h}")
        n_execute = min(self.n_execute, h)
        b = z_obs["visual"].shape[0]
        if state is None:
            state = self.init_state(b, device=z_obs["visual"].device)
        if state.batch_size != b:
            raise ValueError(f"the plan state holds {state.batch_size} episodes but got a batch of {b}")
        state = state.to(z_obs["visual"].device)  # e.g. a state restored from bytes, planned on a GPU
        memory = self._memory(state, b, z_obs["visual"].device)
        context = state.context_actions(z_obs["visual"].shape[1])
        if h < self.cfg.horizon:
            state = state.cut(h)
        problem = PlanProblem(
            self.wm, self.rollout, z_obs, z_goal, h, self.cfg.objective,
            context_actions=context, bounds=self.bounds, memory=memory or None,
            chunk_size=getattr(self._section, "chunk_size", None), action_dim=self.action_dim,
        )  # fmt: skip
        gens = state.generators()
        result = self._optimize(problem, state, gens)
        if result.actions.shape[1] != h:
            raise ValueError(f"the optimizer returned {result.actions.shape[1]} steps, expected {h}")
        result.execute = result.actions[:, :n_execute]
        # iCEM executes its best sequence but shifts its distribution's mean (paper: shift-initialization).
        tail = result.info.get("mean", result.actions)[:, n_execute:]
        elites = result.info.get("elites")
        keep = self.closed_loop and tail.shape[1] > 0
        if memory:
            memory = self._remember(memory, z_obs, context, result.execute)
        return result, PlanState(
            rng=torch.stack([g.get_state() for g in gens]), rng_device=state.rng_device,
            warm_start=tail.detach().clone() if keep else None,
            past_actions=self._past(state.past_actions, result.execute), step=state.step + 1, memory=memory,
            warm_elites=elites[:, :, n_execute:].detach().clone() if keep and elites is not None else None,
        )  # fmt: skip

    @property
    def _section(self) -> object:
        """The optimizer's config section (``planner.cem``, ``planner.icem``, ...)."""
        return getattr(self.cfg, "cem" if self.kind == "cem_discrete" else self.kind)

    def _optimize(self, problem: PlanProblem, state: PlanState, gens: list[torch.Generator]) -> PlanResult:
        """One optimizer call: the dispatch on ``planner.name``."""
        init = state.warm_start
        if self.kind == "cem":
            return cem(problem, self.cfg.cem, init=init, generator=gens)
        if self.kind == "cem_discrete":
            return cem_discrete(problem, self.cfg.cem, self.action_set, init=init, generator=gens)  # type: ignore[arg-type]
        if self.kind == "icem":
            return icem(problem, self.cfg.icem, init=init, init_elites=state.warm_elites, generator=gens)
        if self.kind == "mppi":
            return mppi(problem, self.cfg.mppi, init=init, generator=gens)
        return gd(problem, self.cfg.gd, init=init, generator=gens, zero_action=self.zero_action)

    def _memory(self, state: PlanState, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
        """The episodes' memory (a fresh one on the first call of a memory predictor; ``{}`` without one)."""
        has = getattr(self.wm, "has_memory", False)
        if not has:
            return {}
        return dict(state.memory) if state.memory else self.wm.init_memory(batch, device=device)

    @torch.no_grad()
    def _remember(self, memory: dict[str, torch.Tensor], z_obs: Obs, context: torch.Tensor | None,
                  execute: torch.Tensor) -> dict[str, torch.Tensor]:  # fmt: skip
        """Write the real context frames that executing ``execute`` pushes out of the next call's context.

        The next call is taken to pass as many context frames as this one, ``n_execute`` frames later (the
        evaluation loop and the service pass the current frame alone: every observed frame is then written once,
        right after it was planned from). So the first ``min(n, n_execute)`` frames of this call's ``n`` leave
        the window; frames the caller never passes are never remembered. Each is written once, with the action
        executed from it.
        """
        n, k = z_obs["visual"].shape[1], execute.shape[1]
        leaving = min(n, k)
        if leaving == 0:
            return memory
        actions = (
            execute[:, :1] if context is None else torch.cat([context.to(execute), execute[:, :1]], dim=1)
        )
        tokens = self.wm.combine(z_obs, self.wm.encode_act(actions))  # (B, n, P', D): the frames as trained
        _, memory = self.wm.predict_memory(tokens, memory, commit=leaving)
        return memory

    def _past(self, past: torch.Tensor | None, executed: torch.Tensor) -> torch.Tensor | None:
        if self.num_past == 0:
            return None
        both = executed.detach() if past is None else torch.cat([past.to(executed), executed.detach()], dim=1)
        return both[:, -self.num_past :].clone()


def budget_horizon(horizon: int, frameskip: int, steps_left: int) -> int:
    """The horizon of a plan that ends with its episode's budget: the model steps covering the ``steps_left``
    env steps left, at most ``horizon`` (the planner's)."""
    if steps_left < 1 or frameskip < 1:
        raise ValueError(f"steps_left and frameskip must be >= 1, got {steps_left}, {frameskip}")
    return min(horizon, math.ceil(steps_left / frameskip))


def make_planner(
    cfg: PlannerConfig,
    wm: object,
    *,
    bounds: ActionBounds | None = None,
    zero_action: torch.Tensor | None = None,
    action_dim: int | None = None,
    action_set: torch.Tensor | None = None,
) -> Planner:
    """The planner that ``cfg`` (``planner.*``) names, for world model ``wm``.

    ``bounds``: optional box in model action space (the reference has none); ``zero_action`` (A,): the env's
    no-op in model space for GD's ``sample_type=zero``; ``action_dim``: only for models without an action encoder;
    ``action_set`` (K, d): the rows one env step can take (``cem_discrete``; see ``discrete_action_set``).
    """
    return Planner(
        cfg, wm, bounds=bounds, zero_action=zero_action, action_dim=action_dim, action_set=action_set
    )
