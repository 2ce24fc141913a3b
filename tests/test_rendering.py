"""Camera rendering of the MuJoCo suites (sim/rendering.py): both looks run, images are the
right shape, upright, non-blank and deterministic; the default look is the suites' own; the
look travels from the dataset to the checkpoint and a mismatch warns."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from sim import make_env
from vla import keys
from vla.registry import UnknownNameError

pytestmark = pytest.mark.rendering

SUITES = ("robomimic/Lift", "metaworld/pick-place-v3", "libero/libero_spatial.0")


def _images_after_steps(name: str, quality: str, seed: int = 3, steps: int = 3, size: int = 64) -> dict:
    env = make_env(name, obs_mode="rgb", image_size=size, render_quality=quality, vectorization="sync", seed=seed)
    try:
        obs = env.reset(seed=seed)
        rng = np.random.default_rng(0)
        for _ in range(steps):
            action = rng.uniform(-0.3, 0.3, size=(1, 1, env.spec.action_dim)).astype(np.float32)
            obs, *_ = env.step(action)
        assert env.spec.render_quality == quality
        return {camera: obs[keys.image_key(camera)][0] for camera in env.spec.cameras}
    finally:
        env.close()


@pytest.mark.parametrize("name", SUITES)
def test_fast_and_default_looks_give_upright_nonblank_images_of_every_camera(name):
    default, fast = _images_after_steps(name, "default"), _images_after_steps(name, "fast")
    assert set(fast) == set(default) and len(fast) >= 2, "every camera of the suite, by role"
    for camera, image in fast.items():
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        assert image.std() > 5, f"{camera} is blank"
        # the same scene as the default look (validated upright against the suites' own renderers),
        # and far closer to it than its upside-down or mirrored versions would be
        diff = np.abs(image.astype(int) - default[camera]).mean()
        assert diff < 25, f"{camera}: fast and default looks differ by {diff:.1f} grey levels"
        assert diff < np.abs(image[::-1].astype(int) - default[camera]).mean()
        assert diff < np.abs(image[:, ::-1].astype(int) - default[camera]).mean()


@pytest.mark.parametrize("name", SUITES[:2])
def test_rendering_is_deterministic_for_a_seed(name):
    first, second = _images_after_steps(name, "fast"), _images_after_steps(name, "fast")
    for camera in first:
        np.testing.assert_array_equal(first[camera], second[camera])


def test_default_look_is_robosuites_own_renderer_and_one_pass_equals_one_camera_at_a_time():
    from sim.rendering import MujocoCameraRenderer
    from sim.robosuite_util import hidden_geom_groups

    env = make_env("robomimic/Lift", obs_mode="state", vectorization="sync")
    try:
        env.reset(seed=0)
        robosuite_env = env.workers[0].runner.env.raw
        sim = robosuite_env.sim
        cameras = ["agentview", "robot0_eye_in_hand"]
        from robosuite.utils.binding_utils import MjRenderContextOffscreen

        context = MjRenderContextOffscreen(sim, device_id=-1)  # as robosuite builds it with an offscreen renderer
        context.vopt.geomgroup[0] = int(robosuite_env.render_collision_mesh)
        context.vopt.geomgroup[1] = int(robosuite_env.render_visual_mesh)
        theirs = {c: sim.render(width=64, height=64, camera_name=c)[::-1] for c in cameras}
        model, data = sim.model._model, sim.data._data
        for quality in ("default", "fast"):
            renderer = MujocoCameraRenderer(model, 64, 64, cameras, quality, hidden_geom_groups(robosuite_env))
            together = renderer.render(data)
            for camera in cameras:
                alone = renderer.render(data, [camera])[camera]
                assert np.abs(alone.astype(int) - together[camera]).max() <= 1
                if quality == "default":
                    assert np.abs(together[camera].astype(int) - theirs[camera]).max() <= 1
            renderer.close()
            with pytest.raises(RuntimeError, match="after close"):
                renderer.render(data)
    finally:
        env.close()


def test_simplified_meshes_keep_every_mesh_and_cut_the_triangles():
    from sim.rendering import simplified_meshes

    env = make_env("robomimic/Lift", obs_mode="state", vectorization="sync")
    try:
        model = env.workers[0].runner.env.raw.sim.model._model
        simple = simplified_meshes(model, 500)
        assert simple.nmesh == model.nmesh
        assert simple.mesh_facenum.sum() < 0.25 * model.mesh_facenum.sum()
        assert (simple.mesh_facenum <= model.mesh_facenum).all()
        for mesh in range(model.nmesh):  # every triangle indexes a vertex of its own mesh
            faces = simple.mesh_face[simple.mesh_faceadr[mesh] : simple.mesh_faceadr[mesh] + simple.mesh_facenum[mesh]]
            assert faces.size == 0 or faces.max() < model.mesh_vertnum[mesh]
        assert model.mesh_facenum.sum() > simple.mesh_facenum.sum(), "the env's own model is left as it was"
    finally:
        env.close()


def test_unknown_render_quality_lists_the_choices():
    with pytest.raises(UnknownNameError, match="fast.*default|default.*fast"):
        make_env("robomimic/Lift", render_quality="ultra")


def test_the_look_goes_from_dataset_to_checkpoint_and_a_mismatch_warns(tmp_path, lift_dataset, caplog):
    from sim.collect import CollectConfig, collect
    from vla.datasets.lerobot_io import recording_info
    from vla.evaluation.evaluate import observation_kwargs
    from vla.policies.config import PolicyConfig
    from vla.training.trainer import TrainConfig, train

    assert recording_info(lift_dataset)["render_quality"] == "fast"
    policy = PolicyConfig(
        vector_features=(keys.OBS_STATE,),
        image_features=(keys.image_key(keys.CAMERA_SCENE),),
        d_model=32,
        n_heads=2,
        n_expert_layers=1,
        chunk_size=4,
        n_action_steps=2,
    )
    checkpoint = train(TrainConfig(dataset=lift_dataset, out=tmp_path / "run", policy=policy, steps=2, batch_size=4))
    trained = PolicyConfig.load(checkpoint / "config.json")
    assert trained.image_render_quality == "fast"
    with caplog.at_level(logging.WARNING):
        assert observation_kwargs(trained)["render_quality"] == "fast"
        assert not [r for r in caplog.records if "render_quality" in r.getMessage()]
        assert observation_kwargs(trained, "default")["render_quality"] == "default"
    assert any("unlike its data" in r.getMessage() for r in caplog.records)
    # a checkpoint from before the choice existed was trained on the default look
    old = PolicyConfig.from_dict({**trained.to_dict(), "image_render_quality": None})
    assert observation_kwargs(old)["render_quality"] == "default"

    # frames of another look are not appended to a dataset (mixed looks in one dataset)
    small = tmp_path / "copy"
    collect(CollectConfig(env="robomimic/Lift", episodes=1, out=small, num_envs=1, image_size=32))
    with pytest.raises(ValueError, match="render_quality='fast'"):
        collect(
            CollectConfig(
                env="robomimic/Lift", episodes=1, out=small, num_envs=1, image_size=32, render_quality="default"
            )
        )
