"""The planner and evaluation sections (reference conf/plan*.yaml and conf/planner/*.yaml)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from dinowm_core.config.base import ConfigModel


class CEMConfig(ConfigModel):
    num_samples: int = Field(300, gt=0, description="candidate action sequences per iteration")
    topk: int = Field(30, gt=0, description="elites that refit the sampling distribution (<= num_samples)")
    var_scale: float = Field(
        1.0,
        gt=0,
        description="initial standard deviation of the sampling distribution (normalized action units)",
    )
    opt_steps: int = Field(30, gt=0, description="CEM iterations per plan")
    chunk_size: int | None = Field(
        None,
        gt=0,
        description="rollouts per predictor call (B*N split so a plan fits in a few GB); None = all",
    )


class ICEMConfig(ConfigModel):
    """iCEM (Pinneri et al. 2020; dinowm_core/planning/icem.py). Defaults are the paper's: K 10 elites, 3
    iterations, beta 2, population decay 1.25, 30% of the elites kept, momentum 0.1, execute the best sequence.
    The initial std is in normalized action units (1 = the data's std; the paper's 0.5 is in [-1, 1] env units)."""

    num_samples: int = Field(300, gt=0, description="population of the first iteration (N)")
    topk: int = Field(10, gt=0, description="elites per iteration (K, >= 2)")
    opt_steps: int = Field(3, gt=0, description="iterations per plan")
    var_scale: float = Field(1.0, gt=0, description="initial std of the sampling distribution")
    beta: float = Field(
        2.0,
        ge=0,
        le=6,
        description="coloured-noise exponent: power spectrum 1/f^beta along the horizon (0 = white)",
    )
    population_decay: float = Field(
        1.25, ge=1, description="population of iteration i: max(num_samples / decay^i, 2 * topk)"
    )
    keep_elites: float = Field(
        0.3,
        ge=0,
        le=1,
        description="fraction of the elites kept into the next iteration and the next MPC call",
    )
    momentum: float = Field(
        0.1, ge=0, lt=1, description="mean and std <- momentum * old + (1 - momentum) * elite statistics"
    )
    execute: Literal["best", "mean"] = Field(
        "best", description="return the best sequence sampled (paper) or the final mean (as CEM)"
    )
    chunk_size: int | None = Field(
        None, gt=0, description="rollouts per predictor call (B*N split); None = all"
    )


class MPPIConfig(ConfigModel):
    """MPPI (dinowm_core/planning/mppi.py): softmax(-(loss - min) / temperature)-weighted mean updates."""

    num_samples: int = Field(300, gt=0, description="samples per iteration (N)")
    opt_steps: int = Field(6, gt=0, description="iterations per plan")
    var_scale: float = Field(1.0, gt=0, description="std of the perturbations (the maximum with adapt_std)")
    temperature: float = Field(
        0.01, gt=0, description="lambda, in units of the objective: small = the best sample wins"
    )
    beta: float = Field(
        0.0, ge=0, le=6, description="coloured-noise exponent of the perturbations (0 = white)"
    )
    adapt_std: bool = Field(False, description="std <- the weighted std of the samples (else fixed)")
    min_std: float = Field(0.05, gt=0, description="lower clamp of the adapted std")
    chunk_size: int | None = Field(
        None, gt=0, description="rollouts per predictor call (B*N split); None = all"
    )


class GDConfig(ConfigModel):
    lr: float = Field(1.0, gt=0, description="step size on the actions")
    opt_steps: int = Field(1000, gt=0, description="gradient steps per plan")
    action_noise: float = Field(
        0.003, ge=0, description="Gaussian noise added to the actions after each step"
    )
    sample_type: Literal["randn", "zero"] = Field(
        "randn", description="initial actions: randn (Gaussian) or zero (the env's no-op)"
    )
    optimizer: Literal["sgd", "adam"] = Field("sgd", description="sgd (the reference) or adam")


class MPCConfig(ConfigModel):
    """Receding horizon. There is no iteration cap: an episode's length is ``eval.budget`` env steps (the
    reference's ``max_iter`` is gone; saved checkpoints that still carry ``max_iter: null`` load unchanged)."""

    n_taken_actions: int = Field(
        5,
        gt=0,
        description="model steps executed per plan (<= planner.horizon); the rest warm-starts the next",
    )


class ObjectiveConfig(ConfigModel):
    mode: Literal["last", "all"] = Field(
        "last", description="last: the final frame's error; all: every frame's, weighted base**i"
    )
    alpha: float = Field(1.0, ge=0, description="weight of the proprio-embedding term")
    base: float = Field(2.0, gt=0, description="per-frame weight base for mode=all")


class PlannerConfig(ConfigModel):
    name: Literal[
        "cem", "gd", "icem", "mppi", "mpc_cem", "mpc_gd", "mpc_icem", "mpc_mppi", "cem_discrete", "mpc_cem_discrete"
    ] = Field(
        "cem",
        description="cem / icem / mppi / gd: one open-loop plan; mpc_*: replan after planner.mpc.n_taken_actions; "
        "*_discrete: CEM over a discrete action set (four_rooms, memory_maze)",
    )  # fmt: skip
    horizon: int = Field(5, description="planning horizon in model steps (each = frameskip env steps)")
    end_at_budget: bool = Field(
        False,
        description="an evaluation's plans end where the episode's env-step budget does: each plan's horizon is "
        "min(planner.horizon, model steps left), so the objective scores the frame at the budget's end "
        "(false: every plan is planner.horizon long, as the reference, which has no budget; an MPC plan then "
        "overshooting the budget is scored on a frame the episode never reaches)",
    )
    cem: CEMConfig = Field(default_factory=CEMConfig)
    gd: GDConfig = Field(default_factory=GDConfig)
    icem: ICEMConfig = Field(default_factory=ICEMConfig)
    mppi: MPPIConfig = Field(default_factory=MPPIConfig)
    mpc: MPCConfig = Field(default_factory=MPCConfig)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    amp: bool = Field(False, description="bf16 autocast in planning rollouts (fp32 objective)")
    kv_cache: bool = Field(True, description="reuse history keys/values while the context grows (exact)")
    compile: bool = Field(
        False,
        description="torch.compile the planning rollout's predictor steps (fuses norms; pays off on GPU)",
    )
    align: bool | None = Field(
        None,
        description="plan with a copy of the predictor zero-padded to an aligned width (exact); None = on CUDA",
    )

    @model_validator(mode="after")
    def _check(self) -> PlannerConfig:
        if self.horizon < 1:
            raise ValueError(f"planner.horizon must be >= 1, got {self.horizon}")
        if self.cem.topk > self.cem.num_samples:
            raise ValueError(
                f"planner.cem.topk ({self.cem.topk}) must not exceed planner.cem.num_samples "
                f"({self.cem.num_samples})"
            )
        if self.icem.topk < 2:
            raise ValueError(
                f"planner.icem.topk must be >= 2 (the std of the elites is unbiased), got {self.icem.topk}"
            )
        if self.icem.topk > self.icem.num_samples:
            raise ValueError(
                f"planner.icem.topk ({self.icem.topk}) must not exceed planner.icem.num_samples "
                f"({self.icem.num_samples})"
            )
        if self.mppi.min_std > self.mppi.var_scale:
            raise ValueError(
                f"planner.mppi.min_std ({self.mppi.min_std}) must not exceed planner.mppi.var_scale "
                f"({self.mppi.var_scale})"
            )
        if self.name.startswith("mpc_") and self.mpc.n_taken_actions > self.horizon:
            raise ValueError(
                f"planner.mpc.n_taken_actions ({self.mpc.n_taken_actions}) must not exceed planner.horizon "
                f"({self.horizon}): an MPC step can only execute actions it planned"
            )
        return self


class EvalConfig(ConfigModel):
    """Planning evaluation (reference section 5.1-5.2, 5.7; protocol of docs/evaluation.md).

    The headline protocol is a fixed env-step ``budget`` with no early stop from the simulator; the
    reference's "replan until the simulator reports success" is ``oracle_stop=true`` and is labelled so.
    """

    goal_source: Literal["dset", "random_state", "random_action", "file"] = Field(
        "random_state",
        description="dset: a val trajectory's frame goal_H steps on; random_state: the env's sampler; random_action: random actions from the start; file: eval.goal_file",
    )
    # Reference section 5.1: goal_H is both the goal distance and the planning horizon. Here the horizon is
    # planner.horizon and goal_H follows it unless set; see dinowm_core/presets.py.
    goal_H: int | None = Field(
        None,
        gt=0,
        description=(
            "dset/random_action goal distance in model steps (x frameskip env steps); None = planner.horizon "
            "(reference: horizon = goal_H). Set explicitly and different from planner.horizon with an "
            "open-loop planner (cem, gd) and a dset/random_action goal it is a config error: the plan would "
            "stop short of (or run past) the goal. MPC planners replan, so any goal_H works with them"
        ),
    )
    goal_file: str | None = Field(
        None, description="JSON or .npz targets for goal_source=file (never a pickle)"
    )
    n_evals: int = Field(50, gt=0, description="episodes per seed")
    budget: int = Field(50, gt=0, description="env steps per episode (fixed; no simulator early stop)")
    seeds: list[int] = Field(default_factory=lambda: [99], min_length=1, description="evaluation seeds")
    # reference: episode n of seed s uses s*n+1 (seed 0 repeats one episode; seeds 1, 2 overlap);
    # spawn: SeedSequence([s, n]) (distinct episodes). See dinowm_core/planning/goals.py.
    seed_scheme: Literal["spawn", "reference"] = Field(
        "spawn",
        description="episode seeds: spawn (SeedSequence([seed, n]), distinct) or reference (seed * n + 1)",
    )
    oracle_stop: bool = Field(
        False,
        description="stop an episode at the first executed chunk that ends in simulator success (labelled)",
    )
    policy: Literal["planner", "random"] = Field("planner", description="random = uniform in the env box")
    n_plot_samples: int = Field(10, ge=0, description="videos for the first n episodes of each seed")
    render_size: int | None = Field(None, gt=0, description="env render size; None = img_size")
    device: str = Field("auto", description="planner device: auto (cuda if available), cpu, cuda, cuda:1")
    num_actors: int | None = Field(None, gt=0, description="Ray env actors; None = one per episode")

    @model_validator(mode="after")
    def _check(self) -> EvalConfig:
        if self.goal_source == "file" and not self.goal_file:
            raise ValueError("eval.goal_file must be set when eval.goal_source=file")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"eval.seeds must be distinct, got {self.seeds}")
        return self
