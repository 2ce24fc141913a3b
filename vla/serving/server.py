"""`vla serve`: a policy checkpoint behind a websocket, wire-compatible with openpi-client.

Protocol (openpi's): on connect the server sends one binary msgpack message of metadata;
then every binary request (an observation dict) gets one binary reply
``{"actions": float32 (H, A), "policy_timing": {...}, "server_timing": {...}}``. A request
that cannot be served (malformed msgpack, too large, missing or wrong-shaped feature, NaN,
actions that come out non-finite, a full queue) gets a *text* frame starting with ``error:``
(openpi-client raises on a text frame) and the connection keeps serving. A failure inside
the server is answered ``internal server error (ref <id>)``; the traceback goes only to the
server log. No reply quotes more than ``ECHO_CHARS`` of the input or exceeds
``MAX_ERROR_CHARS``. ``GET /healthz`` answers 200 "OK".

Observation layout (``vla.keys``): ``observation.state`` float (D,), ``observation.images.<cam>``
uint8 (H, W, 3), ``task`` str; or all of them batched with a leading B, then the reply is
(B, H, A). An optional ``noise`` (H, A) / (B, H, A) float array replaces the sampled initial
noise, which makes a reply reproducible (the sampler is otherwise random); ``prompt`` is
accepted as openpi's name for ``task``.

Where the work happens: the event loop only moves frames; a small thread pool decodes and
validates each message (a huge message delays only its sender); one inference worker
(``vla.serving.batching``) runs the requests waiting in a bounded queue as one forward pass.
"""

from __future__ import annotations

import asyncio
import http
import logging
import signal
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla.observation import NOISE, ObservationError, ObservationSpec
from vla.serving.auth import API_KEY_ENV, ApiKeyGate, check_exposure, resolve_api_key
from vla.serving.batching import BatchingWorker, Job, QueueFull
from vla.serving.wire import DEFAULT_MAX_MESSAGE_BYTES, WireError, pack, shorten, unpack
from vla.threads import set_thread_budget

log = logging.getLogger("vla.serving")

PROTOCOL = "openpi-msgpack-numpy"
MAX_ERROR_CHARS = 1024  # the longest error text frame the server sends
NON_FINITE_ACTIONS = "the policy produced non-finite actions for this input (values far outside the training range?)"
NOISE_WITH_VERIFIER = "this server picks each chunk among its verifier's candidates (a fixed noise bank): send no noise"


def server_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vla-stack")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
        return "unknown"


@dataclass
class ServeConfig:
    policy: str = field(default="data/runs/train/checkpoints/last", metadata={"help": "checkpoint directory"})
    host: str = field(
        default="127.0.0.1",
        metadata={
            "help": "interface to listen on (0.0.0.0: every interface; needs an API key or --allow-unauthenticated)"
        },
    )
    port: int = field(default=8000, metadata={"help": "TCP port (0: any free port, printed at start)"})
    device: str = field(default="cpu", metadata={"help": "torch device for inference, e.g. cuda"})
    max_message_bytes: int = field(
        default=DEFAULT_MAX_MESSAGE_BYTES, metadata={"help": "larger requests get an error reply"}
    )
    api_key: str | None = field(
        default=None,
        metadata={
            "help": "require header 'Authorization: Api-Key <key>'; visible in ps: prefer --api-key-file or "
            f"the environment variable {API_KEY_ENV}"
        },
    )
    api_key_file: str | None = field(
        default=None, metadata={"help": "read the API key from this file (its content, stripped)"}
    )
    allow_unauthenticated: bool = field(
        default=False, metadata={"help": "allow a non-loopback --host without an API key (trusted networks only)"}
    )
    auth_max_failures: int = field(
        default=5, metadata={"help": "wrong API keys from one address within --auth-window-s before it gets HTTP 429"}
    )
    auth_window_s: float = field(
        default=60.0, metadata={"help": "seconds an address is counted (and refused, once over the limit)"}
    )
    verifier: str | None = field(
        default=None,
        metadata={
            "help": "re-rank sampled chunks with this verifier (taco; fit it first: vla verifier fit); the reply "
            "says which candidate won, its pseudo-count and whether the state looked out of distribution"
        },
    )
    num_samples: int = field(default=16, metadata={"help": "candidate chunks per observation with --verifier"})
    warmup: bool = field(default=True, metadata={"help": "run one inference before listening"})
    threads: int = field(
        default=0, metadata={"help": "torch CPU threads (0: the server role's budget, 1; see vla/threads.py)"}
    )
    max_batch_size: int = field(
        default=64, metadata={"help": "observations run in one forward pass (1: one request at a time)"}
    )
    batch_window_ms: float = field(
        default=15.0,
        metadata={
            "help": "under load, how long the inference worker waits for the clients of its previous pass to send "
            "again, so they share one forward pass (a lone client never waits)"
        },
    )
    queue_size: int = field(
        default=64, metadata={"help": "requests that may wait for inference; more get an 'error: server busy' reply"}
    )
    decode_threads: int = field(
        default=2, metadata={"help": "threads that decode and check requests, off the event loop and the worker"}
    )

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.max_message_bytes < 1024:
            raise ValueError(f"max_message_bytes must be at least 1024, got {self.max_message_bytes}")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key must not be empty (leave it unset to disable authentication)")
        for name in ("max_batch_size", "queue_size", "decode_threads", "auth_max_failures"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.batch_window_ms < 0 or self.auth_window_s <= 0:
            raise ValueError("batch_window_ms must be >= 0 and auth_window_s > 0")

    def resolved_api_key(self) -> str | None:
        """The key to require: --api-key, else --api-key-file, else $VLA_SERVE_API_KEY."""
        return resolve_api_key(self.api_key, self.api_key_file)


class RequestError(ValueError):
    """A request the policy cannot serve; its message goes back to the client as a text frame."""


def _message(err: BaseException) -> str:
    return str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)


def error_text(err: BaseException) -> str:
    """The text frame for a refused request, bounded in length."""
    return shorten(f"error: {_message(err)}", MAX_ERROR_CHARS)


def internal_error_text(err: BaseException) -> str:
    """The text frame for a server fault: a reference to the log entry, no traceback or paths."""
    ref = uuid.uuid4().hex[:8]
    log.error("internal error (ref %s) while serving a request", ref, exc_info=err)
    return f"internal server error (ref {ref}); details are in the server log"


def public_policy_name(path: str | Path) -> str:
    """The checkpoint named without revealing the server's file system: ``<run>/checkpoints/<step>``
    for a run's checkpoint, else the directory's own name."""
    parts = Path(path).parts
    if len(parts) >= 3 and parts[-2] == "checkpoints":
        return "/".join(parts[-3:])
    return parts[-1] if parts else ""


def policy_metadata(cfg) -> dict[str, Any]:
    """What a caller needs to feed a policy and run its chunks (the handshake; also used in-process)."""
    return ObservationSpec.from_policy_config(cfg).metadata()


@dataclass
class Request:
    """A decoded, checked request: batched arrays, its noise (or None: sampled) and its shape."""

    arrays: dict[str, Any]  # every feature with a leading batch dimension
    noise: np.ndarray | None  # (rows, H, A) float32
    rows: int
    batched: bool

    @property
    def group(self) -> tuple:
        """Requests with the same features share a forward pass."""
        return tuple(sorted(self.arrays))


@dataclass
class Inference:
    """One request's share of a forward pass."""

    actions: np.ndarray  # (rows, H, A)
    infer_ms: float
    batch_rows: int  # observations in the forward pass that computed it
    started_at: float  # perf_counter when the pass began
    verifier: dict[str, list] | None = None  # per row: winning candidate, its pseudo-count, OOD flag


class PolicyServer:
    """One loaded policy, its request checks, the batching worker and the websocket loop around them."""

    def __init__(self, config: ServeConfig):
        from vla.policies.checkpoint import load_policy

        self.api_key = config.resolved_api_key()
        check_exposure(config.host, self.api_key, config.allow_unauthenticated)
        set_thread_budget("server", config.threads)
        self.config = config
        self.policy = load_policy(config.policy, device=config.device)
        self.policy_config = self.policy.config
        self.taco = None
        if config.verifier is not None:
            from vla.verifiers import VERIFIERS

            self.taco = VERIFIERS.get(config.verifier)(Path(config.policy), self.policy, config.num_samples)
        self.spec = ObservationSpec.from_policy_config(self.policy_config)
        self.metadata = self._build_metadata()
        self._metadata_bytes = pack(self.metadata)
        self._gate = ApiKeyGate(self.api_key, config.auth_max_failures, config.auth_window_s) if self.api_key else None
        self.connections = 0  # open websocket connections (the worker waits for at most this many)
        self._decoders = ThreadPoolExecutor(max_workers=config.decode_threads, thread_name_prefix="vla-decode")
        self.worker = BatchingWorker(
            self._run_group,
            max_batch_size=config.max_batch_size,
            window_s=config.batch_window_ms / 1000,
            capacity=config.queue_size,
            senders=lambda: max(1, self.connections),
        )
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
            "policy_path": public_policy_name(self.config.policy),
            "device": self.config.device,
            **policy_metadata(self.policy_config),
            "max_message_bytes": int(self.config.max_message_bytes),
            "max_batch_size": int(self.config.max_batch_size),
        }

    def example_observation(self) -> dict[str, Any]:
        """An unbatched all-zeros observation of the right shapes (warm-up, smoke tests)."""
        return self.spec.example(instruction="warm up")

    def request_from(self, obs: Any) -> Request:
        """Check a decoded observation; anything the policy cannot take -> RequestError."""
        try:
            arrays, rows, batched = self.spec.to_batch(obs)
        except ObservationError as err:
            raise RequestError(str(err)) from None
        noise = obs.get(NOISE)
        if noise is not None:
            noise = self._checked_noise(noise, rows, batched)
        return Request(arrays, noise, rows, batched)

    def _checked_noise(self, noise: Any, rows: int, batched: bool) -> np.ndarray:
        cfg = self.policy_config
        unbatched_shape = (cfg.chunk_size, cfg.action_dim)
        want = (rows, *unbatched_shape) if batched else unbatched_shape
        try:
            array = np.asarray(noise)
        except (ValueError, TypeError, OverflowError, RecursionError, MemoryError):
            raise RequestError(f"noise must be a float array of shape {want}, got a ragged or mixed list") from None
        if array.dtype.kind not in "fiu":
            raise RequestError(f"noise must be a float array {want}, got dtype {array.dtype}")
        if array.shape != want:
            raise RequestError(f"noise must have shape {want}, got {array.shape}")
        with np.errstate(over="ignore", invalid="ignore"):
            array = array.astype(np.float32)
        if not np.isfinite(array).all():
            raise RequestError("noise contains NaN or inf (or values beyond the float32 range)")
        return array if batched else array[None]

    def decode(self, message: bytes | str) -> Job:
        """One websocket message -> a queued-ready job (runs in the decode pool)."""
        request = self.request_from(unpack(message, max_bytes=self.config.max_message_bytes))
        return Job(request, rows=request.rows, group=request.group)

    def _run_group(self, jobs: Sequence[Job]) -> list[Inference | RequestError]:
        """One forward pass over compatible requests; each gets its rows back (with the
        verifier's verdict per row when the server has one), or an error if its actions are not
        finite (the inference worker calls this)."""
        requests: list[Request] = [job.request for job in jobs]
        batch = {key: _concatenate([r.arrays[key] for r in requests]) for key in requests[0].arrays}
        if self.taco is not None and any(r.noise is not None for r in requests):
            return [RequestError(NOISE_WITH_VERIFIER) for _ in requests]
        cfg = self.policy_config
        t0 = time.perf_counter()
        try:  # the policy's own input checks
            if self.taco is None:
                noise = torch.cat(
                    [
                        torch.from_numpy(r.noise)
                        if r.noise is not None
                        else torch.randn(r.rows, cfg.chunk_size, cfg.action_dim)
                        for r in requests
                    ]
                )
                actions, verdicts = self.policy.predict_action_chunk(batch, noise=noise), None
            else:  # each row's chunk chosen among the verifier's candidates (its fixed noise bank)
                actions, verdicts = self.taco.predict_action_chunk(batch), self.taco.last_verdict
        except (KeyError, ValueError) as err:
            raise RequestError(_message(err)) from None
        actions_np = actions.detach().float().cpu().numpy().astype(np.float32)
        infer_ms = 1000 * (time.perf_counter() - t0)
        results: list[Inference | RequestError] = []
        offset = 0
        for r in requests:
            rows = slice(offset, offset + r.rows)
            offset += r.rows
            if not np.isfinite(actions_np[rows]).all():
                results.append(RequestError(NON_FINITE_ACTIONS))
                continue
            verdict = None if verdicts is None else {key: values[rows] for key, values in verdicts.items()}
            results.append(Inference(actions_np[rows], infer_ms, len(actions_np), t0, verdict))
        return results

    def infer(self, obs: Any) -> dict[str, Any]:
        """One observation (unbatched or batched) -> reply dict with actions in robot units, in
        this thread (warm-up, in-process use); raises RequestError for a bad request."""
        request = self.request_from(obs)
        result = self._run_group([Job(request, rows=request.rows, group=request.group)])[0]
        if isinstance(result, RequestError):
            raise result
        return _reply(request, result)

    # ------------------------------------------------------------------ websocket side
    def _process_request(self, connection, request):
        """HTTP before the websocket handshake: health check, then the API key."""
        if request.path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        if self._gate is None:
            return None
        address = str((connection.remote_address or ("unknown",))[0])
        status = self._gate.check(address, request.headers.get_all("Authorization"))
        if status == http.HTTPStatus.UNAUTHORIZED:
            return connection.respond(status, "missing or wrong API key\n")
        if status == http.HTTPStatus.TOO_MANY_REQUESTS:
            retry_s = self._gate.retry_after_s(address)
            response = connection.respond(status, f"too many wrong API keys; retry in {retry_s} s\n")
            response.headers["Retry-After"] = str(retry_s)
            return response
        return None

    async def _reply_to(self, message: bytes | str, closed: asyncio.Future, prev_total_ms: float | None) -> Any:
        """The reply frame for one message, or None if the connection closed while it waited."""
        t0 = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            job = await loop.run_in_executor(self._decoders, self.decode, message)
            if closed.done():
                return None
            result = await _result_unless_closed(self.worker.submit(job), closed)
            if result is None:
                return None
        except (WireError, RequestError) as err:
            log.debug("refused request: %s", shorten(str(err)))
            return error_text(err)
        except QueueFull as err:
            log.debug("refused request: %s", err)
            return f"error: server busy ({err}); retry"
        except Exception as err:  # a bug or a device failure: report a reference, keep serving
            return internal_error_text(err)
        reply = _reply(job.request, result)
        reply["server_timing"]["queue_ms"] = 1000 * (result.started_at - job.queued_at)
        if prev_total_ms is not None:
            reply["server_timing"]["prev_total_ms"] = prev_total_ms
        reply["server_timing"]["total_ms"] = 1000 * (time.perf_counter() - t0)
        return pack(reply)

    async def _handler(self, websocket) -> None:
        from websockets.exceptions import ConnectionClosed

        peer = websocket.remote_address
        log.debug("connection from %s opened", peer)
        self.connections += 1
        closed = asyncio.ensure_future(websocket.wait_closed())
        prev_total_ms = None
        try:
            await websocket.send(self._metadata_bytes)
            while True:
                message = await websocket.recv()
                t0 = time.perf_counter()
                reply = await self._reply_to(message, closed, prev_total_ms)
                if reply is None:
                    break
                await websocket.send(reply)
                prev_total_ms = 1000 * (time.perf_counter() - t0)
                log.debug(
                    "request from %s: %s, %.2f ms", peer, "ok" if isinstance(reply, bytes) else "error", prev_total_ms
                )
        except ConnectionClosed:
            pass
        finally:
            self.connections -= 1
            closed.cancel()
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
                "serving %s (%s, %d-step %s, H=%d, A=%d) on ws://%s:%d, batches of up to %d, %s",
                self.config.policy,
                self.config.device,
                self.policy_config.inference_steps,
                self.policy_config.head,
                self.policy_config.chunk_size,
                self.policy_config.action_dim,
                host,
                self.port,
                self.config.max_batch_size,
                "API key required" if self.api_key else "no API key",
            )
            print(f"vla serve: listening on ws://{host}:{self.port}", flush=True)
            await stop.wait()
        finally:
            server.close()  # closes open connections with 1001 (going away)
            await server.wait_closed()
        log.info("server stopped")

    def close(self) -> None:
        self.worker.close()
        self._decoders.shutdown(wait=True, cancel_futures=True)


def _concatenate(parts: list[Any]) -> Any:
    """Batched feature values of several requests as one batch (arrays, or instruction lists)."""
    if isinstance(parts[0], list):
        return [item for part in parts for item in part]
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _reply(request: Request, result: Inference) -> dict[str, Any]:
    actions = result.actions if request.batched else result.actions[0]
    reply = {
        "actions": actions,
        "policy_timing": {"infer_ms": result.infer_ms},
        "server_timing": {"infer_ms": result.infer_ms, "batch_size": result.batch_rows, "total_ms": 0.0},
    }
    if result.verifier is not None:
        reply["verifier"] = (
            result.verifier if request.batched else {key: values[0] for key, values in result.verifier.items()}
        )
    return reply


async def _result_unless_closed(future: Future, closed: asyncio.Future) -> Inference | None:
    """The job's result, or None (and the job cancelled, so the worker skips it) if the
    connection closes first."""
    waiter = asyncio.wrap_future(future)
    await asyncio.wait({waiter, closed}, return_when=asyncio.FIRST_COMPLETED)
    if waiter.done():
        return waiter.result()
    future.cancel()
    waiter.cancel()
    return None


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
