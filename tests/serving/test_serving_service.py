"""PlanningService without a web framework: loading, batched plans equal to lone ones bit for bit, mixed good
and bad requests, every refusal naming its field, rollouts."""

import hashlib
import json

import numpy as np
import pytest
import torch

from dinowm_core.evaluation.adapter import ModelAdapter
from dinowm_core.planning.planner import make_planner
from serving.schemas import PlanRequest, RolloutRequest
from serving.service import PlanningService, RequestError
from tests.serving.serving_helpers import (
    decode_png,
    frame,
    image_b64,
    model_obs,
    obs,
    proprio,
    raw_b64,
    serving_checkpoint,
    serving_wm,
)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return serving_checkpoint(tmp_path_factory.mktemp("serving"))


@pytest.fixture(scope="module")
def service(ckpt):
    return PlanningService.load(str(ckpt))


def req(i: int, planner: dict | None = None, **kw) -> PlanRequest:
    body = {"obs": obs(i), "goal": obs(100 + i), "seed": 7 * i, "planner": planner or {}}
    return PlanRequest.model_validate({**body, **kw})


def test_load_by_directory_reports_the_model(ckpt, service):
    info = service.info()
    assert info.source == str(ckpt) and info.env == "wall"
    assert info.config_digest == hashlib.sha256((ckpt / "config.json").read_bytes()).hexdigest()
    assert (info.img_size, info.action_dim, info.proprio_dim, info.frameskip) == (64, 2, 2, 5)
    assert info.planner == json.loads((ckpt / "config.json").read_text())["planner"]


def test_load_refuses_a_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError):
        PlanningService.load(str(tmp_path / "nope"), tracking_uri=f"sqlite:///{tmp_path}/none.db")


@pytest.mark.parametrize(
    "planner", [{"name": "mpc_cem", "n_taken_actions": 2}, {"name": "gd", "opt_steps": 3}]
)
def test_a_batched_plan_equals_each_request_planned_alone_bit_for_bit(service, planner):
    requests = [req(i, planner) for i in range(3)]
    batched = service.plan(requests)
    assert [r.batch_size for r in batched] == [3, 3, 3]
    for r, alone in zip(batched, [service.plan([q])[0] for q in requests], strict=True):
        assert alone.batch_size == 1
        assert np.array_equal(np.array(r.actions), np.array(alone.actions)) and r.cost == alone.cost
    n_model_steps = planner.get("n_taken_actions", 5)
    assert all(r.n_steps == n_model_steps * 5 == len(r.actions) for r in batched)
    assert batched[0].actions != batched[1].actions  # different observations and seeds, different plans


def test_plan_equals_the_planner_called_directly_in_env_units(service):
    wm = serving_wm()
    adapter = ModelAdapter(wm)
    planner = make_planner(wm.cfg.planner, wm, zero_action=service.zero_action)
    z_obs, z_goal = adapter.encode(model_obs([0, 1])), adapter.encode(model_obs([100, 101]))
    result, _ = planner.plan(z_obs, z_goal, planner.init_state(2, [0, 7]))
    expected = adapter.to_env_actions(result.execute)
    got = service.plan([req(0), req(1)])
    assert np.array_equal(np.array([g.actions for g in got]), expected)
    assert [g.cost for g in got] == result.loss.tolist()
    # Env units, not model units: the checkpoint's action normalization is undone.
    assert not np.allclose(expected.reshape(2, -1, 10), result.execute.numpy())


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (
            {"name": "mpc_gd", "lr": 1e-5, "opt_steps": 3, "alpha": 0},
            {"gd.lr": 1e-5, "gd.opt_steps": 3, "cem.opt_steps": 2, "objective.alpha": 0.0},
        ),
        (
            {"name": "cem", "opt_steps": 4, "num_samples": 30, "topk": 6, "var_scale": 2.5e-7},
            {
                "cem.opt_steps": 4,
                "gd.opt_steps": 1000,
                "cem.num_samples": 30,
                "cem.topk": 6,
                "cem.var_scale": 2.5e-7,
            },
        ),
        ({"horizon": 7, "n_taken_actions": 7}, {"name": "mpc_cem", "horizon": 7, "mpc.n_taken_actions": 7}),
        ({}, {"name": "mpc_cem", "horizon": 5, "cem.num_samples": 12, "objective.alpha": 1.0}),
    ],
)
def test_flat_planner_settings_map_onto_the_checkpoint_config(service, params, expected):
    from serving.schemas import PlannerParams

    cfg = service.planner_config(PlannerParams.model_validate(params)).model_dump()
    for dotted, value in expected.items():
        node = cfg
        for part in dotted.split("."):
            node = node[part]
        assert node == value, dotted


def test_equal_settings_share_a_batch_and_different_ones_do_not(service):
    out = service.plan(
        [
            req(0),
            req(1, {"name": "cem", "horizon": 2}),
            req(2),
            req(3, {"horizon": 5}),
            req(4, {"name": "cem", "horizon": 2}),
        ]
    )
    # horizon 5 is the checkpoint's own: the same resolved config as no settings at all
    assert [r.batch_size for r in out] == [3, 2, 3, 3, 2]
    assert [r.n_steps for r in out] == [25, 10, 25, 25, 10]  # open-loop cem: the whole 2-step plan
    assert out[1].actions == service.plan([req(1, {"name": "cem", "horizon": 2})])[0].actions


def test_bad_requests_get_their_own_errors_while_the_others_are_served(service):
    bad_obs = {"visual": "not base64!", "proprio": [0.0, 0.0]}
    requests = [req(0), req(1, obs=bad_obs), req(2), req(3, {"topk": 50}), req(4)]
    out = service.plan(requests)
    assert [type(r).__name__ for r in out] == [
        "PlanResponse",
        "RequestError",
        "PlanResponse",
        "RequestError",
        "PlanResponse",
    ]
    assert (out[1].status, out[1].field) == (400, "obs.visual")
    assert (out[3].status, out[3].field) == (422, "planner.topk")
    assert [r.batch_size for r in out[::2]] == [3, 3, 3]
    assert out[2].actions == service.plan([requests[2]])[0].actions


def _grey(i):
    return {"visual": image_b64(frame(i), mode="L"), "proprio": proprio(i)}


def _raw(i, **kw):
    return {"visual": {**raw_b64(frame(i)), **kw}, "proprio": proprio(i)}


CASES = {
    "visual not base64": (dict(obs={"visual": "%%%", "proprio": [0, 0]}), 400, "obs.visual"),
    "visual not an image": (dict(goal={"visual": "aGVsbG8=", "proprio": [0, 0]}), 400, "goal.visual"),
    "visual greyscale": (dict(obs=_grey(0)), 422, "obs.visual"),
    "visual too large": (
        dict(obs={"visual": image_b64(np.zeros((1025, 8, 3), np.uint8)), "proprio": [0, 0]}),
        413,
        "obs.visual",
    ),
    "raw array short": (dict(obs=_raw(0, data="AAAA")), 400, "obs.visual.data"),
    "raw array 4 channels": (dict(obs=_raw(0, shape=[64, 48, 4])), 422, "obs.visual.shape"),
    "proprio length": (dict(goal={"visual": image_b64(frame(1)), "proprio": [0.0]}), 422, "goal.proprio"),
    "topk > num_samples": (dict(planner={"num_samples": 4, "topk": 5}), 422, "planner.topk"),
    "num_samples < topk": (dict(planner={"num_samples": 2}), 422, "planner.num_samples"),
    "n_taken > horizon": (dict(planner={"n_taken_actions": 6}), 422, "planner.n_taken_actions"),
    "horizon < n_taken": (dict(planner={"horizon": 3}), 422, "planner.horizon"),
}


@pytest.mark.parametrize("case", CASES)
def test_each_refusal_names_its_field(service, case):
    body, status, field = CASES[case]
    (out,) = service.plan([req(0, **body)])
    assert isinstance(out, RequestError), out
    assert (out.status, out.field) == (status, field), out
    assert out.message


def test_non_finite_proprio_is_refused_even_past_the_schema(service):
    good = req(0)
    bad = good.model_copy(update={"obs": good.obs.model_copy(update={"proprio": [float("nan"), 0.0]})})
    (out,) = service.plan([bad])
    assert isinstance(out, RequestError) and (out.status, out.field) == (422, "obs.proprio")


def test_png_jpeg_and_raw_arrays_are_all_accepted_and_png_equals_raw(service):
    png, raw = req(0), req(0, obs={"visual": raw_b64(frame(0)), "proprio": proprio(0)})
    jpeg = req(0, obs={"visual": image_b64(frame(0), fmt="JPEG"), "proprio": proprio(0)})
    wide = req(0, obs={"visual": image_b64(frame(0, 48, 80)), "proprio": proprio(0)})
    out = service.plan([png, raw, jpeg, wide])
    assert all(not isinstance(o, RequestError) for o in out), out
    assert out[0].actions == out[1].actions  # lossless encodings of one frame: one plan


def test_large_frames_are_resized_as_the_evaluation_does(service):
    big = frame(5, 256, 256)
    ours = service._prepare(PlanRequest.model_validate({**req(0).model_dump(), "obs": {
        "visual": image_b64(big), "proprio": proprio(0)}}).obs, "obs")  # fmt: skip
    theirs = ModelAdapter(serving_wm()).obs_to_model({"visual": big[None], "proprio": np.array([proprio(0)])})
    for k in ("visual", "proprio"):
        assert torch.equal(ours[k], theirs[k])


def test_rollout_imagines_the_actions_and_decodes_pngs(service):
    actions = np.random.default_rng(0).normal(size=(10, 2)).tolist()
    out = service.rollout(RolloutRequest(obs=obs(0), actions=actions))
    assert out.num_frames == 3 and len(out.latent_norm) == 3 and len(out.frames) == 3
    wm = serving_wm()
    adapter = ModelAdapter(wm)
    with torch.inference_mode():
        z, _ = wm.rollout(adapter.obs_to_model(model_obs([0])), adapter.to_model_actions(np.array([actions])))
    assert out.latent_shape == list(z["visual"].shape[2:])
    torch.testing.assert_close(torch.tensor(out.latent_norm), z["visual"][0].flatten(1).norm(dim=1))
    for text in out.frames:
        img = decode_png(text)
        assert img.size == (64, 64) and img.mode == "RGB"
    assert service.rollout(RolloutRequest(obs=obs(0), actions=actions, decode=False)).frames == []


@pytest.mark.parametrize(("n", "dim", "field"), [(7, 2, "actions"), (5, 3, "actions.0")])
def test_rollout_refuses_actions_that_do_not_fit_the_model(service, n, dim, field):
    with pytest.raises(RequestError) as e:
        service.rollout(RolloutRequest(obs=obs(0), actions=[[0.0] * dim] * n))
    assert (e.value.status, e.value.field) == (422, field)


def test_rollout_of_a_model_without_decoder_has_no_frames():
    service = PlanningService(serving_wm("decoder=none"), source="memory")
    out = service.rollout(RolloutRequest(obs=obs(0), actions=[[0.0, 0.0]] * 5))
    assert out.num_frames == 2 and out.frames == [] and all(n > 0 for n in out.latent_norm)
