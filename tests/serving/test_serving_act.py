"""MPC sessions through PlanningService: the act loop equals the evaluation's ModelPolicy, the plan state
(warm start, RNG, step) lives in the store so another service instance continues it, refusals name their
field."""

import numpy as np
import pytest

from dinowm_core.evaluation.adapter import ModelAdapter
from dinowm_core.evaluation.policy import ModelPolicy
from dinowm_core.planning.planner import PlanState, make_planner
from serving.schemas import ActRequest, SessionCreate
from serving.service import PlanningService, RequestError
from serving.sessions import MemorySessionStore
from tests.serving.serving_helpers import model_obs, obs, serving_wm

PLANNER = {"name": "mpc_cem", "horizon": 4, "n_taken_actions": 1}


@pytest.fixture(scope="module")
def wm():
    return serving_wm()


def session(service, goal_seed: int, seed: int, planner=PLANNER) -> str:
    body = SessionCreate.model_validate({"goal": obs(goal_seed), "planner": planner, "seed": seed})
    return service.create_session(body).session_id


def act(service, pairs):
    return service.act([(sid, ActRequest.model_validate({"obs": obs(s)})) for sid, s in pairs])


def test_act_loop_equals_the_evaluation_policy_and_carries_the_warm_start(wm):
    service = PlanningService(wm, source="memory")
    ids = [session(service, 100, 3), session(service, 101, 4)]
    adapter = ModelAdapter(wm)
    cfg = service.planner_config(SessionCreate.model_validate({"goal": obs(0), "planner": PLANNER}).planner)
    policy = ModelPolicy(adapter, make_planner(cfg, wm, zero_action=service.zero_action))
    policy.state = policy.planner.init_state(2, [3, 4])
    for step in (1, 2, 3):
        frames = [10 * step, 10 * step + 1]
        out = act(service, zip(ids, frames, strict=True))
        expected = policy.plan(model_obs(frames), model_obs([100, 101]))
        assert [o.step for o in out] == [step, step] and [o.batch_size for o in out] == [2, 2]
        assert np.array_equal(np.array([o.actions for o in out]), expected)
        for i, sid in enumerate(ids):
            state = PlanState.from_bytes(service.sessions.get(sid).state)
            assert state.step == step
            assert np.array_equal(state.warm_start.numpy(), policy.state.warm_start[i : i + 1].numpy())
            assert np.array_equal(state.rng.numpy(), policy.state.rng[i : i + 1].numpy())
    assert policy.state.warm_start.shape == (2, 3, 10)  # horizon 4, one step taken: a 3-step warm start


def test_another_service_on_the_same_store_continues_a_session(wm):
    store = MemorySessionStore()
    one, other = (
        PlanningService(wm, source="a", sessions=store),
        PlanningService(wm, source="b", sessions=store),
    )
    alone = PlanningService(wm, source="c")
    shared, ref = session(one, 100, 3), session(alone, 100, 3)
    for step, service in enumerate([one, other, one, other], start=1):
        (got,) = act(service, [(shared, step)])
        (want,) = act(alone, [(ref, step)])
        assert got.actions == want.actions and got.step == want.step == step and got.batch_size == 1


def test_a_session_named_twice_in_one_call_is_served_in_order(wm):
    service = PlanningService(wm, source="memory")
    twice, ref = session(service, 100, 3), session(service, 100, 3)
    out = act(service, [(twice, 1), (twice, 2)])
    assert [o.step for o in out] == [1, 2]
    assert [o.actions for o in out] == [o.actions for o in [act(service, [(ref, s)])[0] for s in (1, 2)]]


def test_sessions_at_different_steps_are_all_served(wm):
    service = PlanningService(wm, source="memory")
    old, new = session(service, 100, 3), session(service, 101, 4)
    act(service, [(old, 1)])
    out = act(service, [(old, 2), (new, 2)])
    assert [o.step for o in out] == [2, 1]


def test_act_refusals_name_their_field_and_spare_the_others(wm):
    service = PlanningService(wm, source="memory")
    good = session(service, 100, 3)
    gone = session(service, 101, 3)
    service.delete_session(gone)
    bad_obs = ActRequest.model_validate({"obs": {"visual": obs(1)["visual"], "proprio": [0.0]}})
    out = service.act(
        [("nope", ActRequest.model_validate({"obs": obs(1)})), (gone, bad_obs), (good, bad_obs)]
    )
    assert [(o.status, o.field) for o in out] == [
        (404, "session_id"),
        (404, "session_id"),
        (422, "obs.proprio"),
    ]
    (ok,) = act(service, [(good, 1)])
    assert ok.step == 1  # the refused call did not advance the session
    with pytest.raises(RequestError) as e:
        service.delete_session(gone)
    assert e.value.status == 404


@pytest.mark.parametrize(
    ("planner", "field"), [({"name": "cem"}, "planner.name"), ({"topk": 99}, "planner.topk")]
)
def test_session_creation_refuses_what_cannot_run(wm, planner, field):
    service = PlanningService(wm, source="memory")
    with pytest.raises(RequestError) as e:
        session(service, 100, 3, planner)
    assert (e.value.status, e.value.field) == (422, field)
    bad_goal = SessionCreate.model_validate({"goal": {"visual": "x", "proprio": [0, 0]}})
    with pytest.raises(RequestError) as e:
        service.create_session(bad_goal)
    assert (e.value.status, e.value.field) == (400, "goal.visual")


def test_expired_sessions_are_404_and_the_bound_is_429(wm):
    t = [0.0]
    service = PlanningService(
        wm, source="memory", sessions=MemorySessionStore(ttl_s=5, max_sessions=1, clock=lambda: t[0])
    )
    sid = session(service, 100, 3)
    with pytest.raises(RequestError) as e:
        session(service, 101, 3)
    assert e.value.status == 429
    t[0] = 6.0
    (out,) = act(service, [(sid, 1)])
    assert (out.status, out.field) == (404, "session_id")
    session(service, 101, 3)  # the expired one no longer counts


def test_a_memory_predictor_session_remembers_each_observed_frame_once():
    service = PlanningService(serving_wm("predictor=lookup_mem_vit", "predictor.depth=2", "predictor.heads=2",
                                         "predictor.dim_head=8", "predictor.mlp_dim=32"), source="memory")  # fmt: skip
    sid = session(service, 100, 3)
    for step in (1, 2, 3):
        (answer,) = act(service, [(sid, step)])
        assert not isinstance(answer, RequestError), answer
        state = PlanState.from_bytes(service.sessions.get(sid).state)
        assert state.memory["store0.count"].tolist() == [step]  # the frame it planned from, written once


def test_steps_left_ends_each_plan_with_the_budget_as_the_evaluation_does(wm):
    """An act with ``steps_left`` plans what ModelPolicy plans with ``planner.end_at_budget``; sessions with
    different horizons are planned apart, and a one-off plan ends at its budget too."""
    from pydantic import ValidationError

    from serving.schemas import PlanRequest

    service, f = PlanningService(wm, source="memory"), wm.cfg.frameskip
    ids = [session(service, 100, 3), session(service, 101, 4)]
    cfg = service.planner_config(SessionCreate.model_validate({"goal": obs(0), "planner": PLANNER}).planner)
    policy = ModelPolicy(ModelAdapter(wm), make_planner(cfg.model_copy(update={"end_at_budget": True}), wm))
    policy.state = policy.planner.init_state(2, [3, 4])
    for left, warm in ((4 * f + 1, 3), (2 * f, 1), (1, None)):  # horizons 4, 2, 1 (horizon 4, 1 step taken)
        frames = [left, left + 1]
        out = service.act([(sid, ActRequest.model_validate({"obs": obs(s), "steps_left": left}))
                           for sid, s in zip(ids, frames, strict=True)])  # fmt: skip
        expected = policy.plan(model_obs(frames), model_obs([100, 101]), left)
        assert np.array_equal(np.array([o.actions for o in out]), expected) and out[0].batch_size == 2
        state = PlanState.from_bytes(service.sessions.get(ids[0]).state)
        assert (None if state.warm_start is None else state.warm_start.shape[1]) == warm
    fresh = [session(service, 100, 5), session(service, 101, 6)]
    out = service.act([(sid, ActRequest.model_validate({"obs": obs(1), "steps_left": left}))
                       for sid, left in zip(fresh, (4 * f, 1), strict=True)])  # fmt: skip
    assert [o.batch_size for o in out] == [1, 1] and all(len(o.actions) == f for o in out)
    one_off = {"obs": obs(1), "goal": obs(2), "planner": {"name": "cem", "horizon": 4}}
    plans = service.plan([PlanRequest.model_validate({**one_off, "steps_left": f + 1}),
                          PlanRequest.model_validate(one_off)])  # fmt: skip
    assert [p.n_steps for p in plans] == [2 * f, 4 * f]
    with pytest.raises(ValidationError, match="steps_left"):
        ActRequest.model_validate({"obs": obs(1), "steps_left": 0})
