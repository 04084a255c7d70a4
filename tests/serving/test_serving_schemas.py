"""The v1 request and response models: unknown keys and out-of-range values are refused naming the field, the
limits reach the OpenAPI (JSON) schema, and responses round-trip through JSON."""

import pytest
from pydantic import ValidationError

from serving import schemas as s

OBS = {"visual": "aGk=", "proprio": [0.0, 1.0]}


def _error_locs(model, body) -> list[str]:
    with pytest.raises(ValidationError) as e:
        model.model_validate(body)
    return [".".join(str(p) for p in err["loc"]) for err in e.value.errors()]


def test_a_full_plan_request_parses_both_visual_forms():
    raw = {"shape": [2, 2, 3], "dtype": "uint8", "data": "AAAAAAAAAAAAAAAA"}
    r = s.PlanRequest.model_validate(
        {"obs": OBS, "goal": {"visual": raw, "proprio": [1, 2]}, "planner": {"name": "mpc_gd", "lr": 0.5}}
    )
    assert (
        r.obs.visual == "aGk=" and isinstance(r.goal.visual, s.ArrayB64) and r.goal.visual.shape == [2, 2, 3]
    )
    assert r.planner.name == "mpc_gd" and r.planner.horizon is None and r.seed == 0


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"obs": OBS, "goal": OBS, "horizn": 3}, "horizn"),
        ({"obs": OBS, "goal": OBS, "planner": {"horizn": 3}}, "planner.horizn"),
        ({"obs": OBS, "goal": OBS, "planner": {"horizon": 0}}, "planner.horizon"),
        ({"obs": OBS, "goal": OBS, "planner": {"horizon": 65}}, "planner.horizon"),
        ({"obs": OBS, "goal": OBS, "planner": {"num_samples": 4097}}, "planner.num_samples"),
        ({"obs": OBS, "goal": OBS, "planner": {"opt_steps": 1001}}, "planner.opt_steps"),
        ({"obs": OBS, "goal": OBS, "planner": {"lr": 0}}, "planner.lr"),
        ({"obs": OBS, "goal": OBS, "planner": {"var_scale": -1}}, "planner.var_scale"),
        ({"obs": OBS, "goal": OBS, "planner": {"alpha": -0.1}}, "planner.alpha"),
        ({"obs": OBS, "goal": OBS, "planner": {"name": "random_shooting"}}, "planner.name"),
        ({"obs": OBS, "goal": OBS, "seed": -1}, "seed"),
        ({"obs": {"visual": "aGk=", "proprio": [float("nan")]}, "goal": OBS}, "obs.proprio.0"),
        ({"obs": {"visual": "aGk=", "proprio": [0.0] * 1025}, "goal": OBS}, "obs.proprio"),
        ({"obs": OBS}, "goal"),
    ],
)
def test_bad_plan_requests_are_refused_naming_the_field(body, loc):
    assert loc in _error_locs(s.PlanRequest, body)


def test_strings_and_lists_are_capped():
    big = "A" * (s.MAX_B64_CHARS + 4)
    assert _error_locs(s.Observation, {"visual": big, "proprio": []}) == ["visual.base64"]
    raw = {"shape": [1025, 2, 3], "data": ""}
    assert _error_locs(s.Observation, {"visual": raw, "proprio": []}) == ["visual.array.shape.0"]
    actions = [[0.0, 0.0]] * (s.MAX_ACTION_STEPS + 1)
    assert "actions" in _error_locs(s.RolloutRequest, {"obs": OBS, "actions": actions})
    assert "actions" in _error_locs(s.RolloutRequest, {"obs": OBS, "actions": []})
    assert "actions.0" in _error_locs(s.RolloutRequest, {"obs": OBS, "actions": [[]]})


def test_the_json_schema_carries_descriptions_and_bounds():
    schema = s.PlanRequest.model_json_schema()
    params = schema["$defs"]["PlannerParams"]["properties"]
    horizon = next(a for a in params["horizon"]["anyOf"] if a.get("type") == "integer")
    assert (horizon["minimum"], horizon["maximum"]) == (1, 64)
    assert schema["additionalProperties"] is False
    for name in (
        "PlanRequest",
        "PlanResponse",
        "SessionCreate",
        "ActResponse",
        "RolloutResponse",
        "ModelInfo",
    ):
        props = getattr(s, name).model_json_schema()["properties"]
        assert all(p.get("description") for k, p in props.items() if k != "timings"), name


def test_responses_round_trip_through_json():
    responses = [
        s.PlanResponse(
            actions=[[0.5, -1.0]],
            cost=0.25,
            n_steps=1,
            batch_size=2,
            timings=s.Timings(queue_s=0.1, encode_s=0.2, plan_s=0.3),
            request_id="r1",
        ),  # fmt: skip
        s.ActResponse(actions=[[0.0, 1.0]], cost=1.0, step=3, batch_size=1),
        s.SessionInfo(session_id="abc", expires_in_s=600),
        s.RolloutResponse(num_frames=2, latent_shape=[64, 32], latent_norm=[1.0, 2.0], frames=["aGk="]),
        s.ErrorBody(detail="planner.topk: too big", field="planner.topk"),
    ]
    for r in responses:
        assert type(r).model_validate_json(r.model_dump_json()) == r
