"""The request and response bodies of the planning service (docs/serving.md, API v1); the OpenAPI schema is
generated from these models, so every field carries its description and its bounds.

Only what a body can say on its own is checked here (types, unknown keys, sizes, ranges). What depends on the
loaded model (proprio length, image channels, ``topk <= num_samples`` after the checkpoint's defaults fill the
unset fields, an action count that is a multiple of frameskip) is checked by
:class:`serving.service.PlanningService`, which names the offending field the same way.

Pydantic and the standard library only: the HTTP client imports this module without torch.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

API_VERSION = "v1"
#: request bodies above this are refused (413) before they are parsed; no string inside one can be longer
MAX_BODY_BYTES = 8 * 2**20
MAX_B64_CHARS = MAX_BODY_BYTES
#: the largest image side the service accepts (it is resized to the model's img_size)
MAX_IMAGE_SIDE = 1024
MAX_PROPRIO_DIM = 1024
MAX_ACTION_DIM = 256
#: env steps in one action list (a rollout request, a plan response)
MAX_ACTION_STEPS = 4096
MAX_SEED = 2**63 - 1
MAX_STEPS_LEFT = 10**9

PlannerName = Literal["cem", "gd", "icem", "mppi", "mpc_cem", "mpc_gd", "mpc_icem", "mpc_mppi"]
EnvAction = Annotated[
    list[float], Field(min_length=1, max_length=MAX_ACTION_DIM, description="one env step's action")
]
Seconds = Annotated[float, Field(ge=0)]
B64Image = Annotated[str, Field(max_length=MAX_B64_CHARS, description="base64 of a PNG or JPEG file")]


class Body(BaseModel):
    """Unknown keys are an error (a misspelt ``horizn`` must not silently plan with the default)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# ---- inputs ---------------------------------------------------------------------------------------------


class ArrayB64(Body):
    """A raw uint8 image: ``data`` is the base64 of its C-order bytes, ``prod(shape)`` of them."""

    shape: list[Annotated[int, Field(ge=1, le=MAX_IMAGE_SIDE)]] = Field(
        min_length=3, max_length=3, description="[H, W, 3]: height, width, RGB channels"
    )
    dtype: Literal["uint8"] = Field("uint8", description="element type; only uint8 images")
    data: str = Field(max_length=MAX_B64_CHARS, description="base64 (standard alphabet) of the raw bytes")


def _visual_kind(value: Any) -> str:
    return "base64" if isinstance(value, str) else "array"


# One branch per form, so a bad value gets the errors of its own form only (``visual.array.shape.0``).
Visual = Annotated[
    Annotated[B64Image, Tag("base64")] | Annotated[ArrayB64, Tag("array")], Discriminator(_visual_kind)
]


class Observation(Body):
    """One observation of the environment: an RGB frame and the proprioceptive state."""

    visual: Visual = Field(
        description="RGB image (H, W, 3) uint8, H and W at most 1024: a base64 PNG or JPEG string, or a raw "
        "array; resized to the model's img_size as the evaluation does",
    )
    proprio: list[float] = Field(
        max_length=MAX_PROPRIO_DIM, description="proprioceptive state: the model's proprio_dim finite values"
    )


class PlannerParams(Body):
    """Planner settings; every field unset keeps the loaded checkpoint's ``planner.*`` value.

    Flat names map onto the config: ``num_samples``, ``topk``, ``var_scale``, ``beta`` -> the sampling
    optimizer's section (``planner.cem.*``, ``planner.icem.*`` or ``planner.mppi.*``; MPPI has no ``topk``, CEM
    no ``beta``); ``opt_steps`` -> the planner's optimizer (``planner.<cem|icem|mppi|gd>.opt_steps``); ``lr``
    -> ``planner.gd.lr``; ``temperature`` -> ``planner.mppi.temperature``; ``n_taken_actions`` ->
    ``planner.mpc.n_taken_actions``; ``alpha`` -> ``planner.objective.alpha``.
    """

    name: PlannerName | None = Field(
        None,
        description="cem / icem / mppi / gd: one open-loop plan; mpc_cem / mpc_icem / mpc_mppi / mpc_gd: receding "
        "horizon",
    )
    horizon: int | None = Field(None, ge=1, le=64, description="planning horizon in model steps")
    num_samples: int | None = Field(
        None, ge=1, le=4096, description="samples per iteration (CEM, MPPI; iCEM: the first iteration's)"
    )
    topk: int | None = Field(
        None, ge=1, le=4096, description="CEM / iCEM elites per iteration (<= num_samples)"
    )
    opt_steps: int | None = Field(
        None, ge=1, le=1000, description="optimizer iterations (CEM, iCEM, MPPI or GD)"
    )
    var_scale: float | None = Field(
        None, gt=0, le=1e3, description="initial standard deviation of the samples (CEM, iCEM, MPPI)"
    )
    beta: float | None = Field(
        None, ge=0, le=6, description="iCEM / MPPI coloured-noise exponent (0 = white)"
    )
    temperature: float | None = Field(None, gt=0, le=1e6, description="MPPI temperature (objective units)")
    lr: float | None = Field(None, gt=0, le=1e3, description="GD learning rate")
    n_taken_actions: int | None = Field(
        None, ge=1, le=64, description="MPC: model steps executed per plan (<= horizon)"
    )
    alpha: float | None = Field(None, ge=0, le=1e6, description="weight of the proprio term of the objective")


class PlanRequest(Body):
    """``POST /v1/plan``: a plan from ``obs`` to ``goal``."""

    obs: Observation = Field(description="the current observation")
    goal: Observation = Field(description="the goal observation")
    planner: PlannerParams = Field(default_factory=PlannerParams, description="planner settings")
    seed: int = Field(
        0, ge=0, le=MAX_SEED, description="the plan's RNG seed: the same request gives the same actions"
    )
    steps_left: int | None = Field(
        None,
        ge=1,
        le=MAX_STEPS_LEFT,
        description="env steps left in the episode's budget: the plan ends there",
    )


class SessionCreate(Body):
    """``POST /v1/sessions``: an MPC session towards ``goal``; its RNG stream starts at ``seed``."""

    goal: Observation = Field(description="the goal observation, kept for the whole session")
    planner: PlannerParams = Field(default_factory=PlannerParams, description="planner settings")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="the session's RNG seed")


class ActRequest(Body):
    """``POST /v1/sessions/{id}/act``: the next actions from the current observation."""

    obs: Observation = Field(description="the current observation")
    steps_left: int | None = Field(
        None,
        ge=1,
        le=MAX_STEPS_LEFT,
        description="env steps left in the episode's budget: the plan ends there (its horizon is the model steps "
        "that cover them, at most the planner's horizon), so the objective scores the episode's last frame; "
        "unset: a full-horizon plan",
    )


class RolloutRequest(Body):
    """``POST /v1/rollout``: the model's imagination of ``actions`` from ``obs``."""

    obs: Observation = Field(description="the first observation")
    actions: list[EnvAction] = Field(
        min_length=1,
        max_length=MAX_ACTION_STEPS,
        description="env steps (env units, each the model's action_dim); a multiple of frameskip",
    )
    decode: bool = Field(
        True, description="decode the imagined frames to PNGs (when the model has a decoder)"
    )


# ---- outputs --------------------------------------------------------------------------------------------


class Timings(Body):
    """Where a request's time went, in seconds."""

    queue_s: Seconds = Field(0.0, description="waiting for a batch to form and for the model")
    encode_s: Seconds = Field(0.0, description="decoding the images and encoding them with the model")
    plan_s: Seconds = Field(0.0, description="the planner call (shared by the whole batch)")


class PlanResponse(Body):
    """The planned env actions and what they cost."""

    actions: list[EnvAction] = Field(
        max_length=MAX_ACTION_STEPS,
        description="n_steps x action_dim env-unit actions: the whole plan (cem, gd) or the part to execute "
        "now (mpc_*)",
    )
    cost: float = Field(description="the planning objective of the returned plan (lower is better)")
    n_steps: int = Field(ge=0, description="env steps in actions")
    timings: Timings = Field(default_factory=Timings)
    batch_size: int = Field(ge=1, description="requests planned together in one planner call")
    request_id: str | None = Field(None, description="the request's id (also the X-Request-ID header)")


class SessionInfo(Body):
    session_id: str = Field(description="the session's id for /v1/sessions/{id}/act and DELETE")
    expires_in_s: float = Field(ge=0, description="idle seconds until the session expires")


class ActResponse(Body):
    """The next env actions of an MPC session."""

    actions: list[EnvAction] = Field(
        max_length=MAX_ACTION_STEPS, description="env-unit actions to execute now"
    )
    cost: float = Field(description="the planning objective of the current plan")
    step: int = Field(ge=1, description="plans made in this session so far, this one included")
    timings: Timings = Field(default_factory=Timings)
    batch_size: int = Field(ge=1, description="sessions planned together in one planner call")
    request_id: str | None = Field(None, description="the request's id (also the X-Request-ID header)")


class RolloutResponse(Body):
    """The imagined latents (one per model frame: the first observation, then one per frameskip steps)."""

    num_frames: int = Field(ge=1, description="model frames: 1 + len(actions) / frameskip")
    latent_shape: list[int] = Field(description="the shape of one frame's visual latent (patches, width)")
    latent_norm: list[float] = Field(description="the L2 norm of each frame's visual latent")
    frames: list[str] = Field(
        default_factory=list, description="base64 PNGs of the decoded frames (empty without a decoder)"
    )


class ModelInfo(Body):
    """``GET /v1/models``: the loaded model."""

    source: str = Field(description="the checkpoint directory or MLflow reference it was loaded from")
    env: str = Field(description="the environment the model was trained on")
    config_digest: str = Field(description="sha256 of the checkpoint's config.json")
    img_size: int = Field(description="side of the square model input images")
    action_dim: int = Field(description="env action dim per env step")
    proprio_dim: int = Field(description="proprio values per observation")
    frameskip: int = Field(description="env steps per model step")
    planner: dict[str, Any] = Field(description="the default planner config (planner.*)")


class ErrorBody(Body):
    """Every 4xx answer."""

    detail: str = Field(description="what is wrong, naming the field")
    field: str | None = Field(None, description="the dotted path of the offending field, if one")
