"""The `vla` console script, run as a user runs it."""

from __future__ import annotations

import json
import subprocess

import pytest


def vla(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["vla", *args], capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"vla {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_help_lists_verbs():
    out = vla("--help").stdout
    for verb in ("collect", "dataset", "bench", "demo", "envs"):
        assert verb in out


def test_unknown_env_lists_what_exists():
    proc = vla("collect", "--env", "robomimic/Lfit", "--episodes", "1", "--out", "/tmp/never", check=False)
    assert proc.returncode == 2
    assert "Did you mean 'Lift'" in proc.stderr and "PickPlaceCan" in proc.stderr


def test_dataset_info_on_a_non_dataset_is_an_error(tmp_path):
    proc = vla("dataset", "info", str(tmp_path), check=False)
    assert proc.returncode == 2 and "not a LeRobot v3 dataset" in proc.stderr


def test_dataset_info_prints_summary(lift_dataset):
    text = vla("dataset", "info", str(lift_dataset)).stdout
    assert "episodes  2" in text and "observation.images.scene" in text and "lift the red cube" in text
    info = json.loads(vla("dataset", "info", str(lift_dataset), "--json").stdout)
    assert info["episodes"] == 2 and info["fps"] == 20


def test_envs_marks_experts():
    out = vla("envs", "--suite", "robomimic").stdout
    assert "robomimic/Lift  [expert]" in out and "robomimic/ToolHang" in out


@pytest.mark.slow
def test_bench_sim_prints_ratio_table(tmp_path):
    out = vla(
        "bench",
        "sim",
        "--envs",
        "robomimic/Lift",
        "--steps",
        "20",
        "--rounds",
        "2",
        "--max-workers",
        "2",
        "--scaling-steps",
        "20",
        "--out",
        str(tmp_path / "bench.json"),
    ).stdout
    assert any(line.startswith("| robomimic/Lift |") for line in out.splitlines())
    (row,) = json.loads((tmp_path / "bench.json").read_text())
    assert row["raw_steps_per_s"] > 0 and row["wrapper_steps_per_s"] > 0
    assert row["ratio"] == pytest.approx(row["wrapper_steps_per_s"] / row["raw_steps_per_s"])
    assert set(row["subprocess_steps_per_s"]) == {"1", "2"}


@pytest.mark.rendering
def test_bench_sim_rgb_compares_the_camera_looks_side_by_side(tmp_path):
    out = vla(
        "bench",
        "sim",
        "--obs-mode",
        "rgb",
        "--envs",
        "metaworld/pick-place-v3",
        "--steps",
        "5",
        "--rounds",
        "1",
        "--max-workers",
        "1",
        "--scaling-steps",
        "8",
        "--sim-franka-seconds",
        "0.1",
        "--out",
        str(tmp_path / "b.json"),
    ).stdout
    assert "fast / default" in out and "real-time factor" in out
    rows = json.loads((tmp_path / "b.json").read_text())
    looks = {r["render_quality"]: r for r in rows if r["env"] == "metaworld/pick-place-v3"}
    assert set(looks) == {"default", "fast"}
    assert all(r["ms_per_camera_frame"] > 0 and r["raw_steps_per_s"] > 0 for r in looks.values())
    franka = [r for r in rows if r["env"].startswith("ros/sim_franka")]
    assert [r["render_quality"] for r in franka] == ["default", "fast"]
    assert all(r["real_time_factor"] > 0 and r["simulated_s"] == pytest.approx(0.1) for r in franka)


def test_hub_download_offline_says_why(tmp_path):
    proc = vla("dataset", "download", "HuggingFaceVLA/libero", str(tmp_path / "libero"), check=False)
    assert proc.returncode == 2 and "offline" in proc.stderr


def test_collect_without_expert_lists_tasks_with_experts(tmp_path):
    proc = vla(
        "collect", "--env", "libero/libero_spatial.0", "--episodes", "1", "--out", str(tmp_path / "x"), check=False
    )
    assert proc.returncode == 2
    assert "LIBERO has no scripted experts" in proc.stderr and "robomimic/Lift" in proc.stderr
    assert not (tmp_path / "x").exists()


def test_demo_runs_every_stage_with_small_settings(tmp_path):
    """`make demo`'s job end to end at toy sizes: dataset, DM1, evaluation, TACO, and the RL stage."""
    out = tmp_path / "demo"
    vla(
        "demo",
        *("--episodes", "2", "--train-steps", "20", "--eval-episodes", "2", "--out", str(out)),
        *("--rl-minutes", "0.05", "--rl-sft-steps", "20", "--taco-samples", "4"),
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval"]["episodes"] == 2
    taco = summary["taco"]
    assert taco["episodes"] == 2 and taco["num_samples"] == 4 and 0 <= taco["ood_rate"] <= 1
    assert (out / "train" / "checkpoints" / "last" / "verifier_taco" / "model.safetensors").is_file()
    assert "TACO (verifier fitted" in (out / "summary.md").read_text()
    rl = summary["rl"]
    assert rl["iterations"] >= 1 and rl["before"]["episodes"] == rl["after"]["episodes"] == 2
    assert (out / "rl" / "checkpoints" / "last" / "model.safetensors").is_file()
    assert "RL (Flow-SDE PPO" in (out / "summary.md").read_text()
