"""A light client for `vla serve` (or any openpi policy server) for the robot PC.

Same protocol as openpi-client's ``WebsocketClientPolicy`` with what a robot loop needs on
top: a connect/receive timeout, a ``ConnectionError`` naming host:port when nothing answers
(the ROS node holds the arm and reports on it), and the server's text-frame errors raised as
``PolicyServerError``. No numpy<2 pin: it uses our own wire module.
"""

from __future__ import annotations

import logging
from typing import Any

from vla.serving.wire import DEFAULT_MAX_MESSAGE_BYTES, WireError, pack, unpack

log = logging.getLogger("vla.serving")


class PolicyServerError(RuntimeError):
    """The server refused a request (its text-frame reply is the message)."""


class AuthenticationError(PolicyServerError):
    """The server refused the connection: missing or wrong API key, or too many wrong keys (429)."""


class PolicyClient:
    """``infer(obs) -> {"actions": (H, A), "server_timing": ...}`` over one websocket connection."""

    def __init__(
        self,
        host: str = "localhost",
        port: int = 8000,
        api_key: str | None = None,
        timeout_s: float = 10.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ):
        from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI
        from websockets.sync.client import connect

        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.host, self.port, self.timeout_s = host, int(port), float(timeout_s)
        self.max_message_bytes = max_message_bytes
        self.address = f"{host}:{self.port}"
        uri = host if host.startswith(("ws://", "wss://")) else f"ws://{self.address}"
        headers = {"Authorization": f"Api-Key {api_key}"} if api_key else None
        self._ws = None
        try:
            # proxy=None: the policy server is on the robot's LAN, never behind a proxy; legacy=True: this object
            # owns the connection beyond one `with` block (websockets >= 17.1 asks for the flag then)
            self._ws = connect(
                uri,
                compression=None,
                max_size=None,
                additional_headers=headers,
                proxy=None,
                open_timeout=self.timeout_s,
                close_timeout=1.0,
                legacy=True,
            )
        except InvalidStatus as err:
            status = err.response.status_code
            if status == 401:
                raise AuthenticationError(f"policy server at {self.address} refused the API key (HTTP 401)") from None
            if status == 429:
                retry = err.response.headers.get("Retry-After", "?")
                raise AuthenticationError(
                    f"policy server at {self.address} refuses this address for {retry} s after too many wrong "
                    "API keys (HTTP 429)"
                ) from None
            raise ConnectionError(f"policy server at {self.address} refused the websocket (HTTP {status})") from None
        except InvalidURI as err:
            raise ValueError(f"bad policy server address {uri!r}: {err}") from None
        except (OSError, TimeoutError, InvalidHandshake) as err:
            raise ConnectionError(f"no policy server at {self.address}: {type(err).__name__}: {err}") from None
        try:
            self.metadata: dict[str, Any] = self._receive()
        except BaseException:
            self.close()
            raise
        if not isinstance(self.metadata, dict):
            self.close()
            raise PolicyServerError(f"server at {self.address} sent {type(self.metadata).__name__} metadata, not a map")
        log.debug("connected to %s: %s", self.address, {k: self.metadata.get(k) for k in ("server", "server_version")})

    def _receive(self) -> Any:
        from websockets.exceptions import ConnectionClosed

        if self._ws is None:
            raise ConnectionError(f"connection to policy server at {self.address} is closed")
        try:
            message = self._ws.recv(timeout=self.timeout_s)
        except TimeoutError:
            # a late reply would be read as the answer to the next request: drop the connection
            self.close()
            raise TimeoutError(f"policy server at {self.address} did not answer within {self.timeout_s} s") from None
        except ConnectionClosed as err:
            self.close()
            raise ConnectionError(f"policy server at {self.address} closed the connection ({err})") from None
        if isinstance(message, str):
            raise PolicyServerError(f"policy server at {self.address}: {message}")
        try:
            return unpack(message, max_bytes=self.max_message_bytes)
        except WireError as err:
            raise PolicyServerError(f"unreadable reply from {self.address}: {err}") from None

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        """Send one observation, wait for its reply. Raises PolicyServerError on a refused request."""
        from websockets.exceptions import ConnectionClosed

        if self._ws is None:
            raise ConnectionError(f"connection to policy server at {self.address} is closed")
        data = pack(obs)
        try:
            self._ws.send(data)
        except ConnectionClosed as err:
            self.close()
            raise ConnectionError(f"policy server at {self.address} closed the connection ({err})") from None
        return self._receive()

    # openpi-client's names, so code written against WebsocketClientPolicy runs unchanged
    def get_server_metadata(self) -> dict[str, Any]:
        return self.metadata

    def reset(self) -> None:
        """Nothing to reset: the server is stateless between requests."""

    def close(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            ws.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
