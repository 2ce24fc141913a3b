"""End to end over DDS: simulated Franka (MuJoCo Lift) + camera topics + the policy node with an
image checkpoint, in separate processes, through `vla_ros.graph_eval`.

CI runs a small real version (a briefly trained image policy, 2 short episodes): the graph comes
up, episodes reset to `vla eval`'s seeds, trajectories flow at the control rate, latency is
measured, everything shuts down cleanly. VLA_FULL=1 runs 6 full-horizon episodes.
The success-rate comparison with `vla eval` (README) uses a fully trained checkpoint.
"""

from __future__ import annotations

import json

import pytest
from conftest import scale

from vla import keys
from vla.policies.config import PolicyConfig
from vla.training.trainer import TrainConfig, train

pytestmark = [pytest.mark.ros, pytest.mark.slow]


@pytest.fixture(scope="module")
def image_checkpoint(lift_dataset, tmp_path_factory):
    policy = PolicyConfig(
        vector_features=(keys.OBS_STATE,),
        image_features=(keys.image_key("scene"), keys.image_key("wrist")),
        d_model=32,
        n_heads=2,
        n_expert_layers=1,
        chunk_size=8,
        n_action_steps=4,
        image_tokens=4,
    )
    out = tmp_path_factory.mktemp("e2e") / "run"
    return train(
        TrainConfig(
            dataset=lift_dataset,
            out=out,
            policy=policy,
            steps=20,
            batch_size=8,
            warmup_steps=5,
            log_every=10,
            save_every=20,
            seed=0,
        )
    )


def test_policy_drives_the_simulated_franka_over_dds(image_checkpoint, tmp_path):
    from vla_ros.graph_eval import GraphEvalConfig, graph_eval

    episodes = scale(2, 6)
    results = graph_eval(
        GraphEvalConfig(
            checkpoint=str(image_checkpoint),
            out=str(tmp_path / "e2e"),
            episodes=episodes,
            horizon_s=scale(3.0, 20.0),
            real_time_factor=0.5,
        )
    )
    saved = json.loads((tmp_path / "e2e" / "results.json").read_text())
    assert saved["episodes"] == results["episodes"] == episodes
    from sim.core import episode_seed

    assert [e["episode_seed"] for e in saved["per_episode"]] == [episode_seed(1000, 0, k) for k in range(episodes)]
    diagnostics = saved["policy_diagnostics"]
    assert int(diagnostics["trajectories_published"]) > 10 * episodes, diagnostics
    for stage in ("inference_ms", "frame_to_trajectory_excl_inference_ms"):
        assert float(diagnostics[f"{stage}.p50"]) > 0, diagnostics
    assert set(saved["exit_codes"]) == {"sim_franka", "vla_policy"} and not any(saved["exit_codes"].values()), saved[
        "exit_codes"
    ]
