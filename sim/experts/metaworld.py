"""Meta-World's own scripted policies (``metaworld.policies``), one per v3 task.

They read the raw 39-d observation, which ``sim.metaworld.MetaWorldEnv`` keeps as
``last_raw_obs``, and are stateless, so ``reset`` has nothing to do.
"""

from __future__ import annotations

import warnings

import numpy as np

from vla.registry import UnknownNameError, unknown_name_message

# metaworld.policies.policy.move() warns on every call whose gain saturates the action; the
# env clips actions anyway, so the warning carries no information for us.
warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high", module=r"metaworld\.policies")


class MetaWorldExpert:
    # the policies are stateless P controllers on the hand position: noise there gets corrected (DART)
    servoed_action_dims = (0, 1, 2)

    def __init__(self, task: str):
        from metaworld.policies import ENV_POLICY_MAP

        if task not in ENV_POLICY_MAP:
            raise UnknownNameError(unknown_name_message("Meta-World scripted policy", task, ENV_POLICY_MAP))
        self.task = task
        self.policy = ENV_POLICY_MAP[task]()

    def reset(self, env) -> None:
        pass

    def act(self, env) -> np.ndarray:
        obs = env.last_raw_obs
        if obs is None:
            raise RuntimeError("reset the env before asking the Meta-World expert for an action")
        # The policies' P gains saturate far beyond the action space (up to +-12 on reach), and the
        # env clips. Record what the env executes: unclipped labels stretched a min-max normalized
        # action range ten-fold, and an MT10 policy trained on them reached 0/50 on reach-v3.
        space = env.raw.action_space
        return np.clip(self.policy.get_action(obs), space.low, space.high).astype(np.float32)


EXPERTS = {"*": MetaWorldExpert}
