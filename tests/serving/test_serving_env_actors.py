"""Evaluation through the planning service: the ServicePolicy's protocol (sessions, seeds, concurrency) against an
in-process transport, and the same per-episode results as the in-process evaluation against the real app."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest

from dinowm_core.evaluation.policy import _mix
from serving import schemas
from serving.client import AsyncPlanningClient, Endpoints
from serving.env_actor import ServicePolicy, planner_params, unsendable_differences

B = 3


def obs_batch(value: int) -> dict[str, np.ndarray]:
    return {
        "visual": np.full((B, 4, 4, 3), value, np.uint8),
        "proprio": np.arange(B * 2, dtype=float).reshape(B, 2),
    }


class FakeService:
    """Answers sessions and plans with actions that name the request; ``act`` waits until all ``B`` episodes'
    requests are in flight together (it would wait forever, i.e. time out, if they were sent one by one)."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str, dict]] = []
        self.sessions: dict[str, int] = {}  # id -> seed
        self.in_flight: list[asyncio.Event] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else {}
        path = request.url.path
        self.log.append((request.method, path, body))
        if path == "/v1/sessions":
            schemas.SessionCreate.model_validate(body)
            sid = f"s{len(self.sessions)}"
            self.sessions[sid] = body["seed"]
            return httpx.Response(201, json={"session_id": sid, "expires_in_s": 600})
        if request.method == "DELETE":
            del self.sessions[path.rsplit("/", 1)[1]]
            return httpx.Response(204)
        if path.endswith("/act"):
            schemas.ActRequest.model_validate(body)
            await self._all_in_flight()
            seed = self.sessions[path.split("/")[3]]
            return httpx.Response(200, json={"actions": [[seed % 1000, body["obs"]["proprio"][0]]] * 2, "cost": 0.0,
                                             "step": 1, "batch_size": B})  # fmt: skip
        if path == "/v1/plan":
            req = schemas.PlanRequest.model_validate(body)
            return httpx.Response(200, json={"actions": [[req.seed % 1000, 0.0]] * 4, "cost": 0.0, "n_steps": 4,
                                             "batch_size": 1})  # fmt: skip
        raise AssertionError(path)

    async def _all_in_flight(self) -> None:
        event = asyncio.Event()
        self.in_flight.append(event)
        if len(self.in_flight) == B:
            for e in self.in_flight:
                e.set()
            self.in_flight = []
        await asyncio.wait_for(event.wait(), timeout=5)


def policy(fake: FakeService, name: str) -> ServicePolicy:
    client = AsyncPlanningClient("http://planner.test", transport=httpx.MockTransport(fake))
    return ServicePolicy(client, {"name": name, "horizon": 2})


def test_service_policy_one_session_per_episode_seeded_as_model_policy():
    fake = FakeService()
    p = policy(fake, "mpc_cem")
    assert p.closed_loop
    p.reset([11, 12, 13], seed=4)
    first = p.plan(obs_batch(1), obs_batch(9))
    second = p.plan(obs_batch(2), obs_batch(9))
    seeds = [_mix(4, e) for e in (11, 12, 13)]
    assert sorted(fake.sessions.values()) == sorted(seeds)  # created once, on the first plan
    assert first.shape == (B, 2, 2) and p.batch_sizes == [B] * B
    np.testing.assert_array_equal(first[:, 0, 0], [s % 1000 for s in seeds])  # row i is episode i's session
    np.testing.assert_array_equal(first[:, 0, 1], [0, 2, 4])  # and got episode i's observation
    np.testing.assert_array_equal(second, first)
    creates = [b for m, path, b in fake.log if path == "/v1/sessions"]
    assert len(creates) == B and {c["goal"]["visual"]["data"] for c in creates} == {
        schemas.ArrayB64.model_validate(creates[0]["goal"]["visual"]).data
    }
    assert all(c["planner"] == {"name": "mpc_cem", "horizon": 2} for c in creates)
    p.reset([20, 21, 22], seed=4)  # the previous episodes' sessions end
    assert fake.sessions == {} and [m for m, *_ in fake.log].count("DELETE") == B
    p.plan(obs_batch(1), obs_batch(9))
    p.close()
    assert fake.sessions == {}


def test_service_policy_skips_finished_episodes():
    fake = FakeService()
    p = policy(fake, "mpc_cem")
    p.reset([1, 2, 3], seed=0)
    p.plan(obs_batch(1), obs_batch(9))
    fake.in_flight = [asyncio.Event()]  # one fewer request now: count the missing one as already arrived
    out = p.plan(obs_batch(1), obs_batch(9), live=[True, False, True])
    acts = [path for m, path, _ in fake.log if path.endswith("/act")]
    assert len(acts) == B + 2 and not out[1].any() and out[0].any()
    p.close()


def test_open_loop_service_policy_plans_once_per_episode_with_its_seed():
    fake = FakeService()
    p = policy(fake, "cem")
    assert not p.closed_loop
    p.reset([5, 6, 7], seed=2)
    out = p.plan(obs_batch(1), obs_batch(9))
    assert out.shape == (B, 4, 2) and fake.sessions == {}
    seeds = [b["seed"] for _, path, b in fake.log if path == "/v1/plan"]
    assert sorted(seeds) == sorted(_mix(2, e) for e in (5, 6, 7))
    np.testing.assert_array_equal(out[:, 0, 0], [_mix(2, e) % 1000 for e in (5, 6, 7)])
    p.close()


def test_planner_params_carry_the_evaluation_planner():
    from tests.evaluation.eval_helpers import tiny_cfg

    cfg = tiny_cfg()
    params = planner_params(cfg.planner)
    assert schemas.PlannerParams.model_validate(params).model_dump(exclude_none=True) == params
    assert params == {"name": "mpc_cem", "horizon": cfg.planner.horizon, "alpha": 1.0, "num_samples": 12, "topk": 3,
                      "var_scale": 1.0, "opt_steps": 2, "n_taken_actions": cfg.planner.mpc.n_taken_actions}  # fmt: skip
    gd = planner_params(tiny_cfg("planner=gd", "planner.gd.lr=0.5").planner)
    assert gd["lr"] == 0.5 and "num_samples" not in gd and "n_taken_actions" not in gd
    service = cfg.planner.model_dump()
    assert unsendable_differences(cfg.planner, service) == []
    service["objective"] = {**service["objective"], "mode": "all", "alpha": 7.0}  # alpha is sent: no matter
    service["cem"] = {**service["cem"], "num_samples": 999, "chunk_size": 4}
    assert unsendable_differences(cfg.planner, service) == [
        "planner.objective.mode: service 'all', here 'last'"
    ]


# ---- the same per-episode results as the in-process evaluation ------------------------------------------

KEYS = ("index", "episode_seed", "success", "success_any_step", "distance", "min_distance", "env_steps",
        "plan_calls", "visual_dist", "proprio_dist", "div_visual_emb", "div_proprio_emb")  # fmt: skip


def episodes(result) -> dict:
    return {s: [{k: m.to_dict()[k] for k in KEYS} for m in eps] for s, eps in result.per_seed.items()}


class InProcessService:
    """The async client's verbs over a PlanningService in this process, with the app's batching: the requests
    that one ServicePolicy.plan sends together are answered by one service call."""

    def __init__(self, service) -> None:
        self.service, self.pending, self.calls = service, {"plan": [], "act": []}, []

    async def _batched(self, kind: str, item):
        fut = asyncio.get_running_loop().create_future()
        self.pending[kind].append((item, fut))
        await asyncio.sleep(0)  # the other episodes' requests queue up meanwhile
        batch, self.pending[kind] = self.pending[kind], []
        if batch:
            self.calls.append((kind, len(batch)))
            for (_, f), r in zip(batch, getattr(self.service, kind)([i for i, _ in batch]), strict=True):
                f.set_exception(r) if isinstance(r, Exception) else f.set_result(r)
        return await fut

    async def plan(self, obs, goal, planner=None, seed=0, steps_left=None):
        body = Endpoints("raw").plan(obs, goal, planner, seed, steps_left).body
        return await self._batched("plan", schemas.PlanRequest.model_validate(body))

    async def create_session(self, goal, planner=None, seed=0):
        body = Endpoints("raw").create_session(goal, planner, seed).body
        return self.service.create_session(schemas.SessionCreate.model_validate(body))

    async def act(self, session_id, obs, steps_left=None):
        body = Endpoints("raw").act(session_id, obs, steps_left).body
        return await self._batched("act", (session_id, schemas.ActRequest.model_validate(body)))

    async def delete_session(self, session_id):
        self.service.delete_session(session_id)

    async def models(self):
        return self.service.info()

    async def aclose(self):
        pass


@pytest.mark.parametrize("planner", ["mpc_cem", "cem", "mpc_gd", "mpc_cem end_at_budget"])
def test_evaluation_through_the_service_matches_in_process(planner):
    """The same episodes, plans and metrics; with ``planner.end_at_budget`` the env side sends the steps left
    (budget 18: a plan of 4 model steps, then one of 2) and the service plans as short as the evaluation."""
    from dinowm_core.evaluation.loop import evaluate
    from serving.service import PlanningService
    from tests.evaluation.eval_helpers import tiny_cfg, tiny_wm

    planner, *budget = planner.split()
    end = ["planner.end_at_budget=true", "eval.budget=18"] if budget else ["eval.budget=20"]
    cfg = tiny_cfg(f"planner={planner}", "planner.cem.num_samples=12", "planner.cem.topk=3",
                   "planner.cem.opt_steps=2", "planner.gd.opt_steps=2", "planner.mpc.n_taken_actions=2",
                   "eval.n_evals=3", "eval.seeds=[1,2]", *end)  # fmt: skip
    wm = tiny_wm(cfg)
    local = evaluate(wm, cfg)
    service = InProcessService(PlanningService(tiny_wm(cfg), source="tiny"))
    policy = ServicePolicy(service, planner_params(cfg.planner), end_at_budget=cfg.planner.end_at_budget)
    try:
        remote = evaluate(wm, cfg, policy=policy)
    finally:
        policy.close()
    assert episodes(remote) == episodes(local)
    kind = "act" if planner.startswith("mpc_") else "plan"
    assert service.calls and all(c == (kind, 3) for c in service.calls)  # every step one batch of 3
    assert len(service.service.sessions) == 0  # closed
