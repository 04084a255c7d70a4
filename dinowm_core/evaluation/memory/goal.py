"""``object_goal``: object recall by planning, i.e. reach an object's place that has left the view.

An episode (:meth:`EpisodeBuilder._object_goal`) shows one object on a tour of a freshly drawn world (new doors,
new objects), walks away until the object has been out of view for ``clear_frames`` frames, and then gives the
goal: the frame and proprio of the state that looked at the object. The world was drawn for this episode only,
so which ways are open (the doors) and what the goal view shows were seen in the observed frames and nowhere
else. A planner then acts in the real env, from the last observed state, until the agent stands on the goal cell
or ``goal_budget`` env steps have passed (every episode has a shortest way within the budget).

The model's side follows the planning rule (docs/memory.md): the observed frames but the last are written to the
memory once each (:meth:`ModelImaginer.read` with ``keep=1``), and the planner writes each later frame as it
leaves, exactly as in the planning evaluation. A memory-free model plans from the current frame alone.

Row: ``success``, ``steps`` (env steps used), ``distance`` / ``start_distance`` (cells on the shortest way to the
goal cell at the end / at the start), ``shortest`` (actions on the shortest way at the start, turns included),
``spl`` (success weighted by shortest / max(shortest, steps)).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dinowm_core.envs.four_rooms import FourRoomsEnv
from dinowm_core.evaluation.memory.episodes import MemoryEpisode, Path
from dinowm_core.evaluation.memory.imagine import ModelImaginer
from dinowm_core.evaluation.policy import Policy


class GoalRunner:
    """Runs ``object_goal`` episodes in a real env with ``policy`` (a :class:`ModelPolicy` of the model that
    ``imaginer`` wraps, or any policy that takes ``memory=`` in ``reset``)."""

    def __init__(self, imaginer: ModelImaginer | None, policy: Policy, *, img_size: int = 64,
                 colors: tuple[str, ...] | None = None) -> None:  # fmt: skip
        self.imaginer, self.policy = imaginer, policy
        kwargs = {"colors": tuple(colors)} if colors else {}
        self.env = FourRoomsEnv(img_size=img_size, render_mode="rgb_array", **kwargs)

    def run(self, ep: MemoryEpisode) -> dict[str, Any]:
        """Plan and act until the goal cell or the budget -> the episode's row (``_path``: what was executed,
        for videos)."""
        s, env = ep.spec, self.env
        env.set_env_params(ep.params)
        env._set_state(np.asarray(ep.proprio[-1], np.float64))
        goal_state = np.asarray(ep.info["goal_state"], np.float64)
        way = ep.probes["goal"]
        goal = {"visual": way.frames[-1:], "proprio": way.proprio[-1:]}
        memory = None
        if self.imaginer is not None and self.imaginer.has_memory:
            memory = self.imaginer.read(ep.frames[None], ep.proprio[None], ep.actions[None], keep=1)
        start_distance = env.eval_state(goal_state, env.get_state())["distance"]
        self.policy.reset([s.index], s.seed, memory=memory)
        obs = {"visual": ep.frames[-1:], "proprio": ep.proprio[-1:]}
        actions, frames, states, success = [], [], [], False
        while len(actions) < s.goal_budget and not success:
            for a in self.policy.plan(obs, goal)[0]:
                o, *_ = env.step(a)
                actions.append(int(env.action_index(a)))
                frames.append(o["visual"])
                states.append(env.get_state())
                success = env.eval_state(goal_state, states[-1])["success"]
                if success or len(actions) == s.goal_budget:
                    break
            obs = {"visual": frames[-1][None], "proprio": states[-1][None]}
        shortest = int(ep.info["shortest"])
        return {
            "task": s.task, "num_objects": s.num_objects, "horizon": s.horizon, "index": s.index,
            "observed_frames": len(ep.frames), "success": bool(success), "steps": len(actions),
            "distance": env.eval_state(goal_state, states[-1])["distance"], "start_distance": start_distance,
            "shortest": shortest,
            "spl": float(success) * shortest / max(shortest, len(actions)),
            "_path": Path(np.array(actions, np.int64), np.stack(frames), np.array(states, np.float32)),
        }  # fmt: skip

    def maps(self, ep: MemoryEpisode, path: Path) -> np.ndarray:
        """Top-down frames of the observed part and of what was executed, the goal cell outlined (videos)."""
        self.env.set_env_params(ep.params)
        out = []
        for p in [*ep.proprio, *path.proprio]:
            self.env._set_state(np.asarray(p, np.float64))
            out.append(self.env.render_full(tile_size=8, goal=np.asarray(ep.info["goal_state"])))
        return np.stack(out)
