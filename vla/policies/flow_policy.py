"""The flow VLA policy: observation prefix -> pi0-style action expert -> a chunk of H actions.

Two action heads on the same backbone (``config.head``):

* ``flow_matching`` (pi0): the expert predicts the velocity ``v(x_t, t)``; t ~ Beta(1.5, 1);
  sampling is K Euler steps from t=1 (noise) to t=0 (actions), K=10 by default.
* ``meanflow`` (DM1/MP1): the expert predicts the average velocity ``u(z_t, r, t)``; trained
  with the JVP MeanFlow target; one function evaluation by default (``a = z_1 - u(z_1, 0, 1)``).

Both feed the expert the same time features (t, t - r); flow matching uses r = t, so one
sampler (``vla.flow.meanflow_sample``) serves both. Everything inside is in normalized
space; ``predict_action_chunk`` returns robot units.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vla import keys
from vla.flow import DenoisingChain, dispersive_loss, euler_chain
from vla.observation import ObservationSpec
from vla.policies.config import PolicyConfig
from vla.policies.language import EMBEDDING_DIM, InstructionEmbedder
from vla.policies.networks import (
    IMAGE_ENCODERS,
    MLP,
    ExpertBlock,
    PrefixBlock,
    random_shift,
    sinusoidal_embedding,
)
from vla.policies.normalize import Normalizer


@dataclass
class Prefix:
    """An encoded observation: per expert layer, the prefix keys and values; and the observation
    tokens they came from (B, T, d), for heads that read the observation alone (an RL critic)."""

    keys: list[Tensor]
    values: list[Tensor]
    tokens: Tensor | None = None

    def select(self, index: Tensor) -> Prefix:
        """The observations at ``index`` (B,) -> (len(index), ...)."""
        tokens = None if self.tokens is None else self.tokens[index]
        return Prefix([k[index] for k in self.keys], [v[index] for v in self.values], tokens)

    def repeat(self, n: int) -> Prefix:
        """The same observation for n candidates each: (B, ...) -> (B * n, ...)."""
        tokens = None if self.tokens is None else self.tokens.repeat_interleave(n, 0)
        return Prefix(
            [k.repeat_interleave(n, 0) for k in self.keys], [v.repeat_interleave(n, 0) for v in self.values], tokens
        )


class FlowPolicy(nn.Module):
    def __init__(self, config: PolicyConfig):
        super().__init__()
        self.config = config
        d = config.d_model
        missing = [k for k in (*config.vector_features, *config.image_features) if k not in config.feature_shapes]
        if missing or config.action_dim <= 0:
            raise ValueError(f"config lacks shapes for {missing or 'action'}; build it with dataset features")
        self.vector_norm = nn.ModuleDict(
            {
                _mod(k): Normalizer(config.state_normalization, config.feature_shapes[k][0])
                for k in config.vector_features
            }
        )
        self.action_norm = Normalizer(config.action_normalization, config.action_dim)
        self.vector_embed = nn.ModuleDict(
            {_mod(k): nn.Linear(config.feature_shapes[k][0], d) for k in config.vector_features}
        )
        if config.image_features:
            self.image_encoder = IMAGE_ENCODERS[config.image_encoder](d, config.image_tokens)
            self.camera_embed = nn.Parameter(torch.zeros(len(config.image_features), 1, d))
        if config.use_language:
            self.language_proj = nn.Linear(EMBEDDING_DIM, d)
            self.instructions = InstructionEmbedder()
        self.prefix_blocks = nn.ModuleList(
            PrefixBlock(d, config.n_heads, config.mlp_ratio, config.dropout) for _ in range(config.n_prefix_layers)
        )
        self.action_in = nn.Linear(config.action_dim, d)
        self.time_mlp = MLP(d, d, d)
        self.action_time_mlp = MLP(2 * d, d, d)
        self.action_pos = nn.Parameter(torch.zeros(1, config.chunk_size, d))
        self.expert_blocks = nn.ModuleList(
            ExpertBlock(d, config.n_heads, config.mlp_ratio, config.dropout) for _ in range(config.n_expert_layers)
        )
        self.action_out = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, config.action_dim))
        nn.init.trunc_normal_(self.action_pos, std=0.02)
        self.action_head = config.action_head()
        self._queue: deque[np.ndarray] = deque()

    # ------------------------------------------------------------------ inputs
    def set_normalization(self, stats: dict[str, dict[str, Tensor]]) -> None:
        for key in self.config.vector_features:
            self.vector_norm[_mod(key)].set_stats(stats[key])
        self.action_norm.set_stats(stats[keys.ACTION])

    @property
    def observation_spec(self) -> ObservationSpec:
        """What this policy reads and returns (the contract the server and the robot use too)."""
        return ObservationSpec.from_policy_config(self.config)

    def prepare_observation(self, obs: dict[str, Any]) -> dict[str, Any]:
        """Validate a batched observation (numpy or torch; see ``ObservationSpec.check_batch``)
        and convert it to model inputs. Wrong shapes and NaN/inf are refused with a clear error."""
        batch = self.observation_spec.check_batch(obs)
        device = self.action_pos.device
        out: dict[str, Any] = {"batch_size": batch}
        for key in self.config.vector_features:
            x = obs[key]
            out[key] = (x if torch.is_tensor(x) else torch.as_tensor(np.asarray(x))).float().to(device)
        for key in self.config.image_features:
            image = obs[key]
            image = image if torch.is_tensor(image) else torch.as_tensor(np.asarray(image))
            if image.shape[-1] == 3:
                image = image.permute(0, 3, 1, 2)  # (B, H, W, 3) from sims/datasets
            out[key] = (image.float().div(255.0) if image.dtype == torch.uint8 else image.float()).to(device)
        if self.config.use_language:
            tasks = obs[keys.TASK]
            out[keys.TASK] = [tasks] * batch if isinstance(tasks, str) else list(tasks)
        return out

    # ------------------------------------------------------------------ network
    def encode_observation(self, inputs: dict[str, Any], augment: bool = False) -> Prefix:
        tokens = [
            self.vector_embed[_mod(k)](self.vector_norm[_mod(k)](inputs[k]))[:, None]
            for k in self.config.vector_features
        ]
        for i, key in enumerate(self.config.image_features):
            image = random_shift(inputs[key], self.config.image_shift) if augment else inputs[key]
            tokens.append(self.image_encoder(image) + self.camera_embed[i])
        if self.config.use_language:
            embedding = self.instructions(inputs[keys.TASK]).to(self.action_pos.device)
            tokens.append(self.language_proj(embedding)[:, None])
        prefix = torch.cat(tokens, dim=1)
        for block in self.prefix_blocks:
            prefix = block(prefix)
        kv = [block.prefix_keys_values(prefix) for block in self.expert_blocks]
        return Prefix([k for k, _ in kv], [v for _, v in kv], prefix)

    def expert(self, prefix: Prefix, x: Tensor, r: Tensor, t: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Velocity (flow matching, r = t) or average velocity (MeanFlow) of a (B, H, A) chunk."""
        d = self.config.d_model
        t, r = t.expand(x.shape[0]), r.expand(x.shape[0])
        time = self.time_mlp(torch.cat([sinusoidal_embedding(t, d // 2), sinusoidal_embedding(t - r, d // 2)], -1))
        h = self.action_in(x)
        h = self.action_time_mlp(torch.cat([h, time[:, None].expand_as(h)], -1)) + self.action_pos
        hidden = []
        for block, k, v in zip(self.expert_blocks, prefix.keys, prefix.values, strict=True):
            h = block(h, k, v)
            hidden.append(h)
        return self.action_out(h), hidden

    def _u_fn(self, prefix: Prefix, record: list | None = None):
        """u(z, r, t) for the sampler, from the head; ``record`` collects the expert's last-layer
        hidden state at the first action token of every call (the verifier feature)."""

        def expert(z: Tensor, r: Tensor, t: Tensor) -> Tensor:
            out, hidden = self.expert(prefix, z, r, t)
            if record is not None:
                record.append(hidden[-1][:, 0])
            return out

        return self.action_head.average_velocity(expert)

    # ------------------------------------------------------------------ training
    def forward(
        self, batch: dict[str, Any], generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        """Training loss on a batch with ``action`` (B, H, A) in robot units."""
        inputs = self.prepare_observation(batch)
        actions = torch.as_tensor(batch[keys.ACTION]).float().to(self.action_pos.device)
        if not torch.isfinite(actions).all():
            raise ValueError("action batch contains NaN or inf")
        target = self.action_norm(actions)
        started = time.perf_counter()
        prefix = self.encode_observation(inputs, augment=self.training)
        encoded = time.perf_counter()
        noise = torch.randn(target.shape, generator=generator).to(target)
        cfg = self.config
        head_loss = self.action_head.loss(lambda x, r, t: self.expert(prefix, x, r, t)[0], target, noise, generator)
        per_sample, t, r = head_loss.per_sample, head_loss.t, head_loss.r
        loss = per_sample.mean()
        # where the forward pass goes (CPU eager: wall time is compute time); the trainer adds the rest
        metrics = {
            "loss/action": float(loss.detach()),
            "time/encode_ms": 1e3 * (encoded - started),
            "time/head_ms": 1e3 * (time.perf_counter() - encoded),
        }
        if cfg.dispersive_weight > 0:
            t_view = t.view(-1, 1, 1)
            x_t = t_view * noise + (1 - t_view) * target
            _, hidden = self.expert(prefix, x_t, r, t)
            disp = sum(
                dispersive_loss(
                    hidden[i],
                    cfg.dispersive_variant,
                    temperature=cfg.dispersive_temperature,
                    margin=cfg.dispersive_margin,
                    form=cfg.dispersive_form,
                )
                for i in cfg.dispersive_layers
            )
            loss = loss + cfg.dispersive_weight * disp
            metrics["loss/dispersive"] = float(disp.detach())
        metrics["loss/total"] = float(loss.detach())
        return loss, metrics

    # ------------------------------------------------------------------ inference
    def _noise(self, shape: tuple[int, ...], noise: Tensor | np.ndarray | None) -> Tensor:
        if noise is None:
            return torch.randn(shape, device=self.action_pos.device)
        noise = torch.as_tensor(noise).float().to(self.action_pos.device)
        if tuple(noise.shape) != shape:
            raise ValueError(f"noise must have shape {shape}, got {tuple(noise.shape)}")
        return noise

    def _sample_normalized(self, prefix: Prefix, noise: Tensor, record: list | None = None) -> Tensor:
        return self.action_head.sample(self._u_fn(prefix, record), noise, self.config.inference_steps)

    @torch.no_grad()
    def predict_action_chunk(self, obs: dict[str, Any], noise: Tensor | np.ndarray | None = None) -> Tensor:
        """(B, H, A) actions in robot units."""
        inputs = self.prepare_observation(obs)
        prefix = self.encode_observation(inputs)
        shape = (inputs["batch_size"], self.config.chunk_size, self.config.action_dim)
        return self.action_norm.inverse(self._sample_normalized(prefix, self._noise(shape, noise)))

    @torch.no_grad()
    def sample_action_chunks(
        self,
        obs: dict[str, Any],
        num_samples: int,
        noise: Tensor | np.ndarray | None = None,
        return_features: bool = False,
    ):
        """(B, N, H, A) candidate chunks; the observation is encoded once for all N.

        With ``return_features`` also the verifier feature of each candidate (B, N, d): the
        expert's hidden state at the first action token in the last denoising step.
        """
        inputs = self.prepare_observation(obs)
        b = inputs["batch_size"]
        prefix = self.encode_observation(inputs).repeat(num_samples)
        shape = (b * num_samples, self.config.chunk_size, self.config.action_dim)
        noise = (
            self._noise((b, num_samples, *shape[1:]), noise).reshape(shape)
            if noise is not None
            else self._noise(shape, None)
        )
        record: list[Tensor] = []
        chunks = self.action_norm.inverse(self._sample_normalized(prefix, noise, record))
        chunks = chunks.reshape(b, num_samples, *shape[1:])
        if return_features:
            return chunks, record[-1].reshape(b, num_samples, -1)
        return chunks

    @torch.no_grad()
    def denoising_chain(self, obs: dict[str, Any], noise: Tensor | np.ndarray | None = None) -> DenoisingChain:
        """Every step of the K-step denoising of one chunk, in normalized space, with the
        deterministic per-step means (the Gaussian means RL's Flow-Noise/Flow-SDE build on)."""
        inputs = self.prepare_observation(obs)
        prefix = self.encode_observation(inputs)
        k = self.config.inference_steps
        shape = (inputs["batch_size"], self.config.chunk_size, self.config.action_dim)
        u = self._u_fn(prefix)

        def velocity(x: Tensor, t: Tensor) -> Tensor:  # MeanFlow: average velocity to the next grid time
            return u(x, (t - 1.0 / k).clamp_min(0.0), t)

        return euler_chain(velocity, self._noise(shape, noise), num_steps=k)

    def reset(self) -> None:
        self._queue.clear()

    def select_action(self, obs: dict[str, Any]) -> np.ndarray:
        """(B, A) next action for closed-loop control: a new chunk every ``n_action_steps``."""
        if not self._queue:
            chunk = self.predict_action_chunk(obs)[:, : self.config.n_action_steps].cpu().numpy()
            self._queue.extend(chunk.transpose(1, 0, 2))
        return self._queue.popleft()


def _mod(key: str) -> str:
    """Feature names contain dots, which ModuleDict keys may not."""
    return key.replace(".", "__")
