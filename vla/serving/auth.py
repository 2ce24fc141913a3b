"""Who may use `vla serve`: where the API key comes from, when a key is required, and the
check of each websocket handshake with a per-address limit on wrong keys.

A key on the command line is visible to every user in ``ps``; the environment variable
``VLA_SERVE_API_KEY`` or a key file (``--api-key-file``) is not. A server that listens beyond
the loopback interface without a key serves anyone who can reach the port, so it starts only
when the user asks for that explicitly.
"""

from __future__ import annotations

import hmac
import http
import ipaddress
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("vla.serving")

API_KEY_ENV = "VLA_SERVE_API_KEY"
LOG_INTERVAL_S = 1.0  # refusals from one address are logged at most this often (with a count)
MAX_TRACKED_ADDRESSES = 4096  # beyond it, addresses whose window has passed are forgotten


def resolve_api_key(flag: str | None, key_file: str | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The API key from ``--api-key``, else ``--api-key-file``, else ``$VLA_SERVE_API_KEY``; None: no key."""
    if flag is not None and key_file is not None:
        raise ValueError("give the API key once: --api-key or --api-key-file, not both")
    if flag is not None:
        return flag
    if key_file is not None:
        return _read_key_file(Path(key_file))
    return environ.get(API_KEY_ENV, "").strip() or None


def _read_key_file(path: Path) -> str:
    try:
        key = path.read_text().strip()
    except FileNotFoundError:
        raise ValueError(f"--api-key-file {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"--api-key-file {path}: cannot read it ({type(err).__name__})") from None
    if not key:
        raise ValueError(f"--api-key-file {path} is empty; write the key into it (one line)")
    return key


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` is only reachable from this machine (a host name other than localhost
    counts as reachable from outside: it may resolve to anything)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, api_key: str | None, allow_unauthenticated: bool) -> None:
    """Refuse to serve a non-loopback interface without a key unless explicitly allowed."""
    if api_key is None and not allow_unauthenticated and not is_loopback_host(host):
        raise ValueError(
            f"refusing to listen on {host or 'every interface'} without an API key: anyone who can reach the "
            f"port could use the policy. Set a key (--api-key-file PATH or the environment variable {API_KEY_ENV}), "
            "listen on 127.0.0.1, or pass --allow-unauthenticated on a trusted network"
        )


@dataclass
class _Failures:
    """Wrong keys from one address in the current window, and what is still to be logged."""

    window_start: float
    count: int = 0
    last_log: float = -math.inf
    unlogged: int = 0


class ApiKeyGate:
    """``check(address, header values) -> None`` (let in), 401 (wrong or missing key) or 429
    (too many wrong keys from this address within the window: refused until it has passed,
    even with the right key, so a key cannot be guessed at network speed)."""

    def __init__(self, api_key: str, max_failures: int, window_s: float, clock: Callable[[], float] = time.monotonic):
        self._expected = f"Api-Key {api_key}".encode()
        self.max_failures, self.window_s, self._clock = max_failures, window_s, clock
        self._failures: dict[str, _Failures] = {}

    def check(self, address: str, authorization: list[str]) -> http.HTTPStatus | None:
        now = self._clock()
        state = self._current(address, now)
        if state is not None and state.count >= self.max_failures:
            self._note_refusal(address, state, now, "too many wrong API keys, answering 429")
            return http.HTTPStatus.TOO_MANY_REQUESTS
        # exactly one Authorization header, equal to the key (a repeated header is refused, not guessed at)
        if len(authorization) == 1 and hmac.compare_digest(authorization[0].encode("utf-8", "replace"), self._expected):
            return None
        if state is None:
            state = self._failures[address] = _Failures(window_start=now)
            self._forget_expired(now)
        state.count += 1
        self._note_refusal(address, state, now, "missing or wrong API key")
        return http.HTTPStatus.UNAUTHORIZED

    def retry_after_s(self, address: str) -> int:
        """Seconds until ``address`` may try again."""
        state = self._failures.get(address)
        return 0 if state is None else max(1, math.ceil(state.window_start + self.window_s - self._clock()))

    def _current(self, address: str, now: float) -> _Failures | None:
        state = self._failures.get(address)
        if state is not None and now - state.window_start >= self.window_s:
            del self._failures[address]
            return None
        return state

    def _note_refusal(self, address: str, state: _Failures, now: float, reason: str) -> None:
        """One WARNING per address per LOG_INTERVAL_S, counting the refusals in between."""
        state.unlogged += 1
        if now - state.last_log >= LOG_INTERVAL_S:
            log.warning("refused %s: %s (%d refusal(s) since the last report)", address, reason, state.unlogged)
            state.last_log, state.unlogged = now, 0

    def _forget_expired(self, now: float) -> None:
        if len(self._failures) > MAX_TRACKED_ADDRESSES:
            for address in [a for a, s in self._failures.items() if now - s.window_start >= self.window_s]:
                del self._failures[address]
