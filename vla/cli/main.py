"""`vla`: one command, one verb per job.

    vla demo                                   # the newcomer's main job (see README)
    vla envs [--suite robomimic]               # what can be simulated, and which tasks have experts
    vla collect --env robomimic/Lift --episodes 50 --out data/datasets/lift
    vla record --env robomimic/Lift --device keyboard --episodes 10   # teleoperation (also gamepad, spacemouse)
    vla replay --dataset data/datasets/lift --video data/replay.mp4     # recorded actions, back in the simulator
    vla dataset info data/datasets/lift
    vla dataset export-zarr data/datasets/lift data/lift.zarr
    vla dataset import-zarr data/lift.zarr data/datasets/lift_copy
    vla train --dataset data/datasets/lift --policy.vector-features observation.state observation.environment_state
    vla train --config data/runs/train/config.json --out data/runs/train2 --steps 10000   # a saved run, one change
    vla eval --policy data/runs/train/checkpoints/last --env robomimic/Lift --episodes 50
    vla rl --policy data/runs/train/checkpoints/last --env robomimic/Lift --algo flow-noise --optimizer ppo
    vla serve --policy data/runs/train/checkpoints/last --port 8000   # openpi-client compatible
    vla bench sim
    vla bench experts

Every verb with a config takes --config PATH.json (a saved config, e.g. a run's config.json);
flags given on the command line override the file's values.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vla.cli.args import add_dataclass_arguments, config_from_args, config_to_json
from vla.registry import Registry, UnknownNameError

log = logging.getLogger("vla")


@dataclass(frozen=True)
class Verb:
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    config: str = ""  # "module:Name" of the verb's config dataclass, if its flags come from one


VERBS: Registry[Verb] = Registry("verb")


def config_class(path: str) -> type:
    """The config dataclass at "module:Name", imported only when a verb is used."""
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def flags_of(path: str) -> Callable[[argparse.ArgumentParser], None]:
    """A verb's ``configure``: its flags are the fields of its config dataclass (and ``--config``)."""
    return lambda parser: add_dataclass_arguments(parser, config_class(path))


def config_verb(help: str, path: str, run: Callable[[argparse.Namespace], int]) -> Verb:
    """A verb whose flags are the config dataclass at ``path``."""
    return Verb(help, flags_of(path), run, config=path)


def verb_config(args: argparse.Namespace):
    """The config of the verb being run: dataclass defaults < ``--config`` JSON < flags given."""
    return config_from_args(config_class(VERBS.get(args.verb).config), args)


def config_classes() -> dict[str, type]:
    """Every config dataclass the CLI builds from flags, by command ("train", "bench sim", ...)."""
    classes = {name: config_class(VERBS.get(name).config) for name in VERBS.names() if VERBS.get(name).config}
    classes.update({f"bench {name}": config_cls for name, (config_cls, _, _) in _bench_suites().items()})
    return classes


def quiet_third_party() -> None:
    """Keep logs readable: encoder banners and per-episode HF progress bars say nothing useful."""
    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1: errors only
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:  # pragma: no cover
        pass
    try:
        import av

        av.logging.set_level(av.logging.ERROR)  # "moving the moov atom" per encoded video
    except (ImportError, AttributeError):  # pragma: no cover
        pass
    for name in ("robosuite", "libav", "mani_skill", "lerobot.configs.video"):
        logging.getLogger(name).setLevel(logging.ERROR)


# --------------------------------------------------------------------------- envs
def _configure_envs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--suite", default=None, help="only this suite")
    p.add_argument("--groups", action="store_true", help="also list task groups (MT10, LIBERO suites, ...)")


def _run_envs(args: argparse.Namespace) -> int:
    from sim import SUITES
    from sim.experts import expert_tasks

    names = [args.suite] if args.suite else SUITES.names()
    for suite_name in names:
        suite = SUITES.get(suite_name)
        tasks = suite.tasks()
        experts = set(expert_tasks(suite_name))
        print(f"{suite_name}: {suite.description} ({len(tasks)} tasks)")
        for task in tasks:
            print(f"  {suite_name}/{task}{'  [expert]' if task in experts or '*' in experts else ''}")
        if args.groups:
            for group, members in suite.task_groups().items():
                print(f"  group {group}: {len(members)} tasks")
    return 0


VERBS.add("envs", Verb("list simulator suites, tasks and scripted experts", _configure_envs, _run_envs))


# --------------------------------------------------------------------------- collect
def _run_collect(args: argparse.Namespace) -> int:
    from sim.collect import collect

    config = verb_config(args)
    log.info("collect config:\n%s", config_to_json(config))
    result = collect(config)
    print(json.dumps(result.to_dict(), indent=2))
    return 130 if result.interrupted else 0


VERBS.add(
    "collect",
    config_verb(
        "record scripted-expert demonstrations into a LeRobot v3 dataset", "sim.collect:CollectConfig", _run_collect
    ),
)


# --------------------------------------------------------------------------- record
def _run_record(args: argparse.Namespace) -> int:
    from hardware.teleop import DeviceNotFoundError
    from vla.teleop.session import record

    config = verb_config(args)
    try:
        result = record(config)
    except DeviceNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result.to_dict(), indent=2))
    return 0


VERBS.add(
    "record",
    config_verb(
        "teleoperate a simulated arm and record episodes into a LeRobot v3 dataset (crash-safe)",
        "vla.teleop.session:RecordConfig",
        _run_record,
    ),
)


def _run_replay(args: argparse.Namespace) -> int:
    from sim.replay import replay

    summary = replay(verb_config(args))
    for row in summary["results"]:
        print(f"episode {row['episode']:4d}  seed {row['seed']}  {row['steps']} steps  success={row['success']}")
    print(f"replay success: {100 * summary['replay_success_rate']:.0f}% of {summary['episodes']} episodes")
    if "video" in summary:
        print(f"video: {summary['video']}")
    return 0


VERBS.add(
    "replay",
    config_verb(
        "replay a dataset's recorded actions in its simulator from each episode's seed (success rate, video)",
        "sim.replay:ReplayConfig",
        _run_replay,
    ),
)


# --------------------------------------------------------------------------- dataset
def _configure_dataset(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(
        dest="dataset_verb", required=True, metavar="{info,view,from-bag,export-zarr,import-zarr,download}"
    )
    info = sub.add_parser("info", help="episodes, frames, features, fps, tasks")
    info.add_argument("root", type=Path)
    info.add_argument("--json", action="store_true", help="print JSON")
    view = sub.add_parser("view", help="one episode as an MP4 (cameras over action/state plots) or a rerun .rrd")
    view.add_argument("root", type=Path)
    view.add_argument("--episode", type=int, default=0)
    view.add_argument("--out", type=Path, default=None, help="episode.mp4 or episode.rrd (default: <root>_ep<i>.mp4)")
    bag = sub.add_parser("from-bag", help="rosbag2 MCAP recordings (vla_ros.recorder) -> LeRobot episodes")
    bag.add_argument("bags", type=Path, nargs="+", help="bag directories, one episode each")
    bag.add_argument("--out", type=Path, required=True, help="dataset (appended to)")
    bag.add_argument("--fps", type=float, default=30.0, help="resampling rate")
    bag.add_argument("--cameras", nargs="+", default=None, help="role=topic per camera")
    bag.add_argument("--joint-states", default="/joint_states")
    bag.add_argument("--command", default="/fr3_arm_controller/joint_trajectory", help="JointTrajectory topic")
    bag.add_argument("--task", default=None, help="instruction (default: the bag's /task_instruction)")
    export = sub.add_parser("export-zarr", help="LeRobot dataset -> diffusion_policy zarr ReplayBuffer")
    export.add_argument("root", type=Path)
    export.add_argument("out", type=Path)
    imp = sub.add_parser("import-zarr", help="zarr ReplayBuffer -> LeRobot v3 dataset (lossless PNG frames)")
    imp.add_argument("zarr", type=Path)
    imp.add_argument("out", type=Path)
    imp.add_argument("--fps", type=int, default=None, help="needed when the zarr does not record it")
    imp.add_argument("--task", default=None, help="instruction for every frame (default: from the zarr)")
    imp.add_argument("--video", action="store_true", help="encode images as MP4 (lossy) instead of PNG")
    dl = sub.add_parser("download", help="fetch a public LeRobot v3 dataset from the Hugging Face Hub (network)")
    dl.add_argument("repo_id", help="e.g. HuggingFaceVLA/libero")
    dl.add_argument("out", type=Path)
    dl.add_argument("--revision", default=None)


def format_dataset_info(info: dict) -> str:
    lines = [
        f"dataset   {info['root']}  ({info['codebase_version']}, robot {info['robot_type']})",
        f"episodes  {info['episodes']}",
        f"frames    {info['frames']}  ({info['frames'] / max(info['fps'], 1):.1f} s at {info['fps']} fps)",
        f"tasks     {len(info['tasks'])}",
    ]
    lines += [f"  - {t}" for t in info["tasks"][:20]]
    lines.append("features")
    lines += [f"  {k:<34} {v['dtype']:<8} {tuple(v['shape'])}" for k, v in info["features"].items()]
    return "\n".join(lines)


def _run_dataset(args: argparse.Namespace) -> int:
    if args.dataset_verb == "info":
        from vla.datasets.lerobot_io import dataset_info

        info = dataset_info(args.root)
        print(json.dumps(info, indent=2) if args.json else format_dataset_info(info))
    elif args.dataset_verb == "view":
        from vla.datasets.viewer import episode_rerun, episode_video

        out = args.out or Path(f"{str(args.root).rstrip('/')}_ep{args.episode}.mp4")
        write = episode_rerun if out.suffix == ".rrd" else episode_video
        print(write(args.root, args.episode, out))
    elif args.dataset_verb == "from-bag":
        from vla.teleop.from_bag import DEFAULT_CAMERAS, FromBagConfig, bags_to_dataset

        config = FromBagConfig(
            bags=tuple(args.bags),
            out=args.out,
            fps=args.fps,
            cameras=tuple(args.cameras or DEFAULT_CAMERAS),
            joint_states=args.joint_states,
            command=args.command,
            task=args.task,
        )
        for report in bags_to_dataset(config):
            streams = ", ".join(
                f"{k}: {v['messages']} msgs, {v['dropped_ticks']} dropped, {v['duplicated_ticks']} duplicated"
                for k, v in report["streams"].items()
            )
            print(f"episode {report['episode_index']}: {report['ticks']} frames ({streams})")
    elif args.dataset_verb == "download":
        from vla.datasets.lerobot_io import download_dataset

        print(format_dataset_info(download_dataset(args.repo_id, args.out, args.revision)))
    elif args.dataset_verb == "export-zarr":
        from vla.datasets.zarr_io import export_zarr

        print(json.dumps(export_zarr(args.root, args.out)))
    else:
        from vla.datasets.zarr_io import import_zarr

        print(json.dumps(import_zarr(args.zarr, args.out, fps=args.fps, task=args.task, use_videos=args.video)))
    return 0


VERBS.add("dataset", Verb("inspect and convert datasets", _configure_dataset, _run_dataset))


# --------------------------------------------------------------------------- bench
def _bench_suites() -> dict[str, tuple[type, Callable, str]]:
    from sim.bench import BenchExpertsConfig, BenchSimConfig, run_bench_experts, run_bench_sim
    from vla.bench.policy_latency import BenchPolicyConfig, run_bench_policy
    from vla.bench.recipes import BenchRecipesConfig, run_bench_recipes
    from vla.bench.record_throughput import BenchRecordConfig, run_bench_record
    from vla.bench.rl_sweep import BenchRLSweepConfig, run_bench_rl_sweep
    from vla.bench.rl_throughput import BenchRLConfig, run_bench_rl
    from vla.bench.serve_load import BenchServeConfig, run_bench_serve
    from vla.bench.taco_latency import BenchTacoConfig, run_bench_taco
    from vla.bench.thread_contention import BenchThreadsConfig, run_bench_threads
    from vla.bench.train_profile import BenchTrainProfileConfig, run_bench_train_profile
    from vla.bench.train_throughput import BenchTrainConfig, run_bench_train

    return {
        "sim": (BenchSimConfig, run_bench_sim, "raw simulator vs wrapper steps/s, subprocess scaling"),
        "experts": (BenchExpertsConfig, run_bench_experts, "success rate of each scripted expert"),
        "policy": (BenchPolicyConfig, run_bench_policy, "inference latency per chunk vs NFE and LeRobot peers"),
        "train": (BenchTrainConfig, run_bench_train, "training samples/s of vla train vs lerobot-train"),
        "train-profile": (
            BenchTrainProfileConfig,
            run_bench_train_profile,
            "where a training step goes (data, encoder, head/JVP, backward, optimizer, EMA) per recipe, head, threads",
        ),
        "serve": (BenchServeConfig, run_bench_serve, "vla serve latency, 1 vs many clients, batching on and off"),
        "rl": (BenchRLConfig, run_bench_rl, "RL env steps/s vs raw stepping of the same envs, learner share"),
        "rl-sweep": (
            BenchRLSweepConfig,
            run_bench_rl_sweep,
            "exploration x optimizer RL runs side by side, with held-out re-evaluation of each best",
        ),
        "recipes": (
            BenchRecipesConfig,
            run_bench_recipes,
            "tasks x training recipes: collect, train, evaluate 100 unseen episodes, wall time per stage",
        ),
        "taco": (
            BenchTacoConfig,
            run_bench_taco,
            "TACO latency per chunk vs N, shared observation encoding vs naive repetition",
        ),
        "record": (
            BenchRecordConfig,
            run_bench_record,
            "recording two 640x480 cameras + joint states at 30 Hz: frames kept, jitter, save time, vs LeRobot's writer",
        ),
        "threads": (
            BenchThreadsConfig,
            run_bench_threads,
            "training steps/s alone and beside vla eval, thread budgets vs torch defaults",
        ),
    }


def _configure_bench(p: argparse.ArgumentParser) -> None:
    suites = _bench_suites()
    sub = p.add_subparsers(dest="bench_verb", required=True, metavar="{" + ",".join(suites) + "}")
    for name, (config_cls, _, help_text) in suites.items():
        add_dataclass_arguments(sub.add_parser(name, help=help_text), config_cls)


def _run_bench(args: argparse.Namespace) -> int:
    config_cls, run, _ = _bench_suites()[args.bench_verb]
    config = config_from_args(config_cls, args)
    rows = run(config)
    if config.out and not Path(config.out).is_dir():  # a bench whose --out is a directory writes its own files
        Path(config.out).write_text(json.dumps(rows, indent=2, default=str))
    return 0


VERBS.add("bench", Verb("benchmarks that print side-by-side ratios", _configure_bench, _run_bench))


# --------------------------------------------------------------------------- train / eval
def train_config_from_args(args: argparse.Namespace):
    """`vla train`'s config: defaults < the named --recipe (features from the dataset) < --config < flags."""
    from vla.training.recipes import recipe_overrides
    from vla.training.trainer import TrainConfig

    config = verb_config(args)
    if not config.recipe:
        return config
    return config_from_args(TrainConfig, args, base=recipe_overrides(config.recipe, config.dataset))


def _run_train(args: argparse.Namespace) -> int:
    from vla.training.trainer import train

    checkpoint = train(train_config_from_args(args))
    print(f"checkpoint: {checkpoint}")
    return 0


VERBS.add(
    "train",
    config_verb(
        "train a flow VLA (flow matching or MeanFlow/DM1) from a LeRobot dataset",
        "vla.training.trainer:TrainConfig",
        _run_train,
    ),
)


def _run_eval(args: argparse.Namespace) -> int:
    from vla.evaluation.evaluate import evaluate

    results = evaluate(verb_config(args))
    summary = {
        k: results[k]
        for k in (
            "env",
            "head",
            "episodes",
            "success_rate",
            "success_ci95",
            "mean_return",
            "nfe",
            "latency_ms_per_chunk_call",
        )
    }
    print(json.dumps(summary, indent=2))
    return 0


VERBS.add(
    "eval",
    config_verb("evaluate a policy checkpoint in parallel simulators", "vla.evaluation.evaluate:EvalConfig", _run_eval),
)


def _run_rl(args: argparse.Namespace) -> int:
    from vla.cli.rl import run_rl

    summary = run_rl(verb_config(args))
    print(json.dumps(summary, indent=2))
    return 0


VERBS.add(
    "rl",
    config_verb(
        "fine-tune a flow policy with online RL (pi_RL: flow-noise / flow-sde, ppo / grpo) in parallel simulators",
        "vla.rl.trainer:RLConfig",
        _run_rl,
    ),
)


# --------------------------------------------------------------------------- verifier
def _configure_verifier(p: argparse.ArgumentParser) -> None:
    from vla.verifiers.taco import TacoFitConfig

    sub = p.add_subparsers(dest="verifier_verb", required=True, metavar="{fit}")
    fit = sub.add_parser("fit", help="fit a TACO verifier (Coin Flipping Network) to a policy on its SFT dataset")
    add_dataclass_arguments(fit, TacoFitConfig)


def _run_verifier(args: argparse.Namespace) -> int:
    from vla.verifiers.taco import TacoFitConfig, fit_taco

    print(fit_taco(config_from_args(TacoFitConfig, args)))
    return 0


VERBS.add(
    "verifier",
    Verb("test-time verifiers: fit TACO's pseudo-count network to a policy", _configure_verifier, _run_verifier),
)


# --------------------------------------------------------------------------- serve
def _run_serve(args: argparse.Namespace) -> int:
    from vla.serving.server import serve

    return serve(verb_config(args))


VERBS.add(
    "serve",
    config_verb(
        "serve a policy checkpoint over websocket (openpi-client compatible)",
        "vla.serving.server:ServeConfig",
        _run_serve,
    ),
)


# --------------------------------------------------------------------------- demo
def _run_demo(args: argparse.Namespace) -> int:
    from vla.cli.demo import run_demo

    return run_demo(verb_config(args))


VERBS.add(
    "demo",
    config_verb(
        "the main job: demonstrations -> dataset -> DM1 policy -> evaluation", "vla.cli.demo:DemoConfig", _run_demo
    ),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vla", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", metavar="{" + ",".join(VERBS.names()) + "}")
    for name in VERBS.names():
        verb = VERBS.get(name)
        verb.configure(sub.add_parser(name, help=verb.help, description=verb.help))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    quiet_third_party()
    if not args.verb:
        parser.print_help()
        return 0
    try:
        return VERBS.get(args.verb).run(args)
    except (UnknownNameError, ValueError, FileExistsError, FileNotFoundError, RuntimeError, FloatingPointError) as err:
        log.error("%s", err)
        return 2


if __name__ == "__main__":
    sys.exit(main())
