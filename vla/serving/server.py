"""`vla serve`: a policy checkpoint behind a websocket, wire-compatible with openpi-client.

Protocol (openpi's): on connect the server sends one binary msgpack message of metadata;
then every binary request (an observation dict) gets one binary reply
``{"actions": float32 (H, A), "policy_timing": {...}, "server_timing": {...}}``. A request
that cannot be served (malformed msgpack, too large, missing or wrong-shaped feature, NaN)
gets a *text* frame with the reason (openpi-client raises on a text frame) and the
connection keeps serving. ``GET /healthz`` answers 200 "OK".

Observation layout (``vla.keys``): ``observation.state`` float (D,), ``observation.images.<cam>``
uint8 (H, W, 3), ``task`` str; or all of them batched with a leading B, then the reply is
(B, H, A). An optional ``noise`` (H, A) / (B, H, A) float array replaces the sampled initial
noise, which makes a reply reproducible (the sampler is otherwise random); ``prompt`` is
accepted as openpi's name for ``task``.

Inference runs on one worker thread, off the event loop, so requests from several clients
are served one at a time while the loop keeps answering pings and health checks.
"""

from __future__ import annotations

import asyncio
import hmac
import http
import logging
import signal
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vla.observation import NOISE, ObservationError, ObservationSpec
from vla.serving.wire import DEFAULT_MAX_MESSAGE_BYTES, WireError, pack, unpack
from vla.threads import set_thread_budget

log = logging.getLogger("vla.serving")

PROTOCOL = "openpi-msgpack-numpy"


def server_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vla-stack")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
        return "unknown"


@dataclass
class ServeConfig:
    policy: str = field(default="data/runs/train/checkpoints/last", metadata={"help": "checkpoint directory"})
    host: str = field(default="0.0.0.0", metadata={"help": "interface to listen on"})
    port: int = field(default=8000, metadata={"help": "TCP port (0: any free port, printed at start)"})
    device: str = field(default="cpu", metadata={"help": "torch device for inference, e.g. cuda"})
    max_message_bytes: int = field(
        default=DEFAULT_MAX_MESSAGE_BYTES, metadata={"help": "larger requests get an error reply"}
    )
    api_key: str | None = field(default=None, metadata={"help": "require header 'Authorization: Api-Key <key>'"})
    warmup: bool = field(default=True, metadata={"help": "run one inference before listening"})
    threads: int = field(
        default=0, metadata={"help": "torch CPU threads (0: the server role's budget, 1; see vla/threads.py)"}
    )

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.max_message_bytes < 1024:
            raise ValueError(f"max_message_bytes must be at least 1024, got {self.max_message_bytes}")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key must not be empty (leave it unset to disable authentication)")


class RequestError(ValueError):
    """A request the policy cannot serve; its message goes back to the client as a text frame."""


def _message(err: BaseException) -> str:
    return str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)


def policy_metadata(cfg) -> dict[str, Any]:
    """What a caller needs to feed a policy and run its chunks (the handshake; also used in-process)."""
    return ObservationSpec.from_policy_config(cfg).metadata()


class PolicyServer:
    """One loaded policy, its request validation, and the websocket loop around it."""

    def __init__(self, config: ServeConfig):
        from vla.policies.checkpoint import load_policy

        set_thread_budget("server", config.threads)
        self.config = config
        self.policy = load_policy(config.policy, device=config.device)
        self.policy_config = self.policy.config
        self.metadata = self._build_metadata()
        self._metadata_bytes = pack(self.metadata)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vla-infer")
        self.port: int | None = None
        self.ready = threading.Event()
        if config.warmup:
            t0 = time.perf_counter()
            self.infer(self.example_observation())
            log.info("warm-up inference: %.1f ms", 1000 * (time.perf_counter() - t0))

    # ------------------------------------------------------------------ policy side
    def _build_metadata(self) -> dict[str, Any]:
        return {
            "server": "vla",
            "server_version": server_version(),
            "protocol": PROTOCOL,
            "policy_path": str(self.config.policy),
            "device": self.config.device,
            **policy_metadata(self.policy_config),
            "max_message_bytes": int(self.config.max_message_bytes),
        }

    def example_observation(self) -> dict[str, Any]:
        """An unbatched all-zeros observation of the right shapes (warm-up, smoke tests)."""
        return ObservationSpec.from_policy_config(self.policy_config).example(instruction="warm up")

    def _validated(self, obs: Any) -> tuple[dict[str, Any], np.ndarray | None, bool]:
        """(batched observation, noise or None, whether the request was batched)."""
        cfg = self.policy_config
        try:
            arrays, b, batched = ObservationSpec.from_policy_config(cfg).to_batch(obs)
        except ObservationError as err:
            raise RequestError(str(err)) from None
        noise = obs.get(NOISE)
        if noise is not None:
            noise_shape = (cfg.chunk_size, cfg.action_dim)
            noise = np.asarray(noise)
            if noise.dtype.kind not in "fiu":
                raise RequestError(f"noise must be a float array {noise_shape}, got dtype {noise.dtype}")
            noise = noise.astype(np.float32)
            want = (b, *noise_shape) if batched else noise_shape
            if noise.shape != want:
                raise RequestError(f"noise must have shape {want}, got {noise.shape}")
            if not np.isfinite(noise).all():
                raise RequestError("noise contains NaN or inf")
            noise = noise if batched else noise[None]
        return arrays, noise, batched

    def infer(self, obs: Any) -> dict[str, Any]:
        """One observation (unbatched or batched) -> reply dict with actions in robot units."""
        batch, noise, batched = self._validated(obs)
        t0 = time.perf_counter()
        try:
            actions = self.policy.predict_action_chunk(batch, noise=noise)
        except (KeyError, ValueError) as err:  # the policy's own input checks
            raise RequestError(_message(err)) from None
        actions = actions.detach().float().cpu().numpy().astype(np.float32)
        infer_ms = 1000 * (time.perf_counter() - t0)
        return {"actions": actions if batched else actions[0], "policy_timing": {"infer_ms": infer_ms}}

    def handle(self, message: bytes | str, prev_total_ms: float | None = None) -> bytes | str:
        """One websocket message -> the reply frame: bytes on success, text with the reason on error."""
        t0 = time.perf_counter()
        try:
            reply = self.infer(unpack(message, max_bytes=self.config.max_message_bytes))
        except (WireError, RequestError) as err:
            log.debug("refused request: %s", err)
            return f"error: {err}"
        except Exception as err:  # a bug or a device failure: report it, keep serving
            log.exception("inference failed")
            return f"internal server error: {type(err).__name__}: {err}\n{traceback.format_exc()}"
        reply["server_timing"] = {"infer_ms": reply["policy_timing"]["infer_ms"], "total_ms": 0.0}
        if prev_total_ms is not None:
            reply["server_timing"]["prev_total_ms"] = prev_total_ms
        reply["server_timing"]["total_ms"] = 1000 * (time.perf_counter() - t0)
        return pack(reply)

    # ------------------------------------------------------------------ websocket side
    def _process_request(self, connection, request):
        """HTTP before the websocket handshake: health check, then the API key."""
        if request.path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        if self.config.api_key is not None:
            got = request.headers.get("Authorization", "")
            if not hmac.compare_digest(got.encode(), f"Api-Key {self.config.api_key}".encode()):
                log.warning("refused %s: missing or wrong API key", connection.remote_address)
                return connection.respond(http.HTTPStatus.UNAUTHORIZED, "missing or wrong API key\n")
        return None

    async def _handler(self, websocket) -> None:
        from websockets.exceptions import ConnectionClosed

        peer = websocket.remote_address
        log.debug("connection from %s opened", peer)
        loop = asyncio.get_running_loop()
        prev_total_ms = None
        try:
            await websocket.send(self._metadata_bytes)
            while True:
                message = await websocket.recv()
                t0 = time.perf_counter()
                reply = await loop.run_in_executor(self._executor, self.handle, message, prev_total_ms)
                await websocket.send(reply)
                prev_total_ms = 1000 * (time.perf_counter() - t0)
                log.debug(
                    "request from %s: %s, %.2f ms", peer, "ok" if isinstance(reply, bytes) else "error", prev_total_ms
                )
        except ConnectionClosed:
            log.debug("connection from %s closed", peer)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Serve until ``stop`` is set (or forever)."""
        from websockets.asyncio.server import serve as ws_serve

        stop = stop or asyncio.Event()
        limit = self.config.max_message_bytes
        # Transport cap above our own limit, so a moderately oversized request gets an error reply
        # instead of a closed connection; beyond it websockets closes with 1009 (message too big).
        transport_limit = max(4 * limit, limit + (1 << 20))
        try:
            server = await ws_serve(
                self._handler,
                self.config.host,
                self.config.port,
                compression=None,
                max_size=transport_limit,
                process_request=self._process_request,
            )
        except OSError as err:
            raise RuntimeError(f"cannot listen on {self.config.host}:{self.config.port}: {err}") from None
        try:
            sockets = list(server.sockets)
            self.port = sockets[0].getsockname()[1] if sockets else self.config.port
            self.ready.set()
            host = self.config.host
            log.info(
                "serving %s (%s, %d-step %s, H=%d, A=%d) on ws://%s:%d",
                self.config.policy,
                self.config.device,
                self.policy_config.inference_steps,
                self.policy_config.head,
                self.policy_config.chunk_size,
                self.policy_config.action_dim,
                host,
                self.port,
            )
            print(f"vla serve: listening on ws://{host}:{self.port}", flush=True)
            await stop.wait()
        finally:
            server.close()  # closes open connections with 1001 (going away)
            await server.wait_closed()
        log.info("server stopped")

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


def serve(config: ServeConfig) -> int:
    """Load the checkpoint and serve until Ctrl-C / SIGTERM; returns 0 after a clean stop."""
    try:
        server = PolicyServer(config)
    except KeyboardInterrupt:
        log.info("interrupted while loading %s", config.policy)
        return 130
    if logging.getLogger("websockets").level == logging.NOTSET:
        logging.getLogger("websockets").setLevel(logging.INFO)  # its DEBUG logs every frame

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread / not Unix
                pass
        await server.run(stop)

    try:
        asyncio.run(main())
    except KeyboardInterrupt:  # signal handlers could not be installed
        log.info("interrupted")
    finally:
        server.close()
    return 0
