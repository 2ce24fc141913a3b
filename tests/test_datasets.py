"""LeRobot v3 datasets written through the real lerobot package, and the zarr ReplayBuffer."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sim.collect import CollectConfig, collect
from vla import keys
from vla.datasets.lerobot_io import NotADatasetError, dataset_info, load_dataset
from vla.datasets.zarr_io import export_zarr, import_zarr, read_zarr


def test_collected_dataset_loads_in_lerobot(lift_dataset):
    info = dataset_info(lift_dataset)
    assert info["episodes"] == 2 and info["fps"] == 20 and info["codebase_version"].startswith("v3")
    assert info["tasks"] == ["lift the red cube off the table"]
    ds = load_dataset(lift_dataset)
    assert ds.num_frames == info["frames"] > 10
    item = ds[0]
    assert item[keys.image_key("scene")].shape == (3, 64, 64)
    assert item[keys.OBS_STATE].shape == (16,) and item[keys.ACTION].shape == (7,)
    assert item["task"] == "lift the red cube off the table"
    # only successful episodes are kept: each ends with a success frame
    table = ds.hf_dataset.with_format("numpy")
    ends = np.flatnonzero(np.asarray(table[keys.DONE]).reshape(-1))
    assert len(ends) == 2 and np.asarray(table[keys.SUCCESS]).reshape(-1)[ends].all()


def test_append_to_existing_dataset(tmp_path):
    out = tmp_path / "lift_state"
    collect(CollectConfig(env="robomimic/Lift", episodes=1, out=out, num_envs=1, obs_mode="state"))
    collect(CollectConfig(env="robomimic/Lift", episodes=1, out=out, num_envs=1, obs_mode="state", seed=1))
    info = dataset_info(out)
    assert info["episodes"] == 2
    ds = load_dataset(out)
    assert sorted(set(np.asarray(ds.hf_dataset.with_format("numpy")["episode_index"]).tolist())) == [0, 1]


def test_append_with_other_features_is_refused(tmp_path, lift_dataset):
    with pytest.raises(ValueError, match="features/fps differ"):
        collect(CollectConfig(env="robomimic/Lift", episodes=1, out=lift_dataset, num_envs=1, obs_mode="state"))
    assert dataset_info(lift_dataset)["episodes"] == 2, "the existing dataset is untouched"


def test_non_dataset_directory_is_refused_and_kept(tmp_path):
    victim = tmp_path / "notes"
    victim.mkdir()
    (victim / "important.txt").write_text("keep me")
    with pytest.raises(NotADatasetError, match="not a LeRobot v3 dataset"):
        collect(CollectConfig(env="robomimic/Lift", episodes=1, out=victim))
    assert (victim / "important.txt").read_text() == "keep me"
    assert sorted(p.name for p in victim.iterdir()) == ["important.txt"]


def test_zarr_round_trips_are_lossless(tmp_path, lift_dataset):
    first = tmp_path / "a.zarr"
    export_zarr(lift_dataset, first)
    a = read_zarr(first)
    assert a["meta/episode_ends"].tolist()[-1] == a["data/action"].shape[0]
    assert a["data/observation.images.scene"].dtype == np.uint8
    # zarr -> LeRobot (PNG frames) -> zarr is bit-identical
    imported = tmp_path / "imported"
    import_zarr(first, imported)
    second = tmp_path / "b.zarr"
    export_zarr(imported, second)
    b = read_zarr(second)
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    # LeRobot -> zarr -> LeRobot: every frame of the re-imported dataset equals the original's
    original, again = load_dataset(lift_dataset, return_uint8=True), load_dataset(imported, return_uint8=True)
    for i in (0, original.num_frames - 1):
        x, y = original[i], again[i]
        np.testing.assert_array_equal(x[keys.ACTION].numpy(), y[keys.ACTION].numpy())
        assert x["task"] == y["task"]
        scene = keys.image_key("scene")
        np.testing.assert_array_equal(x[scene].numpy(), np.rint(y[scene].numpy() * 255).astype(np.uint8))


def test_import_diffusion_policy_layout(tmp_path):
    """A replay buffer written the way diffusion_policy writes one (img/state/action keys)."""
    import zarr

    path = tmp_path / "pusht.zarr"
    root = zarr.open_group(str(path), mode="w")
    rng = np.random.default_rng(0)
    root.create_group("data")
    root["data"].create_array("img", data=rng.integers(0, 255, size=(7, 16, 16, 3), dtype=np.uint8))
    root["data"].create_array("state", data=rng.normal(size=(7, 5)).astype(np.float32))
    root["data"].create_array("action", data=rng.normal(size=(7, 2)).astype(np.float32))
    root.create_group("meta").create_array("episode_ends", data=np.array([3, 7], dtype=np.int64))
    with pytest.raises(ValueError, match="fps"):
        import_zarr(path, tmp_path / "x")
    out = tmp_path / "pusht"
    import_zarr(path, out, fps=10, task="push the T into the target")
    info = dataset_info(out)
    assert info["episodes"] == 2 and info["frames"] == 7 and info["tasks"] == ["push the T into the target"]
    assert set(info["features"]) >= {keys.image_key("scene"), keys.OBS_STATE, keys.ACTION}
    back = read_zarr(export_zarr(out, tmp_path / "back.zarr")["out"])
    np.testing.assert_array_equal(back["data/observation.images.scene"], root["data"]["img"][:])
    np.testing.assert_array_equal(back["data/observation.state"], root["data"]["state"][:])
    np.testing.assert_array_equal(back["meta/episode_ends"], [3, 7])


def test_interrupted_collection_keeps_saved_episodes(tmp_path):
    """SIGINT in the middle of a run: every episode saved before it is still readable."""
    out = tmp_path / "interrupted"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vla.cli.main",
            "collect",
            "--env",
            "robomimic/Lift",
            "--episodes",
            "500",
            "--num-envs",
            "1",
            "--obs-mode",
            "state",
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    output = b""
    try:
        deadline = time.time() + 240
        while _episodes_in_progress_bar(output) < 2:  # wait until two episodes are written
            assert time.time() < deadline and proc.poll() is None, output.decode(errors="replace")
            if select.select([proc.stdout], [], [], 0.5)[0]:
                output += os.read(proc.stdout.fileno(), 65536)
        proc.send_signal(signal.SIGINT)
        try:
            rest, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            # Open bug: in CI a SIGINT was once not acted on for 120 s. A supervisor's SIGTERM
            # (turned into the same KeyboardInterrupt path) must still keep what was saved.
            proc.send_signal(signal.SIGTERM)
            rest, _ = proc.communicate(timeout=60)
        output += rest
    finally:
        proc.kill()
    assert proc.returncode == 130, output.decode(errors="replace")
    info = dataset_info(out)
    assert 2 <= info["episodes"] < 500  # 500 state episodes take minutes: the SIGINT always lands mid-run
    assert load_dataset(out).num_frames == info["frames"]


def _episodes_in_progress_bar(output: bytes) -> int:
    counts = re.findall(rb"\| (\d+)/500 ", output)
    return int(counts[-1]) if counts else 0


def test_dataset_path_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(NotADatasetError):
        collect(CollectConfig(env="robomimic/Lift", episodes=1, out=Path(f)))


@pytest.mark.parametrize("env_name", ["maniskill/PickCube-v1", "metaworld/reach-v3"])
def test_collect_works_for_every_suite_with_an_expert(tmp_path, env_name):
    out = tmp_path / env_name.replace("/", "_")
    result = collect(CollectConfig(env=env_name, episodes=1, out=out, num_envs=1, obs_mode="rgb", image_size=32))
    assert result.written == 1
    info = dataset_info(out)
    assert info["episodes"] == 1 and keys.image_key("scene") in info["features"]
    item = load_dataset(out)[0]
    assert item[keys.image_key("scene")].shape == (3, 32, 32)


def _episode_columns(path: Path, episode: int) -> dict[str, np.ndarray]:
    table = load_dataset(path).hf_dataset.with_format("numpy")
    rows = np.asarray(table["episode_index"]).reshape(-1) == episode
    return {k: np.asarray(table[k])[rows] for k in (keys.OBS_STATE, keys.ACTION)}


def test_action_noise_perturbs_execution_but_records_the_experts_clean_action(tmp_path):
    common = dict(env="robomimic/Lift", episodes=1, num_envs=1, obs_mode="state", seed=3)
    collect(CollectConfig(out=tmp_path / "clean", **common))
    collect(CollectConfig(out=tmp_path / "dart", action_noise=0.5, **common))
    clean, dart = _episode_columns(tmp_path / "clean", 0), _episode_columns(tmp_path / "dart", 0)
    # same reset: the first label is the expert's, before any noise was executed
    np.testing.assert_array_equal(clean[keys.ACTION][0], dart[keys.ACTION][0])
    np.testing.assert_array_equal(clean[keys.OBS_STATE][0], dart[keys.OBS_STATE][0])
    # the executed (noisy) action moved the arm elsewhere than the clean one did
    assert np.abs(clean[keys.OBS_STATE][1] - dart[keys.OBS_STATE][1]).max() > 1e-4
    # labels stay the expert's: no noise on rotation (the expert never rotates), in bounds, gripper +-1
    labels = dart[keys.ACTION]
    assert np.all(labels[:, 3:6] == 0) and np.abs(labels).max() <= 1.0
    assert set(np.unique(labels[:, 6]).tolist()) <= {-1.0, 1.0}


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(action_label="joint_target"), "needs action_label command"),
        (dict(action_noise=-0.1), "finite number >= 0"),
        (dict(action_noise=float("nan")), "finite number >= 0"),
    ],
)
def test_bad_action_noise_is_refused_before_any_simulator_starts(tmp_path, overrides, message):
    config = dict(env="robomimic/Lift", episodes=1, out=tmp_path / "ds", action_noise=0.5) | overrides
    with pytest.raises(ValueError, match=message):
        collect(CollectConfig(**config))
    assert not (tmp_path / "ds").exists()


def test_action_noise_needs_an_expert_that_servos(tmp_path, monkeypatch):
    from sim.experts.robomimic import PhaseExpert

    monkeypatch.delattr(PhaseExpert, "servoed_action_dims")
    with pytest.raises(ValueError, match="does not declare servoed_action_dims.*maniskill/PickCube-v1"):
        collect(CollectConfig(env="robomimic/Lift", episodes=1, out=tmp_path / "ds", action_noise=0.5))
    assert not (tmp_path / "ds").exists()


def test_video_collection_prints_one_clean_progress_bar(tmp_path):
    """FFmpeg's info lines ("[mp4 @ ...] Starting second pass") must not cut through the bar:
    LeRobot hands libav back its default stderr logger after every episode it encodes."""
    out = tmp_path / "lift_rgb"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vla.cli.main",
            "collect",
            "--env",
            "robomimic/Lift",
            "--episodes",
            "3",
            "--num-envs",
            "1",
            "--obs-mode",
            "rgb",
            "--image-size",
            "32",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert dataset_info(out)["episodes"] == 3
    noise = [line for line in result.stderr.splitlines() if re.search(r"\[(mp4|mov|h264|libx264|libsvtav1) @ ", line)]
    assert not noise, noise[:5]
