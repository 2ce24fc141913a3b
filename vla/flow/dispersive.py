"""Dispersive loss ("Diffuse and Disperse", Wang & He 2025): a batch regulariser on hidden features.

``L_total = E_i[L_flow(x_i)] + lambda * L_disp(Z)`` where ``Z`` is a batch of intermediate
activations; no positive pairs and no parameters. Minimising ``L_disp`` spreads the features out.
The weight ``lambda`` is applied by the caller, never inside these functions.

Two forms of each of the four variants:

``form="paper"`` (default; Wang & He's formulation, ``D_ij = ||z_i - z_j||^2 / dim``):
  * ``infonce_l2``: ``log mean_{i,j} exp(-D_ij / tau)``, the diagonal (``D_ii = 0``) included as
    in the paper's snippet. That snippet has no temperature, i.e. it equals ``temperature=1``.
  * ``infonce_cosine``: the same with ``D_ij = -cos(z_i, z_j)``: ``log mean_{i,j} exp(cos_ij / tau)``.
    (``D = 1 - cos`` would only shift the value by ``-1/tau``; gradients are identical.)
  * ``hinge``: ``mean_{i != j} max(0, margin - D_ij)^2``.
  * ``covariance``: standardise each feature over the batch (mean 0, unbiased variance 1), take
    the covariance ``C`` (i.e. the correlation matrix) and return ``mean_{m != n} C_mn^2``.

``form="dm1"`` (the released DM1 code, ``model/loss/dispersive_loss.py``; code-faithful option):
  * ``infonce_l2``: ``s_ij = -||z_i - z_j|| / tau`` (not squared, not divided by dim), diagonal set
    to -1e9, *then* everything clamped to [-10, 10], ``L = -mean_i logsumexp_j(-s_ij)``. The clamp
    turns the masked diagonal into -10, so each row's diagonal contributes ``e^{+10}`` and
    dominates, and distances saturate at ``10 * tau`` (no gradient beyond). Kept on purpose.
  * ``infonce_cosine``: the same pattern on ``s_ij = cos_ij / tau``.
  * ``hinge``: ``mean_{i != j} relu(margin - ||z_i - z_j||)`` (not squared).
  * ``covariance``: ``C`` the covariance of the centred (not standardised) features,
    ``mean_{m != n} C_mn^2 + mean_m relu(1 - C_mm)`` (VICReg-like).

Every input ``z`` of shape ``(B, ...)`` is flattened to ``(B, F)``. A batch of fewer than two
samples returns 0 (connected to ``z``'s graph). With ``F = 1`` the covariance off-diagonal term is
empty and counts as 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from vla.registry import unknown_name_message

DispersiveFn = Callable[..., Tensor]
"""``fn(h, *, temperature, margin) -> scalar`` on flattened features ``h`` of shape ``(B, F)``, ``B >= 2``."""

_COS_EPS = 1e-8  # F.normalize eps (as in DM1)
_STD_EPS = 1e-8  # added to the variance before standardising (paper covariance)
_DM1_MASK = -1e9  # DM1's diagonal fill value before the clamp
_DM1_CLAMP = 10.0  # DM1 clamps the similarity logits to [-10, 10]


def _eye(n: int, h: Tensor) -> Tensor:
    return torch.eye(n, dtype=torch.bool, device=h.device)


def _sq_dists(h: Tensor) -> Tensor:
    """``(B, B)`` squared Euclidean distances, smooth everywhere (no sqrt)."""
    diff = h[:, None, :] - h[None, :, :]
    return (diff * diff).sum(dim=-1)


def _dists(h: Tensor) -> Tensor:
    """``(B, B)`` Euclidean distances; the gradient at a zero distance is 0 (as for ``torch.norm``)."""
    return torch.linalg.vector_norm(h[:, None, :] - h[None, :, :], dim=-1)


def _cosine(h: Tensor) -> Tensor:
    hn = torch.nn.functional.normalize(h, p=2, dim=1, eps=_COS_EPS)
    return hn @ hn.T


def _log_mean_exp(x: Tensor) -> Tensor:
    return torch.logsumexp(x.reshape(-1), dim=0) - math.log(x.numel())


def _offdiag_mean(m: Tensor) -> Tensor:
    n = m.shape[0]
    if n < 2:
        return m.sum() * 0.0
    return m[~_eye(n, m)].mean()


# --- paper form -----------------------------------------------------------------------------------


def paper_infonce_l2(h: Tensor, *, temperature: float, margin: float) -> Tensor:
    d = _sq_dists(h) / h.shape[1]
    return _log_mean_exp(-d / temperature)


def paper_infonce_cosine(h: Tensor, *, temperature: float, margin: float) -> Tensor:
    return _log_mean_exp(_cosine(h) / temperature)


def paper_hinge(h: Tensor, *, temperature: float, margin: float) -> Tensor:
    d = _sq_dists(h) / h.shape[1]
    return _offdiag_mean(torch.relu(margin - d) ** 2)


def paper_covariance(h: Tensor, *, temperature: float, margin: float) -> Tensor:
    b = h.shape[0]
    hc = h - h.mean(dim=0, keepdim=True)
    var = (hc * hc).sum(dim=0) / (b - 1)
    hs = hc / torch.sqrt(var + _STD_EPS)
    cov = hs.T @ hs / (b - 1)
    return _offdiag_mean(cov * cov)


# --- DM1 released-code form -----------------------------------------------------------------------


def _dm1_infonce(s: Tensor) -> Tensor:
    eye = _eye(s.shape[0], s)
    s = s.masked_fill(eye, _DM1_MASK)
    # Faithful to DM1: clamping *after* masking turns the diagonal's -1e9 into -10, so below each
    # row's own term contributes exp(+10) and dominates the logsumexp (documented DM1 bug).
    s = s.clamp(-_DM1_CLAMP, _DM1_CLAMP)
    return -torch.logsumexp(-s, dim=1).mean()


def dm1_infonce_l2(h: Tensor, *, temperature: float, margin: float) -> Tensor:
    return _dm1_infonce(-_dists(h) / temperature)


def dm1_infonce_cosine(h: Tensor, *, temperature: float, margin: float) -> Tensor:
    return _dm1_infonce(_cosine(h) / temperature)


def dm1_hinge(h: Tensor, *, temperature: float, margin: float) -> Tensor:
    return _offdiag_mean(torch.relu(margin - _dists(h)))


def dm1_covariance(h: Tensor, *, temperature: float, margin: float) -> Tensor:
    b = h.shape[0]
    hc = h - h.mean(dim=0, keepdim=True)
    cov = hc.T @ hc / (b - 1)
    return _offdiag_mean(cov * cov) + torch.relu(1.0 - torch.diagonal(cov)).mean()


DISPERSIVE_LOSSES: dict[str, dict[str, DispersiveFn]] = {
    "paper": {
        "infonce_l2": paper_infonce_l2,
        "infonce_cosine": paper_infonce_cosine,
        "hinge": paper_hinge,
        "covariance": paper_covariance,
    },
    "dm1": {
        "infonce_l2": dm1_infonce_l2,
        "infonce_cosine": dm1_infonce_cosine,
        "hinge": dm1_hinge,
        "covariance": dm1_covariance,
    },
}
"""form -> variant -> function ``fn(h, *, temperature, margin)`` on ``(B, F)`` features."""

DISPERSIVE_VARIANTS: tuple[str, ...] = tuple(DISPERSIVE_LOSSES["paper"])


def get_dispersive_fn(variant: str, form: str = "paper") -> DispersiveFn:
    """Look up a variant; an unknown form or variant raises ``ValueError`` listing what exists."""
    if form not in DISPERSIVE_LOSSES:
        raise ValueError(unknown_name_message("dispersive loss form", form, DISPERSIVE_LOSSES))
    table = DISPERSIVE_LOSSES[form]
    if variant not in table:
        raise ValueError(unknown_name_message("dispersive loss variant", variant, table))
    return table[variant]


def dispersive_loss(
    z: Tensor,
    variant: str = "infonce_l2",
    *,
    temperature: float = 0.5,
    margin: float = 1.0,
    form: str = "paper",
) -> Tensor:
    """Scalar dispersive loss of the batch ``z`` (``(B, ...)``, flattened per sample); unweighted.

    ``variant`` is one of ``infonce_l2``, ``infonce_cosine``, ``hinge``, ``covariance``; ``form`` is
    ``"paper"`` (Wang & He) or ``"dm1"`` (the released DM1 code); see the module docstring for the
    exact formulas. ``temperature`` is used by the InfoNCE variants, ``margin`` by hinge. The weight
    ``lambda`` (DM1 default 0.5, 0.1 for covariance) is applied by the caller.
    """
    fn = get_dispersive_fn(variant, form)
    if z.ndim == 0:
        raise ValueError("z must have a batch dimension")
    h = z.reshape(z.shape[0], -1)
    if h.shape[0] < 2:
        return h.sum() * 0.0
    return fn(h, temperature=temperature, margin=margin)
