"""The observation contract of a policy, written once.

Which features a policy reads (vectors float32 ``(D,)``, camera images uint8 ``(H, W, 3)``
top-row-first, the instruction), the chunk it returns, validation with clear errors, an example
observation and the metadata handshake. The policy, the policy server, the deployment code on
the robot and the benchmarks all use this class; none of them re-derives shapes from a config.

Batched observations carry a leading batch dimension on every array and ``task`` as a list
of strings; an unbatched one (one robot, one server request) has none and ``task`` a string.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vla import keys

NOISE = "noise"  # optional request input: the initial noise of the chunk, (H, A)
PROMPT = "prompt"  # openpi's name for the instruction; an alias of ``task``


class ObservationError(ValueError):
    """An observation a policy cannot take; the message says what was expected."""


@dataclass(frozen=True)
class ObservationSpec:
    vectors: dict[str, int]  # feature -> D (float32)
    images: dict[str, tuple[int, int, int]]  # feature -> (H, W, 3) (uint8)
    language: bool
    chunk_size: int
    action_dim: int
    n_action_steps: int
    inference_steps: int
    head: str

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_policy_config(cls, cfg: Any) -> ObservationSpec:
        return cls(
            vectors={k: int(cfg.feature_shapes[k][0]) for k in cfg.vector_features},
            images={k: tuple(int(n) for n in cfg.feature_shapes[k]) for k in cfg.image_features},  # type: ignore[misc]
            language=bool(cfg.use_language),
            chunk_size=int(cfg.chunk_size),
            action_dim=int(cfg.action_dim),
            n_action_steps=int(cfg.n_action_steps),
            inference_steps=int(cfg.inference_steps),
            head=str(cfg.head),
        )

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> ObservationSpec:
        """The spec a policy server announced in its handshake (see ``metadata``)."""
        features = metadata["features"]
        return cls(
            vectors={k: int(v["shape"][0]) for k, v in features.items() if v["dtype"] == "float32"},
            images={k: tuple(int(n) for n in v["shape"]) for k, v in features.items() if v["dtype"] == "uint8"},  # type: ignore[misc]
            language=bool(metadata.get("use_language", keys.TASK in features)),
            chunk_size=int(metadata["chunk_size"]),
            action_dim=int(metadata["action_dim"]),
            n_action_steps=int(metadata["n_action_steps"]),
            inference_steps=int(metadata["inference_steps"]),
            head=str(metadata["head"]),
        )

    # ------------------------------------------------------------------ description
    @property
    def array_features(self) -> dict[str, tuple[int, ...]]:
        """Array features (name -> unbatched shape); the instruction is not an array."""
        return {**{k: (d,) for k, d in self.vectors.items()}, **self.images}

    def metadata(self) -> dict[str, Any]:
        """What a caller needs to feed the policy and run its chunks: the server's handshake."""
        features: dict[str, Any] = {k: {"shape": [d], "dtype": "float32"} for k, d in self.vectors.items()}
        features.update({k: {"shape": list(s), "dtype": "uint8"} for k, s in self.images.items()})
        if self.language:
            features[keys.TASK] = {"shape": [], "dtype": "str"}
        chunk = [self.chunk_size, self.action_dim]
        return {
            "head": self.head,
            "action_dim": self.action_dim,
            "chunk_size": self.chunk_size,
            "n_action_steps": self.n_action_steps,
            "inference_steps": self.inference_steps,
            "use_language": self.language,
            "features": features,
            "actions": {"shape": chunk, "dtype": "float32"},
            "optional_inputs": {
                NOISE: {"shape": chunk, "dtype": "float32"},
                PROMPT: {"shape": [], "dtype": "str", "alias_of": keys.TASK},
            },
        }

    def example(self, batch_size: int | None = None, image_value: int = 0, instruction: str = "") -> dict[str, Any]:
        """A neutral observation of the right shapes (warm-up calls, smoke tests, benchmarks)."""
        lead = () if batch_size is None else (batch_size,)
        obs: dict[str, Any] = {k: np.zeros((*lead, d), np.float32) for k, d in self.vectors.items()}
        obs.update({k: np.full((*lead, *s), image_value, np.uint8) for k, s in self.images.items()})
        if self.language:
            obs[keys.TASK] = instruction if batch_size is None else [instruction] * batch_size
        return obs

    # ------------------------------------------------------------------ validation
    def _missing(self, obs: Any) -> None:
        if not isinstance(obs, dict):
            raise ObservationError(f"an observation must be a map of features, got {type(obs).__name__}")
        missing = [k for k in self.array_features if k not in obs]
        if missing:
            raise ObservationError(f"observation lacks {missing}; the policy reads {list(self.array_features)}")

    def _instruction(self, obs: dict[str, Any], batch_size: int | None) -> Any:
        task = obs.get(keys.TASK, obs.get(PROMPT))
        if batch_size is None:
            if not isinstance(task, str):
                raise ObservationError(f"'task' (the instruction) must be a str, got {task!r:.80}")
            return task
        if isinstance(task, str):
            return [task] * batch_size
        if not isinstance(task, (list, tuple)) or len(task) != batch_size or not all(isinstance(t, str) for t in task):
            raise ObservationError(
                f"'task' must be a str (or a list of {batch_size} str when batched), got {task!r:.80}"
            )
        return list(task)

    def to_batch(
        self, obs: Any, allow_batched: bool = True, allow_unbatched: bool = True
    ) -> tuple[dict[str, Any], int, bool]:
        """Validate a numpy observation from outside the process (a client, a robot) and return
        ``(batched observation, batch size, whether it came batched)``.

        Vectors must be numeric, images uint8 HWC of the trained size; NaN/inf are refused; all
        features agree on being batched and on the batch size.
        """
        self._missing(obs)
        arrays: dict[str, Any] = {}
        batched_flags, batch_sizes = set(), set()
        for key, shape in self.array_features.items():
            value = obs[key]
            if isinstance(value, (str, bytes, dict)) or value is None:
                raise ObservationError(f"{key} must be a numeric array, got {type(value).__name__}")
            arr = _as_array(key, value, shape)
            if key in self.images:
                if arr.dtype != np.uint8:
                    raise ObservationError(f"{key} must be uint8 (H, W, 3) = {shape}, got dtype {arr.dtype}")
            elif arr.dtype.kind not in "fiu":
                raise ObservationError(f"{key} must be a float array of shape {shape}, got dtype {arr.dtype}")
            if arr.shape == shape and allow_unbatched:
                batched_flags.add(False)
                arr = arr[None]
            elif allow_batched and arr.ndim == len(shape) + 1 and arr.shape[1:] == shape and arr.shape[0] > 0:
                batched_flags.add(True)
            else:
                batched_form = "(B, " + ", ".join(map(str, shape)) + ")"
                forms = {
                    (True, True): f"{shape} (or {batched_form} batched)",
                    (True, False): str(shape),
                    (False, True): batched_form,
                }[(allow_unbatched, allow_batched)]
                raise ObservationError(
                    f"{key} must have shape {forms}, got {arr.shape} (the policy was trained on {shape})"
                )
            if key in self.vectors:
                with np.errstate(over="ignore", invalid="ignore"):  # checked next: 1e300 (f8) is inf as f4
                    arr = arr.astype(np.float32)
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                raise ObservationError(f"{key} contains NaN or inf (or values beyond the float32 range)")
            arrays[key] = arr
            batch_sizes.add(arr.shape[0])
        if len(batched_flags) > 1 or len(batch_sizes) > 1:
            raise ObservationError(
                f"features mix batched and unbatched arrays or batch sizes: { {k: a.shape for k, a in arrays.items()} }"
            )
        batched, b = batched_flags.pop(), batch_sizes.pop()
        if self.language:
            arrays[keys.TASK] = self._instruction(obs, b if batched else None)
            if not batched:
                arrays[keys.TASK] = [arrays[keys.TASK]]
        return arrays, b, batched

    def check_batch(self, obs: Any) -> int:
        """Validate a batched observation inside the process (numpy or torch; images uint8
        ``(B, H, W, 3)`` or float ``(B, 3, H, W)`` as training batches carry them) and return
        the batch size. Nothing is copied."""
        self._missing(obs)
        batch_sizes = set()
        for key, d in self.vectors.items():
            x = obs[key]
            if len(np.shape(x)) != 2 or np.shape(x)[1] != d:
                raise ObservationError(f"{key} must have shape (B, {d}), got {tuple(np.shape(x))}")
            if not _finite(x):
                raise ObservationError(f"{key} contains NaN or inf")
            batch_sizes.add(np.shape(x)[0])
        for key, (h, w, c) in self.images.items():
            x = obs[key]
            shape = tuple(np.shape(x))
            if shape[1:] not in ((h, w, c), (c, h, w)) or len(shape) != 4:
                raise ObservationError(f"{key} must be (B, {h}, {w}, {c}) uint8 or (B, {c}, {h}, {w}); got {shape}")
            if not _finite(x):
                raise ObservationError(f"{key} contains NaN or inf")
            batch_sizes.add(shape[0])
        if len(batch_sizes) != 1:
            raise ObservationError(f"features disagree on the batch size: {sorted(batch_sizes)}")
        b = batch_sizes.pop()
        if self.language:
            self._instruction(obs, b)
        return int(b)


def _as_array(key: str, value: Any, shape: tuple[int, ...]) -> np.ndarray:
    """``np.asarray(value)``, with a ragged or mixed nested list refused as a bad observation."""
    try:
        return np.asarray(value)
    except (ValueError, TypeError, OverflowError, RecursionError, MemoryError):
        raise ObservationError(
            f"{key} must be a numeric array of shape {shape}; got a {type(value).__name__} that is not one "
            "(a ragged or mixed nested list?)"
        ) from None


def _finite(x: Any) -> bool:
    if hasattr(x, "is_floating_point"):  # a torch tensor: check where it lives, no copy
        return bool(not x.is_floating_point() or x.isfinite().all())
    arr = np.asarray(x)
    return bool(arr.dtype.kind != "f" or np.isfinite(arr).all())


def check_policy_fits_env(
    spec: ObservationSpec,
    action_dim: int,
    env_spec: Any,
    observation: dict[str, Any],
    env_name: str,
    policy_label: str = "the policy",
) -> None:
    """Refuse a policy whose action size or observation features do not fit an environment,
    naming the mismatch, before any action reaches the simulator (``vla eval`` and ``vla rl``)."""
    if env_spec.action_dim != action_dim:
        controller = getattr(env_spec, "extra", {}).get("controller", "default")
        raise ValueError(
            f"{policy_label} outputs {action_dim}-dim actions but {env_name} takes {env_spec.action_dim}-dim "
            f"actions (controller {controller}); a joint-target policy needs --env-options controller=JOINT_TARGET"
        )
    try:
        spec.check_batch(observation)
    except (ValueError, KeyError) as err:
        raise ValueError(f"{policy_label} does not fit the observations of {env_name}: {err}") from err
