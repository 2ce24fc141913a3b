"""Typed configuration of the flow VLA policy (saved as config.json in every checkpoint)."""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vla import keys
from vla.flow.meanflow import DUDT_METHODS
from vla.policies.heads import ACTION_HEADS, ActionHead

Normalization = Literal["mean_std", "min_max", "identity"]
NORMALIZATIONS: tuple[str, ...] = typing.get_args(Normalization)


@dataclass
class PolicyConfig:
    # ---- what the policy reads and writes (shapes are filled from the dataset)
    vector_features: tuple[str, ...] = field(
        default=(keys.OBS_STATE,),
        metadata={"help": "vector inputs, e.g. observation.state observation.environment_state"},
    )
    image_features: tuple[str, ...] = field(
        default=(), metadata={"help": "camera inputs, e.g. observation.images.scene"}
    )
    use_language: bool = field(default=False, metadata={"help": "condition on the instruction (frozen MiniLM)"})
    image_render_quality: str | None = field(
        default=None,
        metadata={
            "help": "how the training images were rendered (filled from the dataset's meta/vla_recording.json; "
            "None: not recorded, the look before render qualities existed); evaluation renders the same way"
        },
    )
    feature_shapes: dict[str, list[int]] = field(default_factory=dict)
    action_dim: int = 0
    # ---- chunking
    chunk_size: int = field(default=8, metadata={"help": "H: actions predicted per chunk"})
    n_action_steps: int = field(default=4, metadata={"help": "actions executed from each chunk"})
    # ---- network
    d_model: int = 128
    n_heads: int = 4
    n_prefix_layers: int = 1
    n_expert_layers: int = 3
    mlp_ratio: int = 4
    dropout: float = 0.0
    image_encoder: str = field(
        default="conv",
        metadata={
            "help": "conv (from scratch, pooled grid), keypoints (from scratch, spatial softmax) or efficientnet_lite0 (ImageNet)"
        },
    )
    image_tokens: int = field(default=9, metadata={"help": "tokens per camera (a square number)"})
    image_shift: int = field(default=4, metadata={"help": "random-shift augmentation in pixels (0: off)"})
    # ---- action head
    head: str = field(
        default="meanflow",
        metadata={
            "help": f"action head, one of the registry vla.policies.heads.ACTION_HEADS ({', '.join(ACTION_HEADS.names())}): "
            "flow_matching (pi0) or meanflow (DM1)"
        },
    )
    num_inference_steps: int = field(
        default=0, metadata={"help": "NFE at inference; 0: the head's default (10 flow_matching, 1 meanflow)"}
    )
    flow_time_alpha: float = 1.5  # pi0: t ~ Beta(1.5, 1) * 0.999 + 0.001
    flow_time_beta: float = 1.0
    meanflow_ratio: float = field(default=0.5, metadata={"help": "share of samples with r = t (DM1/MP1: 0.5)"})
    meanflow_mu: float = -0.4
    meanflow_sigma: float = 1.0
    meanflow_adaptive_p: float = field(default=0.0, metadata={"help": "adaptive loss weight power (0: plain MSE)"})
    meanflow_clamp: float | None = field(default=None, metadata={"help": "clamp after each sampling step (DM1: 1.0)"})
    meanflow_dudt: str = field(
        default="jvp",
        metadata={
            "help": "du/dt of the MeanFlow target: jvp (exact forward-mode AD, as published) or central_difference "
            "(two plain forward passes without a graph, ~1e-4 relative error; measured 1.19x the DM1 training "
            "steps/s on a CPU, docs/recipes.md)"
        },
    )
    # ---- dispersive regularization
    dispersive_weight: float = field(default=0.0, metadata={"help": "lambda; 0 disables"})
    dispersive_variant: str = "infonce_l2"
    dispersive_form: str = field(default="paper", metadata={"help": "paper or dm1 (released-code form)"})
    dispersive_temperature: float = 0.5
    dispersive_margin: float = 1.0
    dispersive_layers: tuple[int, ...] = field(
        default=(-1,), metadata={"help": "action-expert layers (index) to disperse"}
    )
    # ---- normalization
    state_normalization: Normalization = field(
        default="mean_std", metadata={"help": "vector inputs: mean_std, min_max or identity"}
    )
    action_normalization: Normalization = field(
        default="min_max", metadata={"help": "actions: min_max (to [-1, 1]), mean_std or identity"}
    )

    def __post_init__(self) -> None:
        ACTION_HEADS.get(self.head)  # an unknown name raises, listing the registered heads
        if self.meanflow_dudt not in DUDT_METHODS:
            raise ValueError(f"unknown meanflow_dudt {self.meanflow_dudt!r}; available: {', '.join(DUDT_METHODS)}")
        for name in (self.state_normalization, self.action_normalization):
            if name not in NORMALIZATIONS:
                raise ValueError(f"unknown normalization {name!r}; available: {', '.join(NORMALIZATIONS)}")
        if not 1 <= self.n_action_steps <= self.chunk_size:
            raise ValueError(f"n_action_steps must be in [1, chunk_size={self.chunk_size}], got {self.n_action_steps}")
        if int(self.image_tokens**0.5) ** 2 != self.image_tokens:
            raise ValueError(f"image_tokens must be a square number, got {self.image_tokens}")
        self.vector_features = tuple(self.vector_features)
        self.image_features = tuple(self.image_features)
        self.dispersive_layers = tuple(self.dispersive_layers)

    def action_head(self) -> ActionHead:
        """The head named by ``head``, built with this config's hyperparameters."""
        return ACTION_HEADS.get(self.head)(self)

    @property
    def inference_steps(self) -> int:
        return self.num_inference_steps or self.action_head().default_inference_steps

    @property
    def image_size(self) -> tuple[int, int] | None:
        if not self.image_features:
            return None
        shape = self.feature_shapes[self.image_features[0]]
        return int(shape[0]), int(shape[1])

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PolicyConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown policy config fields {unknown}")
        return cls(**data)

    @classmethod
    def load(cls, path: Path) -> PolicyConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))
