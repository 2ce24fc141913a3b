"""Named training recipes and `vla bench recipes` (collect -> train -> evaluate, resumable)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from vla import keys
from vla.cli.main import build_parser, train_config_from_args
from vla.registry import UnknownNameError
from vla.training.recipes import RECIPES, recipe_overrides


@pytest.mark.parametrize("name", RECIPES.names())
def test_every_recipe_loads_and_trains_a_few_steps(name, tmp_path, lift_dataset):
    from vla.policies.checkpoint import load_policy
    from vla.training.trainer import train

    args = build_parser().parse_args(
        ["train", "--recipe", name, "--dataset", str(lift_dataset), "--out", str(tmp_path / "run")]
    )
    config = train_config_from_args(args)
    assert config.recipe == name
    recipe = RECIPES.get(name)
    for key, value in recipe.train.items():
        if key != "policy":
            assert getattr(config, key) == value
    for key, value in recipe.train.get("policy", {}).items():
        assert getattr(config.policy, key) == (tuple(value) if isinstance(value, list) else value)
    if recipe.observation == "state":
        assert config.policy.vector_features == (keys.OBS_STATE, keys.OBS_ENV_STATE)
        assert config.policy.image_features == ()
    else:
        assert config.policy.image_features == ("observation.images.scene", "observation.images.wrist")
    checkpoint = train(replace(config, steps=3, warmup_steps=1, batch_size=8, save_every=3))
    policy = load_policy(checkpoint)
    assert policy.config.head == config.policy.head
    assert json.loads((tmp_path / "run" / "config.json").read_text())["recipe"] == name


def test_flags_and_config_override_the_recipe(tmp_path, lift_dataset):
    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps({"batch_size": 7, "policy": {"chunk_size": 12}}))
    name = RECIPES.names()[0]
    args = build_parser().parse_args(
        ["train", "--recipe", name, "--dataset", str(lift_dataset), "--config", str(saved), "--steps", "11"]
    )
    config = train_config_from_args(args)
    assert (config.steps, config.batch_size, config.policy.chunk_size) == (11, 7, 12)
    # what the --config file did not name still comes from the recipe, not the dataclass default
    assert config.policy.head == RECIPES.get(name).train["policy"]["head"]


def test_unknown_recipe_and_missing_features_are_refused(tmp_path, lift_dataset):
    with pytest.raises(UnknownNameError, match="Available: .*state-"):
        recipe_overrides("state-dm9", lift_dataset)
    state_recipe = next(n for n in RECIPES.names() if RECIPES.get(n).observation == "state")
    image_recipe = next(n for n in RECIPES.names() if RECIPES.get(n).observation == "image")
    with pytest.raises(ValueError, match="object poses"):
        RECIPES.get(state_recipe).overrides_for({keys.OBS_STATE: {}})
    with pytest.raises(ValueError, match="camera features"):
        RECIPES.get(image_recipe).overrides_for({keys.OBS_STATE: {}, keys.OBS_ENV_STATE: {}})


def test_bench_recipes_end_to_end_on_two_tasks_and_resumes(tmp_path, monkeypatch):
    """Tiny budget: 2 demonstrations per task, 4 training steps, 2 evaluation episodes."""
    import vla.training.trainer as trainer
    from vla.bench.recipes import BenchRecipesConfig, run_bench_recipes

    state_recipe = next(n for n in RECIPES.names() if RECIPES.get(n).observation == "state")
    config = BenchRecipesConfig(
        tasks=("maniskill/PushCube-v1", "robomimic/Lift"),
        recipes=(state_recipe,),
        episodes=2,
        steps=4,
        eval_episodes=2,
        videos=0,
        out=tmp_path / "sweep",
    )
    rows = run_bench_recipes(config)
    assert [r["task"] for r in rows] == ["maniskill/PushCube-v1", "robomimic/Lift"]
    for row in rows:
        assert row["demonstrations"] == 2 and row["train_steps"] == 4 and row["episodes"] == 2
        assert 0.0 <= row["success"] <= 1.0 and row["train_minutes"] >= 0
    table = (tmp_path / "sweep" / "recipes.md").read_text()
    assert "PushCube-v1" in table and "Lift" in table
    assert (tmp_path / "sweep" / "recipes.png").stat().st_size > 0
    assert len(json.loads((tmp_path / "sweep" / "recipes.json").read_text())) == 2

    # run again: every stage is on record, so nothing is collected, trained or evaluated twice
    def refuse(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr(trainer, "train", refuse)
    monkeypatch.setattr("sim.collect.collect", refuse)
    monkeypatch.setattr("vla.evaluation.evaluate.evaluate", refuse)
    assert run_bench_recipes(config) == rows


def test_bench_recipes_refuses_bad_names_before_any_work(tmp_path):
    from vla.bench.recipes import BenchRecipesConfig, run_bench_recipes

    with pytest.raises(UnknownNameError, match="recipe"):
        run_bench_recipes(BenchRecipesConfig(recipes=("no-such-recipe",), out=tmp_path / "a"))
    with pytest.raises(ValueError, match="TASK=DIR"):
        run_bench_recipes(
            BenchRecipesConfig(recipes=(RECIPES.names()[0],), datasets=("robomimic/Lift=/x",), out=tmp_path / "b")
        )
    assert not (tmp_path / "a").exists()


def test_task_group_collects_one_dataset_trains_on_language_and_evaluates_per_task(tmp_path, monkeypatch):
    """A task group (Meta-World's MT10, cut to two tasks here) goes through collect -> a state recipe
    (which turns on the instruction, the only thing telling the tasks apart) -> per-task evaluation."""
    import sim.metaworld
    from sim import group_members
    from sim.collect import CollectConfig, collect
    from vla.datasets.lerobot_io import dataset_info
    from vla.evaluation.evaluate import EvalConfig, evaluate
    from vla.training.trainer import train

    monkeypatch.setattr(sim.metaworld, "task_groups", lambda: {"MT10": ["reach-v3", "push-v3"]})
    assert group_members("metaworld/MT10") == ["metaworld/reach-v3", "metaworld/push-v3"]
    assert group_members("metaworld/reach-v3") is None and group_members("nosuite/x") is None
    dataset = tmp_path / "mt"
    result = collect(CollectConfig(env="metaworld/MT10", episodes=1, out=dataset, num_envs=1, obs_mode="state"))
    assert result.written == 2
    info = dataset_info(dataset)
    assert info["episodes"] == 2 and len(info["tasks"]) == 2
    state_recipe = next(n for n in RECIPES.names() if RECIPES.get(n).observation == "state")
    args = build_parser().parse_args(["train", "--recipe", state_recipe, "--dataset", str(dataset)])
    config = train_config_from_args(args)
    assert config.policy.use_language
    checkpoint = train(replace(config, out=tmp_path / "run", steps=3, warmup_steps=1, batch_size=8, save_every=3))
    results = evaluate(
        EvalConfig(policy=checkpoint, env="metaworld/MT10", episodes=1, num_envs=1, videos=0, out=tmp_path / "eval")
    )
    assert list(results["per_task"]) == ["metaworld/reach-v3", "metaworld/push-v3"]
    assert results["episodes"] == 2 and results["tasks"] == 2
    rates = [r["success_rate"] for r in results["per_task"].values()]
    assert results["success_rate"] == pytest.approx(sum(rates) / 2)
    assert (tmp_path / "eval" / "metaworld_reach-v3" / "results.json").exists()
    assert (tmp_path / "eval" / "per_task.png").stat().st_size > 0


def test_train_profile_times_every_phase_of_a_step(lift_dataset, capsys):
    from vla.bench.train_profile import PHASES, BenchTrainProfileConfig, run_bench_train_profile

    rows = run_bench_train_profile(
        BenchTrainProfileConfig(
            dataset=lift_dataset,
            recipes=("state-dm1-small-v1",),
            heads=("meanflow", "flow_matching"),
            meanflow_dudt=("jvp", "central_difference"),
            threads=(1,),
            steps=14,
        )
    )
    assert [r["head"] for r in rows] == ["meanflow (jvp)", "meanflow (central_difference)", "flow_matching"]
    for row in rows:
        assert all(row["step_ms"][p] > 0 for p in PHASES)
        # the phases are parts of the step: together no longer than the whole step
        assert sum(row["step_ms"][p] for p in PHASES) <= 1e3 / row["steps_per_s"] * 1.05
    assert "encode ms" in capsys.readouterr().out
