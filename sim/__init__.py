"""Simulation layer: one registry over ManiSkill 3, RoboMimic (robosuite), LIBERO and Meta-World.

from sim import make_env
env = make_env("robomimic/Lift", num_envs=4, obs_mode="rgb", image_size=84, seed=0)
obs = env.reset()
obs, reward, terminated, truncated, info = env.step(actions)  # (B, A) or (B, H, A)
"""

from sim.core import EnvConfig, EnvSpec, SingleEnv
from sim.make import make_env
from sim.registry import SUITES, group_members, list_envs

__all__ = ["SUITES", "EnvConfig", "EnvSpec", "SingleEnv", "group_members", "list_envs", "make_env"]
