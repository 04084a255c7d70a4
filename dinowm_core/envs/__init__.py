"""Planning environments. Importing this package registers the gymnasium ids ``dinowm/*-v0``.

Entry points are strings, so the simulators (MuJoCo, pymunk, MiniGrid) are imported only when an env is made.
"""

from gymnasium.envs.registration import register, registry

from dinowm_core.envs.base import ENV_IDS, PlanningEnv, make_env

_ENTRY_POINTS = {
    "wall": "dinowm_core.envs.wall:WallEnv",
    "point_maze": "dinowm_core.envs.point_maze:PointMazeEnv",
    "pusht": "dinowm_core.envs.pusht:PushTEnv",
    "rope": "dinowm_core.envs.deformable:RopeEnv",
    "granular": "dinowm_core.envs.deformable:GranularEnv",
    "reacher": "dinowm_core.envs.reacher:ReacherEnv",
    "four_rooms": "dinowm_core.envs.four_rooms:FourRoomsEnv",
    # optional extra `memory_maze`: memory_maze.py imports the package only when an env is built
    "memory_maze": "dinowm_core.envs.memory_maze:MemoryMazeEnv",
}

for _name, _entry in _ENTRY_POINTS.items():
    if ENV_IDS[_name] not in registry:
        register(id=ENV_IDS[_name], entry_point=_entry, max_episode_steps=300)

__all__ = ["ENV_IDS", "PlanningEnv", "make_env"]
