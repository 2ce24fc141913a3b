"""MeanFlow (Geng et al., 2025): average-velocity training target, (t, r) sampling and few-step sampler.

Time convention as in :mod:`vla.flow.flow_matching`: ``t = 1`` noise, ``t = 0`` data,
``z_t = t * noise + (1 - t) * action``, ``v = noise - action``; sampling goes from 1 to 0.

The network predicts the *average* velocity over ``[r, t]`` (``r <= t``)::

    u(z_t, r, t) = 1 / (t - r) * integral_r^t v(z_s, s) ds,   so   z_r = z_t - (t - r) * u(z_t, r, t).

Differentiating ``(t - r) u = z_t - z_r`` in ``t`` (``r`` fixed) gives the MeanFlow identity
``u = v - (t - r) * d/dt u`` with the total derivative ``d/dt u = v . d_z u + d_t u``, which is one
forward-mode JVP of ``u_fn`` with tangents ``(dz, dr, dt) = (v, 0, 1)``.

``u_fn(z, r, t) -> u`` maps ``(B, ...)``, ``(B,)``, ``(B,)`` to ``(B, ...)``. Note the argument
order ``(z, r, t)``: MP1/DM1's networks take ``(z, t, r)`` with tangent ``(v, 1, 0)`` (the same
thing). ``u_fn`` must treat samples independently (no batch statistics such as BatchNorm in
training mode), otherwise the per-sample JVP mixes samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from vla.flow.flow_matching import expand_time, interpolate

AverageVelocityFn = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``u_fn(z, r, t) -> u``: ``z`` is ``(B, ...)``, ``r`` and ``t`` are ``(B,)``."""


def sample_meanflow_times(
    batch_size: int,
    *,
    flow_ratio: float = 0.5,
    mu: float = -0.4,
    sigma: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """Draw MeanFlow training times ``(t, r)``, each ``(batch_size,)``, with ``0 < r <= t < 1``.

    Two logit-normal draws ``sigmoid(N(mu, sigma^2))`` per sample, ``t = max`` and ``r = min``. Then
    exactly ``int(flow_ratio * batch_size)`` randomly chosen samples get ``r = t`` (those reduce to
    plain flow matching, ``u(z, t, t) = v(z, t)``); as in the MP1/DM1 code the count is exact, not
    a Bernoulli draw per sample.

    ``flow_ratio``: the MeanFlow paper's ablation found about 25 % of samples with ``r != t`` best,
    i.e. ``flow_ratio = 0.75`` (0 % with ``r != t`` collapses to flow matching and fails at 1-NFE);
    MP1 and DM1 both use ``flow_ratio = 0.5``, which is the default here.
    """
    if not 0.0 <= flow_ratio <= 1.0:
        raise ValueError(f"flow_ratio must be in [0, 1], got {flow_ratio}")
    dtype = dtype or torch.get_default_dtype()
    normal = torch.randn(batch_size, 2, generator=generator, dtype=torch.float64, device=device)
    draws = torch.sigmoid(normal * sigma + mu)
    t = draws.max(dim=1).values
    r = draws.min(dim=1).values
    num_equal = int(flow_ratio * batch_size)
    if num_equal > 0:
        idx = torch.randperm(batch_size, generator=generator, device=device)[:num_equal]
        r[idx] = t[idx]
    return t.to(dtype), r.to(dtype)


def meanflow_jvp(u_fn: AverageVelocityFn, z: Tensor, v: Tensor, r: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """``(u, du/dt)``: ``u = u_fn(z, r, t)`` and its total time derivative along the flow.

    One ``torch.func.jvp`` with tangents ``(v, 0, 1)``: ``du/dt = v . d_z u + d_t u``. The primal
    output ``u`` keeps the autograd graph to any parameters ``u_fn`` closes over, so it can be
    used directly as the prediction in a loss.
    """
    u, du_dt = torch.func.jvp(u_fn, (z, r, t), (v, torch.zeros_like(r), torch.ones_like(t)))[:2]
    return u, du_dt


def meanflow_central_difference(
    u_fn: AverageVelocityFn, z: Tensor, v: Tensor, r: Tensor, t: Tensor, eps: float = 1e-3
) -> tuple[Tensor, Tensor]:
    """``(u, du/dt)`` like ``meanflow_jvp``, the derivative by a central difference along
    ``(v, 0, 1)`` with no autograd graph: the target is stop-gradient anyway, and on a CPU two
    plain forward passes cost a fraction of forward-mode AD through a small transformer
    (``vla bench train-profile``). Error O(eps^2); float32 rounding grows as 1/eps.
    """
    u = u_fn(z, r, t)
    with torch.no_grad():
        step = expand_time(torch.full_like(t, eps), z)
        du_dt = (u_fn(z + step * v, r, t + eps) - u_fn(z - step * v, r, t - eps)) / (2 * eps)
    return u, du_dt


DUDT_METHODS = {"jvp": meanflow_jvp, "central_difference": meanflow_central_difference}


def meanflow_loss(
    u_fn: AverageVelocityFn,
    actions: Tensor,
    noise: Tensor,
    t: Tensor,
    r: Tensor,
    *,
    adaptive_p: float = 0.0,
    adaptive_c: float = 1e-3,
    dudt: str = "jvp",
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-sample MeanFlow loss ``(B,)`` and a dict of detached diagnostics.

    ``z_t = interpolate(actions, noise, t)``, ``v = noise - actions``,
    ``u_tgt = sg(v - (t - r) * du/dt)`` (stop-gradient: no second-order backprop), ``Delta = u - u_tgt``
    and ``||Delta||^2`` is the *mean* of the squared error over the trailing dims (as in the official
    MeanFlow / MP1 / DM1 code; a sum would only rescale ``adaptive_c``).

    Adaptive weighting: ``loss = sg(w) * ||Delta||^2`` with ``w = 1 / (||Delta||^2 + c)^p``.
    ``p = 0`` is plain MSE (DM1); the paper's best is ``p = 1``; MP1 uses ``gamma = 0.5`` i.e.
    ``p = 1 - gamma = 0.5``. Gradients reach the parameters only through ``u``. ``dudt`` names how
    du/dt is computed: ``jvp`` (exact, forward-mode AD) or ``central_difference``.

    Returns ``(loss, info)`` with ``info`` holding ``delta_sq`` and ``weight`` ``(B,)``, ``u_tgt`` and
    ``dudt`` ``(B, ...)``, all detached. The caller averages over the batch.
    """
    if t.shape != r.shape:
        raise ValueError(f"t {tuple(t.shape)} and r {tuple(r.shape)} differ in shape")
    z = interpolate(actions, noise, t)
    v = noise - actions
    if dudt not in DUDT_METHODS:
        raise ValueError(f"unknown du/dt method {dudt!r}; available: {', '.join(DUDT_METHODS)}")
    u, du_dt = DUDT_METHODS[dudt](u_fn, z, v, r, t)
    if u.shape != actions.shape:
        raise ValueError(f"u_fn returned {tuple(u.shape)}, expected {tuple(actions.shape)}")
    u_tgt = (v - expand_time(t - r, actions) * du_dt).detach()
    delta_sq = ((u - u_tgt) ** 2).reshape(u.shape[0], -1).mean(dim=1)
    weight = 1.0 / (delta_sq.detach() + adaptive_c) ** adaptive_p
    loss = weight * delta_sq
    info = {"delta_sq": delta_sq.detach(), "weight": weight, "u_tgt": u_tgt, "dudt": du_dt.detach()}
    return loss, info


def meanflow_sample(u_fn: AverageVelocityFn, noise: Tensor, num_steps: int = 1, clamp: float | None = None) -> Tensor:
    """Few-step MeanFlow sampling: ``z_r = z_t - (t - r) * u(z_t, r, t)`` on the grid ``1 -> 0``.

    ``num_steps = 1`` is the 1-NFE sampler ``a = z_1 - u(z_1, 0, 1)`` with ``z_1 = noise``. DM1
    defaults to 5 steps and clamps to ``[-1, 1]`` after every step (``clamp=1.0``); ``clamp=None``
    does not clamp.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if clamp is not None and not (clamp > 0 and math.isfinite(clamp)):
        raise ValueError(f"clamp must be a positive finite number or None, got {clamp}")
    times = torch.linspace(1.0, 0.0, num_steps + 1, device=noise.device, dtype=noise.dtype)
    batch = noise.shape[0]
    z = noise
    for k in range(num_steps):
        t, r = times[k], times[k + 1]
        z = z - (t - r) * u_fn(z, r.repeat(batch), t.repeat(batch))
        if clamp is not None:
            z = z.clamp(-clamp, clamp)
    return z
