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
