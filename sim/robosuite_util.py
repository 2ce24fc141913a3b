"""Importing robosuite (used by the RoboMimic and LIBERO adapters) without its import-time noise."""

from __future__ import annotations

import logging


def _not_macro_nag(record: logging.LogRecord) -> bool:
    return "macro" not in record.getMessage()


def import_robosuite():
    """robosuite warns three lines about a missing private macro file in every process; drop those."""
    logging.getLogger("robosuite_logs").addFilter(_not_macro_nag)
    import robosuite

    return robosuite


def hidden_geom_groups(env) -> tuple[int, ...]:
    """robosuite's camera images hide its collision geoms (group 0) and show its visual ones
    (group 1) unless the env was built to render the other."""
    hidden = []
    if not getattr(env, "render_collision_mesh", False):
        hidden.append(0)
    if not getattr(env, "render_visual_mesh", True):
        hidden.append(1)
    return tuple(hidden)
