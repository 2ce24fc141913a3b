"""The PPO update of a flow policy on recorded denoising chains (pi_RL's actor-critic step).

A batch holds, per chunk decision: the observation, the recorded chain (``xs``) and which
steps were stochastic, the rollout's log-likelihood, the advantage, the return and the old
value. The update re-encodes the observations, recomputes the likelihood of the same chains
under the current policy (:func:`vla.rl.samplers.chain_log_prob_of`) and takes several epochs of
shuffled minibatches of the clipped objective, the value loss and the entropy bonus, with
gradient clipping and an optional early stop on the approximate KL.

Log-probabilities count only the executed actions (the first ``n_exec`` of each chunk) and the
real action dimensions, at one of three granularities (``LOGPROB_LEVELS``): one ratio per chunk,
per executed action, or per (action, dimension) with the advantage broadcast.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from vla.rl.objectives import explained_variance, kl_penalty, ppo_policy_loss, value_loss
from vla.rl.samplers import ExplorationScheme, chain_log_prob_of, policy_step_fn

LOGPROB_LEVELS: dict[str, Callable[[Tensor], Tensor]] = {
    "chunk": lambda lp: lp.sum((1, 2)),  # (B,)
    "action": lambda lp: lp.sum(2),  # (B, n_exec)
    "token": lambda lp: lp,  # (B, n_exec, A)
}


@dataclass(frozen=True)
class PPOConfig:
    clip: float = field(default=0.2, metadata={"help": "PPO ratio clip epsilon"})
    dual_clip: float | None = field(default=3.0, metadata={"help": "dual clip c > 1 (None: off)"})
    epochs: int = field(default=4, metadata={"help": "passes over each rollout"})
    minibatch_size: int = field(default=64, metadata={"help": "chunk decisions per gradient step"})
    logprob_level: str = field(
        default="token", metadata={"help": "chunk, action or token (see LOGPROB_LEVELS; token: the ManiSkill config)"}
    )
    logprob_reduce: str = field(default="mean", metadata={"help": "over denoising steps: mean (code) or sum (paper)"})
    value_coef: float = field(default=0.5, metadata={"help": "weight of the value loss"})
    value_clip: float | None = field(default=0.2, metadata={"help": "value clipping (None: off)"})
    entropy_coef: float = field(
        default=0.005, metadata={"help": "entropy bonus (the reference's; Flow-SDE's std is fixed, so no effect there)"}
    )
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping"})
    target_kl: float | None = field(default=None, metadata={"help": "stop the epochs once approx KL exceeds it"})
    kl_coef: float = field(default=0.0, metadata={"help": "KL penalty to the rollout policy (k3 estimate; 0: off)"})
    value_features: str = field(
        default="expert", metadata={"help": "critic input: expert (hidden states at a fixed input) or prefix (tokens)"}
    )
    value_detach: bool = field(default=True, metadata={"help": "keep the critic's gradients out of the policy"})

    def __post_init__(self) -> None:
        if self.logprob_level not in LOGPROB_LEVELS:
            raise ValueError(f"unknown logprob_level {self.logprob_level!r}; available: {', '.join(LOGPROB_LEVELS)}")
        if self.logprob_reduce not in ("mean", "sum"):
            raise ValueError(f"logprob_reduce must be mean or sum, got {self.logprob_reduce!r}")
        if self.value_features not in VALUE_FEATURES:
            raise ValueError(f"unknown value_features {self.value_features!r}; available: {', '.join(VALUE_FEATURES)}")
        if self.epochs < 1 or self.minibatch_size < 1:
            raise ValueError("epochs and minibatch_size must be >= 1")


class ValueHead(nn.Module):
    """V(s) from observation-only features of the policy (``VALUE_FEATURES``); ``detach`` keeps
    the critic's gradients out of the policy (the reference's pi0 setting)."""

    def __init__(
        self, d_model: int, hidden: tuple[int, ...] = (256, 128), detach: bool = True, features: str = "expert"
    ):
        super().__init__()
        if features not in VALUE_FEATURES:
            raise ValueError(f"unknown value features {features!r}; available: {', '.join(VALUE_FEATURES)}")
        layers: list[nn.Module] = []
        d = d_model
        for width in hidden:
            layers += [nn.Linear(d, width), nn.ReLU()]
            d = width
        last = nn.Linear(d, 1)
        nn.init.normal_(last.weight, std=0.02)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*layers, last)
        self.detach = detach
        self.features = features

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features.detach() if self.detach else features).squeeze(-1)


def executed(log_prob: Tensor, n_exec: int, action_dim: int) -> Tensor:
    """Only the actions the environment ran and the dimensions it uses count."""
    return log_prob[:, :n_exec, :action_dim]


@dataclass
class RolloutBatch:
    """Chunk decisions to learn from (B of them)."""

    observations: dict[str, Any]  # a policy batch (B, ...) as FlowPolicy.prepare_observation takes it
    xs: Tensor  # (K + 1, B, H, A) recorded chains
    stochastic: Tensor  # (B, K) bool: each decision's stochastic steps (one row per rollout call's draw)
    old_log_prob: Tensor  # (B, H, A) per element, from the rollout
    advantages: Tensor  # (B,)
    returns: Tensor  # (B,)
    old_values: Tensor  # (B,)

    def __post_init__(self) -> None:
        if self.stochastic.dim() == 1:  # one rollout call: its pattern for every decision
            self.stochastic = self.stochastic[None].expand(len(self), -1)

    def __len__(self) -> int:
        return int(self.advantages.shape[0])

    def subset(self, index: Tensor) -> RolloutBatch:
        obs = {
            k: (v[index] if isinstance(v, Tensor) else [v[i] for i in index.tolist()])
            for k, v in self.observations.items()
        }
        return RolloutBatch(
            obs,
            self.xs[:, index],
            self.stochastic[index],
            self.old_log_prob[index],
            self.advantages[index],
            self.returns[index],
            self.old_values[index],
        )


def evaluate(
    policy, scheme: ExplorationScheme, value_head: ValueHead | None, batch: RolloutBatch, config: PPOConfig, n_exec: int
):
    """(per-element log-probs, entropy, values) of a batch under the current parameters.

    The observations are encoded once; decisions whose rollouts drew different stochastic steps
    (Flow-SDE's hybrid) are re-evaluated in one group per pattern, so only those steps run."""
    prefix = policy.encode_observation(policy.prepare_observation(batch.observations))
    log_prob = torch.empty_like(batch.old_log_prob)
    entropy = torch.empty_like(batch.old_log_prob)
    patterns, group_of = torch.unique(batch.stochastic, dim=0, return_inverse=True)
    for g, pattern in enumerate(patterns):
        index = torch.nonzero(group_of == g).flatten()
        whole = len(patterns) == 1
        step = policy_step_fn(policy, prefix if whole else prefix.select(index))
        xs = batch.xs if whole else batch.xs[:, index]
        lp, ent = chain_log_prob_of(scheme, step, xs, pattern, reduce=config.logprob_reduce)
        log_prob = lp if whole else log_prob.index_put((index,), lp)
        entropy = ent if whole else entropy.index_put((index,), ent)
    values = None if value_head is None else critic_values(policy, prefix, value_head, batch.xs[-1], n_exec)
    return log_prob, entropy, values


def expert_features(policy, prefix, chunk: Tensor, n_exec: int) -> Tensor:
    """The expert's hidden states (mean over the executed tokens) for a fixed input, a zero
    chunk at t = 1, which depend on the observation only. Features of the sampled chunk would
    make the critic a Q-function of the very action being judged, a baseline that depends on
    the action and so biases the policy gradient."""
    zeros = torch.zeros_like(chunk)
    ones = torch.ones(chunk.shape[0]).to(chunk)
    _, hidden = policy_step_fn(policy, prefix)(zeros, ones, ones)
    return hidden[:, :n_exec].mean(1)


def prefix_features(policy, prefix, chunk: Tensor, n_exec: int) -> Tensor:
    """The observation tokens after the prefix blocks, averaged (pi0's critic on the VLM output)."""
    if prefix.tokens is None:
        raise ValueError("value_features=prefix needs an encoded observation that keeps its tokens")
    return prefix.tokens.mean(1)


VALUE_FEATURES: dict[str, Callable[..., Tensor]] = {"expert": expert_features, "prefix": prefix_features}


def critic_values(policy, prefix, value_head: ValueHead, chunk: Tensor, n_exec: int) -> Tensor:
    """V of each decision from the value head's features of the observation."""
    return value_head(VALUE_FEATURES[value_head.features](policy, prefix, chunk, n_exec))


class GradientSync(Protocol):
    """How one minibatch's gradient is formed: here, in this process (:class:`LocalSync`), or
    averaged over data-parallel learners (:class:`vla.rl.distributed.TorchDistributedSync`).

    Each learner takes its ``shard`` of the minibatch; its gradient and metrics, weighted by its
    share of the minibatch, are summed over the learners, which is the full minibatch's mean
    (every loss term is a mean over decisions)."""

    def shard(self, index: Tensor) -> Tensor: ...

    def reduce_gradients(self, params: list[Tensor], share: float) -> None: ...

    def reduce_metrics(self, values: Tensor, share: float) -> Tensor: ...


class LocalSync:
    """One learner: the whole minibatch, nothing to reduce."""

    def shard(self, index: Tensor) -> Tensor:
        return index

    def reduce_gradients(self, params: list[Tensor], share: float) -> None:
        pass

    def reduce_metrics(self, values: Tensor, share: float) -> Tensor:
        return values


_STAT_KEYS = ("loss", "loss/policy", "loss/value", "entropy", "clip_fraction", "approx_kl", "ratio", "kl_penalty")


def ppo_update(
    policy,
    scheme: ExplorationScheme,
    value_head: ValueHead | None,
    batch: RolloutBatch,
    optimizer: torch.optim.Optimizer,
    config: PPOConfig,
    n_exec: int,
    generator: torch.Generator | None = None,
    sync: GradientSync | None = None,
) -> dict[str, float]:
    """Epochs of shuffled minibatches; returns the iteration's metrics (means over gradient steps).
    Without a value head (GRPO) there is no value loss. With a data-parallel ``sync`` every
    learner draws the same minibatch order and computes its shard of each minibatch."""
    sync = sync or LocalSync()
    action_dim = policy.config.action_dim
    level = LOGPROB_LEVELS[config.logprob_level]
    old = level(executed(batch.old_log_prob, n_exec, action_dim))
    params = [p for group in optimizer.param_groups for p in group["params"]]
    sums: dict[str, float] = {}
    steps = 0
    stopped_early = False
    for _ in range(config.epochs):
        order = torch.randperm(len(batch), generator=generator)
        for start in range(0, len(batch), config.minibatch_size):
            index = order[start : start + config.minibatch_size]
            local = sync.shard(index)
            share = len(local) / len(index)
            if not len(local):  # a learner without a share still runs the graph, at weight 0
                local = index[:1]
            mb = batch.subset(local)
            log_prob, entropy, values = evaluate(policy, scheme, value_head, mb, config, n_exec)
            new = level(executed(log_prob, n_exec, action_dim))
            adv = mb.advantages.reshape(-1, *([1] * (new.dim() - 1))).expand_as(new)
            pl = ppo_policy_loss(new, old[local], adv, clip=config.clip, dual_clip=config.dual_clip)
            vl = (
                torch.zeros(())
                if values is None
                else value_loss(values, mb.old_values, mb.returns, clip=config.value_clip)
            )
            ent = executed(entropy, n_exec, action_dim).mean()
            kl = kl_penalty(new, old[local])
            loss = pl.loss + config.value_coef * vl - config.entropy_coef * ent + config.kl_coef * kl
            optimizer.zero_grad(set_to_none=True)
            (loss if share else 0.0 * loss).backward()
            parts = (loss, pl.loss, vl, ent, pl.clip_fraction, pl.approx_kl, pl.ratio_mean, kl)
            stats = dict(zip(_STAT_KEYS, sync.reduce_metrics(torch.stack(parts).detach().float(), share).tolist()))
            if not math.isfinite(stats["loss"]):  # every learner sees the same reduced loss
                raise FloatingPointError(
                    f"non-finite PPO loss ({stats['loss']}): policy {stats['loss/policy']}, value {stats['loss/value']}"
                )
            sync.reduce_gradients(params, share)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            stats["grad_norm"] = float(grad_norm)
            del stats["loss"]
            for key, value in stats.items():
                sums[key] = sums.get(key, 0.0) + value
            steps += 1
            if config.target_kl is not None and stats["approx_kl"] > config.target_kl:
                stopped_early = True
                break
        if stopped_early:
            break
    metrics = {k: v / max(steps, 1) for k, v in sums.items()}
    metrics["gradient_steps"] = float(steps)
    metrics["stopped_early"] = float(stopped_early)
    if value_head is not None:
        metrics["explained_variance"] = explained_variance(batch.old_values, batch.returns)
    if not all(math.isfinite(v) or k == "explained_variance" for k, v in metrics.items()):
        raise FloatingPointError(f"non-finite PPO metrics: {metrics}")
    return metrics
