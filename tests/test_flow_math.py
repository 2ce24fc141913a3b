"""The pure flow math in vla.flow, each checked against an independent reference on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch

from vla.flow import (
    DISPERSIVE_LOSSES,
    DISPERSIVE_VARIANTS,
    dispersive_loss,
    euler_chain,
    euler_sample,
    flow_matching_loss,
    interpolate,
    meanflow_loss,
    meanflow_sample,
    sample_beta,
    sample_flow_time,
    sample_meanflow_times,
)

F64 = torch.float64

# torch.func.jvp scripts a helper internally on first use and torch 2.11 warns about it; not ours.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------------------
# flow matching
# --------------------------------------------------------------------------------------------------


def test_interpolate_endpoints_and_broadcast():
    a = torch.randn(3, 4, 2, generator=gen(1), dtype=F64)
    e = torch.randn(3, 4, 2, generator=gen(2), dtype=F64)
    t = torch.tensor([1.0, 0.0, 0.25], dtype=F64)
    x = interpolate(a, e, t)
    assert torch.equal(x[0], e[0]) and torch.equal(x[1], a[1])
    torch.testing.assert_close(x[2], 0.25 * e[2] + 0.75 * a[2])
    with pytest.raises(ValueError):
        interpolate(a, e, torch.zeros(2, dtype=F64))


def test_flow_matching_loss_is_mse_against_noise_minus_actions():
    a = torch.randn(4, 3, 2, generator=gen(1), dtype=F64)
    e = torch.randn(4, 3, 2, generator=gen(2), dtype=F64)
    t = torch.tensor([0.1, 0.5, 0.9, 1.0], dtype=F64)

    def velocity_fn(x, tt):
        return torch.sin(x) * tt[:, None, None] + x**2

    loss = flow_matching_loss(velocity_fn, a, e, t)
    assert loss.shape == (4,)
    for b in range(4):  # hand computation, one sample and one entry at a time
        total = 0.0
        for i in range(3):
            for j in range(2):
                tb = t[b].item()
                x = tb * e[b, i, j].item() + (1 - tb) * a[b, i, j].item()
                pred = math.sin(x) * tb + x * x
                total += (pred - (e[b, i, j].item() - a[b, i, j].item())) ** 2
        assert loss[b].item() == pytest.approx(total / 6, rel=1e-12)


def test_euler_sample_is_exact_on_linear_flows():
    e = torch.randn(5, 4, 3, generator=gen(3), dtype=F64)
    direction = torch.randn(5, 4, 3, generator=gen(4), dtype=F64)
    # constant velocity field: x_0 = x_1 - v for any number of steps
    for k in (1, 3, 10):
        out = euler_sample(lambda x, t: direction, e, num_steps=k)
        torch.testing.assert_close(out, e - direction)
    # the exact velocity towards one data point per sample, v = (x - a) / t: lands on a
    a = torch.randn(5, 4, 3, generator=gen(5), dtype=F64)
    out = euler_sample(lambda x, t: (x - a) / t[:, None, None], e, num_steps=7)
    torch.testing.assert_close(out, a)


def test_euler_sample_passes_the_time_grid():
    seen = []

    def velocity_fn(x, t):
        seen.append(t.clone())
        return torch.zeros_like(x)

    euler_sample(velocity_fn, torch.zeros(2, 3), num_steps=4)
    assert [s.tolist() for s in seen] == [[1.0] * 2, [0.75] * 2, [0.5] * 2, [0.25] * 2]


def test_euler_chain_shapes_and_deterministic_means():
    e = torch.randn(3, 4, 2, generator=gen(6), dtype=F64)
    w = torch.randn(2, 2, generator=gen(7), dtype=F64)

    def velocity_fn(x, t):
        return torch.tanh(x @ w) * (1 + t[:, None, None])

    k = 5
    chain = euler_chain(velocity_fn, e, num_steps=k)
    assert chain.xs.shape == (k + 1, 3, 4, 2)
    assert chain.means.shape == (k, 3, 4, 2)
    assert chain.velocities.shape == (k, 3, 4, 2)
    assert chain.times.shape == (k + 1,)
    torch.testing.assert_close(chain.times, torch.linspace(1, 0, k + 1, dtype=F64))
    assert torch.equal(chain.xs[0], e)
    for i in range(k):
        assert torch.equal(chain.means[i], chain.xs[i + 1])
        t_i = torch.full((3,), 1 - i / k, dtype=F64)
        torch.testing.assert_close(chain.means[i], chain.xs[i] - velocity_fn(chain.xs[i], t_i) / k)
    torch.testing.assert_close(chain.actions, euler_sample(velocity_fn, e, num_steps=k))


def test_euler_chain_accepts_a_stochastic_transition():
    e = torch.randn(2, 3, generator=gen(8), dtype=F64)
    g = gen(9)

    def noisy(k, x, v, t, t_next):
        mean = x - (t - t_next) * v
        return mean, mean + 0.1 * torch.randn(mean.shape, generator=g, dtype=mean.dtype)

    chain = euler_chain(lambda x, t: x * t[:, None], e, num_steps=3, transition=noisy)
    for i in range(3):
        t_i = chain.times[i]
        torch.testing.assert_close(chain.means[i], chain.xs[i] - (1 / 3) * chain.xs[i] * t_i)
        assert not torch.equal(chain.means[i], chain.xs[i + 1])


def test_sample_flow_time_range_mean_and_reproducibility():
    n = 200_000
    t = sample_flow_time(n, generator=gen(10), dtype=F64)
    assert t.shape == (n,)
    assert t.min().item() >= 0.001 and t.max().item() <= 1.0
    # Beta(1.5, 1): mean 0.6, variance 1.5 / (2.5^2 * 3.5) ~ 0.069, so the standard error here is ~ 6e-4
    assert t.mean().item() == pytest.approx(0.6 * 0.999 + 0.001, abs=4e-3)
    assert torch.equal(sample_flow_time(7, generator=gen(3)), sample_flow_time(7, generator=gen(3)))


@pytest.mark.parametrize(("alpha", "beta"), [(2.0, 3.0), (0.5, 0.5), (1.0, 2.0)])
def test_sample_beta_general_shapes_match_moments(alpha, beta):
    x = sample_beta(100_000, alpha, beta, generator=gen(11), dtype=F64)
    mean = alpha / (alpha + beta)
    var = alpha * beta / ((alpha + beta) ** 2 * (alpha + beta + 1))
    assert x.min().item() >= 0.0 and x.max().item() <= 1.0
    assert x.mean().item() == pytest.approx(mean, abs=5e-3)
    assert x.var().item() == pytest.approx(var, rel=3e-2)


# --------------------------------------------------------------------------------------------------
# MeanFlow
# --------------------------------------------------------------------------------------------------


def make_mlp(dim: int, hidden: int = 16, seed: int = 0):
    """A fixed random 2-layer MLP u(z, r, t) in float64 whose weights require grad."""
    g = gen(seed)
    params = [
        torch.randn(dim + 2, hidden, generator=g, dtype=F64) * 0.7,
        torch.randn(hidden, generator=g, dtype=F64) * 0.1,
        torch.randn(hidden, dim, generator=g, dtype=F64) * 0.5,
        torch.randn(dim, generator=g, dtype=F64) * 0.1,
    ]
    for p in params:
        p.requires_grad_(True)
    w1, b1, w2, b2 = params

    def u_fn(z, r, t):
        x = torch.cat([z.reshape(z.shape[0], -1), r[:, None], t[:, None] ** 2], dim=1)
        return (torch.tanh(x @ w1 + b1) @ w2 + b2).reshape(z.shape)

    return u_fn, params


def meanflow_batch(b=6, shape=(3, 2), seed=20):
    a = torch.randn(b, *shape, generator=gen(seed), dtype=F64)
    e = torch.randn(b, *shape, generator=gen(seed + 1), dtype=F64)
    t, r = sample_meanflow_times(b, flow_ratio=0.5, generator=gen(seed + 2), dtype=F64)
    return a, e, t, r


def test_meanflow_jvp_matches_central_finite_difference():
    a, e, t, r = meanflow_batch()
    u_fn, _ = make_mlp(6)
    _, info = meanflow_loss(u_fn, a, e, t, r)
    z = t[:, None, None] * e + (1 - t[:, None, None]) * a
    v = e - a
    h = 1e-6
    with torch.no_grad():
        fd = (u_fn(z + h * v, r, t + h) - u_fn(z - h * v, r, t - h)) / (2 * h)
    torch.testing.assert_close(info["dudt"], fd, rtol=1e-6, atol=1e-8)
    expected_tgt = v - (t - r)[:, None, None] * fd
    torch.testing.assert_close(info["u_tgt"], expected_tgt, rtol=1e-6, atol=1e-8)


def test_meanflow_central_difference_matches_the_jvp_in_target_and_gradient():
    """The cheaper du/dt gives the same target (to O(eps^2)) and so the same parameter gradient."""
    a, e, t, r = meanflow_batch()
    u_fn, params = make_mlp(6)
    grads, infos = {}, {}
    for method in ("jvp", "central_difference"):
        loss, infos[method] = meanflow_loss(u_fn, a, e, t, r, dudt=method)
        grads[method] = torch.autograd.grad(loss.mean(), params)
    torch.testing.assert_close(infos["central_difference"]["dudt"], infos["jvp"]["dudt"], rtol=1e-4, atol=1e-5)
    for g_cd, g_jvp in zip(grads["central_difference"], grads["jvp"], strict=True):
        torch.testing.assert_close(g_cd, g_jvp, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="available: jvp, central_difference"):
        meanflow_loss(u_fn, a, e, t, r, dudt="finite")


def test_meanflow_loss_is_zero_for_the_exact_average_velocity():
    # One data point a_i per sample (think: per observation). Along x_t = t e + (1 - t) a the
    # average velocity over any [r, t] is e - a; written as a function of (z, t) it is (z - a) / t,
    # which depends on z and t, so the JVP term is non-trivial and must cancel exactly.
    a, e, t, r = meanflow_batch()
    assert (t > r).any() and (t == r).any()

    def u_exact(z, r_, t_):
        return (z - a) / t_[:, None, None]

    loss, info = meanflow_loss(u_exact, a, e, t, r)
    torch.testing.assert_close(loss, torch.zeros_like(loss), atol=1e-20, rtol=0)
    torch.testing.assert_close(info["dudt"], torch.zeros_like(a), atol=1e-12, rtol=0)
    # the constant field e - a (no dependence on z, r, t) is also exact
    loss_c, _ = meanflow_loss(lambda z, r_, t_: (e - a) + 0 * z, a, e, t, r)
    torch.testing.assert_close(loss_c, torch.zeros_like(loss_c), atol=1e-20, rtol=0)


def test_meanflow_sample_recovers_data_on_the_linear_flow():
    a = torch.rand(5, 4, 2, generator=gen(30), dtype=F64) * 2 - 1
    e = torch.randn(5, 4, 2, generator=gen(31), dtype=F64)

    def u_exact(z, r_, t_):
        return (z - a) / t_[:, None, None]

    torch.testing.assert_close(meanflow_sample(u_exact, e, num_steps=1), a)
    torch.testing.assert_close(meanflow_sample(u_exact, e, num_steps=5), a)
    # 1-NFE is literally a = z_1 - u(z_1, 0, 1)
    calls = []

    def u_rec(z, r_, t_):
        calls.append((r_.clone(), t_.clone()))
        return u_exact(z, r_, t_)

    meanflow_sample(u_rec, e, num_steps=1)
    assert len(calls) == 1 and torch.all(calls[0][0] == 0) and torch.all(calls[0][1] == 1)
    # clamping after each step
    out = meanflow_sample(lambda z, r_, t_: -3 * torch.ones_like(z), e, num_steps=2, clamp=1.0)
    assert out.abs().max().item() <= 1.0


def test_meanflow_gradient_flows_only_through_the_prediction():
    a, e, t, r = meanflow_batch()
    u_fn, params = make_mlp(6, seed=1)
    loss, info = meanflow_loss(u_fn, a, e, t, r)
    grads = torch.autograd.grad(loss.mean(), params)

    z = t[:, None, None] * e + (1 - t[:, None, None]) * a
    u_pred = u_fn(z, r, t)
    ref = ((u_pred - info["u_tgt"].detach()) ** 2).mean(dim=(1, 2)).mean()
    ref_grads = torch.autograd.grad(ref, params)
    for g, g_ref in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)
    # not detaching the target would have given different gradients
    u2, dudt2 = torch.func.jvp(u_fn, (z, r, t), (e - a, torch.zeros_like(r), torch.ones_like(t)))
    no_sg = ((u2 - ((e - a) - (t - r)[:, None, None] * dudt2)) ** 2).mean(dim=(1, 2)).mean()
    no_sg_grads = torch.autograd.grad(no_sg, params)
    assert not torch.allclose(no_sg_grads[0], grads[0])


def test_meanflow_adaptive_weighting_p1_matches_hand_formula():
    a, e, t, r = meanflow_batch()
    u_fn, params = make_mlp(6, seed=2)
    c = 1e-3
    loss, info = meanflow_loss(u_fn, a, e, t, r, adaptive_p=1.0, adaptive_c=c)
    z = t[:, None, None] * e + (1 - t[:, None, None]) * a
    u_pred = u_fn(z, r, t)
    delta_sq = ((u_pred - info["u_tgt"]) ** 2).mean(dim=(1, 2))
    for b in range(a.shape[0]):
        d = delta_sq[b].item()
        assert loss[b].item() == pytest.approx(d / (d + c), rel=1e-12)
        assert info["weight"][b].item() == pytest.approx(1 / (d + c), rel=1e-12)
    grads = torch.autograd.grad(loss.mean(), params)
    ref_grads = torch.autograd.grad((delta_sq / (delta_sq.detach() + c)).mean(), params)
    for g, g_ref in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)
    # p = 0 is plain MSE
    loss0, info0 = meanflow_loss(u_fn, a, e, t, r)
    torch.testing.assert_close(loss0, delta_sq.detach())
    assert torch.all(info0["weight"] == 1)


@pytest.mark.parametrize("flow_ratio", [0.0, 0.5, 0.75])
def test_sample_meanflow_times(flow_ratio):
    n = 4000
    t, r = sample_meanflow_times(n, flow_ratio=flow_ratio, generator=gen(40), dtype=F64)
    assert t.shape == r.shape == (n,)
    assert torch.all(t >= r) and torch.all(r > 0) and torch.all(t < 1)
    assert (t == r).float().mean().item() == pytest.approx(flow_ratio, abs=1e-3)
    # both are order statistics of sigmoid(N(-0.4, 1)): the median of a single draw is sigmoid(-0.4)
    pooled = torch.cat([t[t != r], r[t != r]]) if flow_ratio < 1 else t
    assert pooled.median().item() == pytest.approx(1 / (1 + math.exp(0.4)), abs=0.03)
    t2, r2 = sample_meanflow_times(n, flow_ratio=flow_ratio, generator=gen(40), dtype=F64)
    assert torch.equal(t, t2) and torch.equal(r, r2)


# --------------------------------------------------------------------------------------------------
# dispersive loss: hand references with explicit loops over python floats
# --------------------------------------------------------------------------------------------------

TAU = 0.5
MARGIN = 2.0
# three non-zero 2-d points (cosine is undefined at 0): one close pair and one far point, so that
# DM1's clamp at 10 * tau saturates two of the three pairs
Z = [[0.5, -1.0], [1.5, -0.5], [0.5, 5.0]]


def _sq(zi, zj):
    return sum((a - b) ** 2 for a, b in zip(zi, zj, strict=True))


def _cos(zi, zj):
    dot = sum(a * b for a, b in zip(zi, zj, strict=True))
    return dot / max(math.sqrt(_sq(zi, [0] * len(zi))) * math.sqrt(_sq(zj, [0] * len(zj))), 1e-16)


def _cov(z, standardize):
    n, d = len(z), len(z[0])
    mean = [sum(z[i][m] for i in range(n)) / n for m in range(d)]
    zc = [[z[i][m] - mean[m] for m in range(d)] for i in range(n)]
    if standardize:
        std = [math.sqrt(sum(zc[i][m] ** 2 for i in range(n)) / (n - 1) + 1e-8) for m in range(d)]
        zc = [[zc[i][m] / std[m] for m in range(d)] for i in range(n)]
    return [[sum(zc[i][m] * zc[i][k] for i in range(n)) / (n - 1) for k in range(d)] for m in range(d)]


def hand_paper(z, variant, tau, margin):
    n, d = len(z), len(z[0])
    if variant == "infonce_l2":
        return math.log(sum(math.exp(-_sq(z[i], z[j]) / d / tau) for i in range(n) for j in range(n)) / n**2)
    if variant == "infonce_cosine":
        return math.log(sum(math.exp(_cos(z[i], z[j]) / tau) for i in range(n) for j in range(n)) / n**2)
    if variant == "hinge":
        vals = [max(0.0, margin - _sq(z[i], z[j]) / d) ** 2 for i in range(n) for j in range(n) if i != j]
        return sum(vals) / len(vals)
    if variant == "covariance":
        c = _cov(z, standardize=True)
        vals = [c[m][k] ** 2 for m in range(d) for k in range(d) if m != k]
        return sum(vals) / len(vals)
    raise AssertionError(variant)


def hand_dm1(z, variant, tau, margin):
    n, d = len(z), len(z[0])
    if variant in ("infonce_l2", "infonce_cosine"):
        total = 0.0
        for i in range(n):
            row = []
            for j in range(n):
                if i == j:
                    s = -1e9
                elif variant == "infonce_l2":
                    s = -math.sqrt(_sq(z[i], z[j])) / tau
                else:
                    s = _cos(z[i], z[j]) / tau
                s = min(10.0, max(-10.0, s))  # DM1 clamps after masking: the diagonal becomes -10
                row.append(-s)
            total += math.log(sum(math.exp(x) for x in row))
        return -total / n
    if variant == "hinge":
        vals = [max(0.0, margin - math.sqrt(_sq(z[i], z[j]))) for i in range(n) for j in range(n) if i != j]
        return sum(vals) / len(vals)
    if variant == "covariance":
        c = _cov(z, standardize=False)
        off = [c[m][k] ** 2 for m in range(d) for k in range(d) if m != k]
        return sum(off) / len(off) + sum(max(0.0, 1 - c[m][m]) for m in range(d)) / d
    raise AssertionError(variant)


HAND = {"paper": hand_paper, "dm1": hand_dm1}
CASES = [(form, variant) for form in ("paper", "dm1") for variant in DISPERSIVE_VARIANTS]


def test_registry_lists_all_variants_for_both_forms():
    assert set(DISPERSIVE_VARIANTS) == {"infonce_l2", "infonce_cosine", "hinge", "covariance"}
    for form in ("paper", "dm1"):
        assert set(DISPERSIVE_LOSSES[form]) == set(DISPERSIVE_VARIANTS)


@pytest.mark.parametrize(("form", "variant"), CASES)
def test_dispersive_value_matches_hand_computation(form, variant):
    z = torch.tensor(Z, dtype=F64)
    got = dispersive_loss(z, variant, temperature=TAU, margin=MARGIN, form=form).item()
    want = HAND[form](Z, variant, TAU, MARGIN)
    assert got == pytest.approx(want, rel=1e-10, abs=1e-12)
    # features of shape (B, ...) are flattened per sample
    z3 = torch.tensor(Z, dtype=F64).reshape(3, 1, 2)
    assert dispersive_loss(z3, variant, temperature=TAU, margin=MARGIN, form=form).item() == pytest.approx(got)


@pytest.mark.parametrize(("form", "variant"), CASES)
def test_dispersive_gradient(form, variant):
    z = torch.tensor(Z, dtype=F64, requires_grad=True)

    def fn(x):
        return dispersive_loss(x, variant, temperature=TAU, margin=MARGIN, form=form)

    assert torch.autograd.gradcheck(fn, (z,), eps=1e-6, atol=1e-6)
    # spot check one entry against a central difference of the independent hand implementation
    (grad,) = torch.autograd.grad(fn(z), z)
    h = 1e-6
    plus = [row[:] for row in Z]
    minus = [row[:] for row in Z]
    plus[1][0] += h
    minus[1][0] -= h
    fd = (HAND[form](plus, variant, TAU, MARGIN) - HAND[form](minus, variant, TAU, MARGIN)) / (2 * h)
    assert grad[1, 0].item() == pytest.approx(fd, rel=1e-5, abs=1e-8)


@pytest.mark.parametrize("form", ["paper", "dm1"])
@pytest.mark.parametrize("variant", ["infonce_l2", "infonce_cosine"])
def test_infonce_is_higher_for_collapsed_embeddings(form, variant):
    collapsed = torch.ones(4, 3, dtype=F64)
    spread = torch.tensor([[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0]], dtype=F64)
    lc = dispersive_loss(collapsed, variant, form=form)
    ls = dispersive_loss(spread, variant, form=form)
    assert lc.item() > ls.item()


def test_dispersive_small_batches_and_unknown_names():
    z = torch.randn(1, 4, dtype=F64, requires_grad=True)
    for form, variant in CASES:
        out = dispersive_loss(z, variant, form=form)
        assert out.item() == 0.0 and out.requires_grad
    with pytest.raises(ValueError, match="infonce_cosine") as err:
        dispersive_loss(torch.randn(3, 2), "infonce_l3")
    for name in DISPERSIVE_VARIANTS:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="dm1") as err:
        dispersive_loss(torch.randn(3, 2), "hinge", form="dm2")
    assert "paper" in str(err.value)
