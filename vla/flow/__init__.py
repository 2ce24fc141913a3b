"""Pure math of flow policies: flow matching (pi0), MeanFlow and dispersive regularisers.

One time convention throughout: ``t = 1`` is noise, ``t = 0`` is data,
``x_t = t * noise + (1 - t) * action``, velocity target ``v = noise - action``, and sampling
integrates from ``t = 1`` down to ``t = 0``.
"""

from vla.flow.dispersive import (
    DISPERSIVE_LOSSES,
    DISPERSIVE_VARIANTS,
    dispersive_loss,
    get_dispersive_fn,
)
from vla.flow.flow_matching import (
    DenoisingChain,
    denoising_times,
    euler_chain,
    euler_sample,
    expand_time,
    flow_matching_loss,
    interpolate,
    ode_transition,
    sample_beta,
    sample_flow_time,
)
from vla.flow.meanflow import meanflow_jvp, meanflow_loss, meanflow_sample, sample_meanflow_times

__all__ = [
    "DISPERSIVE_LOSSES",
    "DISPERSIVE_VARIANTS",
    "DenoisingChain",
    "denoising_times",
    "dispersive_loss",
    "euler_chain",
    "euler_sample",
    "expand_time",
    "flow_matching_loss",
    "get_dispersive_fn",
    "interpolate",
    "meanflow_jvp",
    "meanflow_loss",
    "meanflow_sample",
    "ode_transition",
    "sample_beta",
    "sample_flow_time",
    "sample_meanflow_times",
]
