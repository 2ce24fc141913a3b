"""Flow matching (pi0 recipe): time sampling, interpolation, loss and Euler samplers.

Time convention (used by every function in :mod:`vla.flow`): ``t = 1`` is noise and ``t = 0``
is data, ``x_t = t * noise + (1 - t) * action``, the velocity target is ``v = noise - action``
and sampling integrates from ``t = 1`` down to ``t = 0`` (``x_{t - d} = x_t - d * v(x_t, t)``).
This is the openpi / RLinf / MeanFlow-code convention; ReinFlow and the DM1 paper text use the
opposite one and must be converted at the boundary.

Shapes: actions and noise are ``(B, ...)`` (typically ``(B, H, A)``: batch, chunk, action dim);
times are ``(B,)``. A ``velocity_fn(x_t, t)`` maps ``(B, ...)``, ``(B,)`` to ``(B, ...)``.
Everything here is a pure function of tensors: no module state, no global RNG unless no
``generator`` is given.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

VelocityFn = Callable[[Tensor, Tensor], Tensor]
"""``velocity_fn(x_t, t) -> v``: ``x_t`` is ``(B, ...)``, ``t`` is ``(B,)``."""

Transition = Callable[[int, Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]
"""``transition(k, x_k, v_k, t_k, t_next) -> (mean_k, x_next)`` for one denoising step.

``t_k`` and ``t_next`` are 0-d tensors with ``t_next < t_k``. ``mean_k`` is the mean of the
(Gaussian) transition ``x_next ~ N(mean_k, std_k^2)``; a deterministic step returns
``x_next = mean_k``. Stochastic transitions (Flow-Noise, Flow-SDE) plug in here.
"""

PI0_TIME_MIN = 0.001
"""pi0 maps a Beta draw ``b`` to ``t = b * (1 - PI0_TIME_MIN) + PI0_TIME_MIN``."""


def expand_time(t: Tensor | float, like: Tensor) -> Tensor:
    """Return ``t`` shaped to broadcast against ``like`` (``(B,)`` -> ``(B, 1, ..., 1)``).

    A Python float or 0-d tensor is returned as a 0-d tensor (broadcasts as a scalar).
    """
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    if t.ndim == 0:
        return t
    if t.ndim != 1 or t.shape[0] != like.shape[0]:
        raise ValueError(f"time must be a scalar or of shape ({like.shape[0]},), got {tuple(t.shape)}")
    return t.reshape(t.shape[0], *([1] * (like.ndim - 1)))


def _standard_gamma(
    n: int, concentration: float, *, generator: torch.Generator | None, device, dtype: torch.dtype
) -> Tensor:
    """``n`` draws of Gamma(concentration, 1) by Marsaglia & Tsang's squeeze-free rejection method.

    Written here (instead of ``torch.distributions``) so that an explicit ``generator`` is honoured.
    For ``concentration < 1`` it draws Gamma(concentration + 1) and multiplies by ``U^(1/concentration)``.
    """
    if concentration <= 0:
        raise ValueError(f"Gamma concentration must be > 0, got {concentration}")
    a = concentration + 1.0 if concentration < 1.0 else concentration
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    out = torch.empty(n, dtype=torch.float64, device=device)
    todo = torch.arange(n, device=device)
    while todo.numel() > 0:
        m = todo.numel()
        x = torch.randn(m, generator=generator, dtype=torch.float64, device=device)
        u = torch.rand(m, generator=generator, dtype=torch.float64, device=device)
        v = (1.0 + c * x) ** 3
        ok = (v > 0) & (torch.log(u) < 0.5 * x * x + d - d * v + d * torch.log(v.clamp_min(1e-300)))
        out[todo[ok]] = d * v[ok]
        todo = todo[~ok]
    if concentration < 1.0:
        u = torch.rand(n, generator=generator, dtype=torch.float64, device=device)
        out = out * u.pow(1.0 / concentration)
    return out.to(dtype)


def sample_beta(
    batch_size: int,
    alpha: float,
    beta: float,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """``(batch_size,)`` draws from Beta(alpha, beta), reproducible through ``generator``.

    Uses the exact inverse CDF when one shape parameter is 1 (``Beta(a, 1)``: ``U^(1/a)``), and the
    Gamma ratio ``X / (X + Y)`` otherwise.
    """
    if alpha <= 0 or beta <= 0:
        raise ValueError(f"Beta parameters must be > 0, got alpha={alpha}, beta={beta}")
    dtype = dtype or torch.get_default_dtype()
    if beta == 1.0 or alpha == 1.0:
        u = torch.rand(batch_size, generator=generator, dtype=torch.float64, device=device)
        out = u.pow(1.0 / alpha) if beta == 1.0 else 1.0 - u.pow(1.0 / beta)
        return out.to(dtype)
    x = _standard_gamma(batch_size, alpha, generator=generator, device=device, dtype=torch.float64)
    y = _standard_gamma(batch_size, beta, generator=generator, device=device, dtype=torch.float64)
    return (x / (x + y)).to(dtype)


def sample_flow_time(
    batch_size: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    alpha: float = 1.5,
    beta: float = 1.0,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """pi0's training times: ``t = Beta(alpha, beta) * 0.999 + 0.001``, shape ``(batch_size,)``.

    With the defaults (Beta(1.5, 1)) the density grows towards ``t = 1`` (noise), i.e. training
    emphasises the noisy end; ``t`` lies in ``[0.001, 1]`` so ``t`` never hits exact data.
    """
    b = sample_beta(batch_size, alpha, beta, generator=generator, device=device, dtype=dtype)
    return b * (1.0 - PI0_TIME_MIN) + PI0_TIME_MIN


def interpolate(actions: Tensor, noise: Tensor, t: Tensor | float) -> Tensor:
    """The linear path ``x_t = t * noise + (1 - t) * actions`` (``t`` of shape ``(B,)`` or scalar)."""
    if actions.shape != noise.shape:
        raise ValueError(f"actions {tuple(actions.shape)} and noise {tuple(noise.shape)} differ in shape")
    tt = expand_time(t, actions)
    return tt * noise + (1.0 - tt) * actions


def flow_matching_loss(velocity_fn: VelocityFn, actions: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """Per-sample flow-matching loss ``mean_{dims} (v_theta(x_t, t) - (noise - actions))^2``, shape ``(B,)``.

    The caller reduces over the batch (and may mask padded action dims before calling, or weight
    the per-sample values).
    """
    x_t = interpolate(actions, noise, t)
    v_pred = velocity_fn(x_t, t)
    if v_pred.shape != actions.shape:
        raise ValueError(f"velocity_fn returned {tuple(v_pred.shape)}, expected {tuple(actions.shape)}")
    err = (v_pred - (noise - actions)) ** 2
    return err.reshape(err.shape[0], -1).mean(dim=1)


def denoising_times(num_steps: int, *, device=None, dtype: torch.dtype | None = None) -> Tensor:
    """The uniform grid ``t_k = 1 - k / K`` for ``k = 0..K``, shape ``(K + 1,)`` (1 -> 0)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return torch.linspace(1.0, 0.0, num_steps + 1, device=device, dtype=dtype or torch.get_default_dtype())


def euler_sample(velocity_fn: VelocityFn, noise: Tensor, num_steps: int = 10) -> Tensor:
    """Integrate the flow ODE from ``t = 1`` (``x = noise``) to ``t = 0`` with ``K`` Euler steps.

    Step ``k`` uses ``t_k = 1 - k/K`` and ``x_{k+1} = x_k - (1/K) * v(x_k, t_k)`` (openpi's
    ``dt = -1/K``). Returns the final ``x_K`` (the action chunk). Gradients flow if the caller
    does not disable them.
    """
    times = denoising_times(num_steps, device=noise.device, dtype=noise.dtype)
    batch = noise.shape[0]
    x = noise
    for k in range(num_steps):
        v = velocity_fn(x, times[k].repeat(batch))
        x = x - (times[k] - times[k + 1]) * v
    return x


@dataclass(frozen=True)
class DenoisingChain:
    """The whole denoising chain of a K-step sampler (what RL on the denoising MDP needs).

    Attributes:
        xs: ``(K + 1, B, ...)``; ``xs[0]`` is the initial noise, ``xs[K]`` the final action.
        means: ``(K, B, ...)``; the transition mean of step ``k`` (``x_k -> x_{k+1}``). For the
            deterministic ODE chain ``means[k] = x_k - (t_k - t_{k+1}) v(x_k, t_k) = xs[k + 1]``.
        times: ``(K + 1,)``; ``t_k = 1 - k / K``.
        velocities: ``(K, B, ...)``; ``v(x_k, t_k)`` as evaluated at each step.
    """

    xs: Tensor
    means: Tensor
    times: Tensor
    velocities: Tensor

    @property
    def actions(self) -> Tensor:
        """The final sample ``xs[-1]``."""
        return self.xs[-1]

    @property
    def num_steps(self) -> int:
        return self.means.shape[0]


def ode_transition(k: int, x: Tensor, v: Tensor, t: Tensor, t_next: Tensor) -> tuple[Tensor, Tensor]:
    """The deterministic Euler step: ``mean = x - (t - t_next) * v`` and ``x_next = mean``."""
    mean = x - (t - t_next) * v
    return mean, mean


def euler_chain(
    velocity_fn: VelocityFn,
    noise: Tensor,
    num_steps: int = 10,
    *,
    transition: Transition = ode_transition,
) -> DenoisingChain:
    """Run ``K`` denoising steps from ``t = 1`` to ``t = 0`` and keep every intermediate state.

    With the default ``transition`` this is :func:`euler_sample` with the chain recorded:
    ``means[k] = x_k - (1/K) v(x_k, t_k)`` and ``xs[k + 1] = means[k]``. A stochastic sampler
    (Flow-Noise: ``x_{k+1} = mean_k + sigma_k * eps``; Flow-SDE: a different mean plus noise) passes
    its own ``transition(k, x_k, v_k, t_k, t_next) -> (mean_k, x_{k+1})``; the per-step Gaussian
    log-likelihoods are then functions of ``xs[k + 1]``, ``means[k]`` and that sampler's stds.
    """
    times = denoising_times(num_steps, device=noise.device, dtype=noise.dtype)
    batch = noise.shape[0]
    xs, means, vels = [noise], [], []
    x = noise
    for k in range(num_steps):
        v = velocity_fn(x, times[k].repeat(batch))
        mean, x = transition(k, x, v, times[k], times[k + 1])
        xs.append(x)
        means.append(mean)
        vels.append(v)
    return DenoisingChain(xs=torch.stack(xs), means=torch.stack(means), times=times, velocities=torch.stack(vels))
