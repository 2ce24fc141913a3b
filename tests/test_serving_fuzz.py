"""`vla serve` against hostile clients: raw websocket frames, many clients at once, clients
that vanish, a huge message, and the API key's defences.

Every reply must be a binary success with finite actions of the right shape or a short text
frame starting with ``error`` / ``internal server error (ref``, never a traceback or a path
of this machine; the server keeps answering afterwards.
"""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import time
import urllib.request

import msgpack
import numpy as np
import pytest
from conftest import scale
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from test_serving import (  # noqa: F401  (checkpoint is a fixture)
    IMAGE_SHAPE,
    REPO,
    SCENE,
    STATE_DIM,
    A,
    H,
    ServerProcess,
    checkpoint,
    observation,
)

from vla import keys
from vla.serving.auth import API_KEY_ENV, check_exposure, is_loopback_host, resolve_api_key
from vla.serving.client import AuthenticationError, PolicyClient
from vla.serving.wire import pack, unpack

MAX_REPLY_CHARS = 2048
BIG_LIMIT = 16 * 1024 * 1024
LEAK_MARKERS = ("Traceback", 'File "', str(REPO), "site-packages", "/usr/", "/home/", "/tmp/", ".py:")


# --------------------------------------------------------------------------- fixtures and helpers
@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory):  # noqa: F811
    """One server for the module, with room for a 10 MB message."""
    proc = ServerProcess(
        checkpoint, tmp_path_factory.mktemp("fuzz_log") / "server.log", "--max-message-bytes", str(BIG_LIMIT)
    )
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def policy(checkpoint):  # noqa: F811
    from vla.policies.checkpoint import load_policy

    return load_policy(checkpoint)


class RawClient:
    """A plain websocket connection that sends any frame and returns the raw reply."""

    def __init__(self, port: int, **kwargs):
        from websockets.sync.client import connect

        self.ws = connect(f"ws://127.0.0.1:{port}", max_size=None, compression=None, proxy=None, legacy=True, **kwargs)
        self.metadata = unpack(self.ws.recv(timeout=10))

    def ask(self, frame: bytes | str, timeout: float = 30) -> bytes | str:
        self.ws.send(frame)
        return self.ws.recv(timeout=timeout)

    def close(self) -> None:
        self.ws.close()


@pytest.fixture(scope="module")
def raw(server):
    client = RawClient(server.port)
    yield client
    client.close()


def reply_class(name: str) -> None:
    """Count replies per class in hypothesis' statistics (--hypothesis-show-statistics)."""
    if currently_in_test_context():
        event("reply: " + name)


def check_reply(reply: bytes | str, batch: int | None = None) -> np.ndarray | None:
    """A success (the actions) or a well-formed error (None); anything else fails the test."""
    if isinstance(reply, str):
        reply_class("internal error (ref)" if reply.startswith("internal") else "error: " + reply[7:30])
        assert reply.startswith(("error", "internal server error (ref")), reply[:300]
        assert len(reply) <= MAX_REPLY_CHARS, f"{len(reply)}-char reply: {reply[:300]}"
        for marker in LEAK_MARKERS:
            assert marker not in reply, f"reply leaks {marker!r}: {reply[:300]}"
        return None
    actions = unpack(reply)["actions"]
    reply_class("actions")
    assert actions.dtype == np.float32 and np.isfinite(actions).all()
    assert actions.shape in ((H, A), (batch or 1, H, A)), actions.shape
    return actions


def assert_still_serving(port: int) -> None:
    with PolicyClient("127.0.0.1", port) as client:
        assert np.isfinite(client.infer(observation())["actions"]).all()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:
        assert response.status == 200


def noise_for(seed: int) -> np.ndarray:
    return np.random.default_rng(1000 + seed).normal(size=(H, A)).astype(np.float32)


def expected_actions(policy, obs: dict, noise: np.ndarray) -> np.ndarray:
    import torch

    batch = {k: np.asarray(v)[None] for k, v in obs.items()}
    return policy.predict_action_chunk(batch, noise=torch.from_numpy(noise)[None])[0].numpy()


# --------------------------------------------------------------------------- hypothesis strategies
EXTREME = [1e20, -1e20, 3e38, -3e38, 3.4e38, 1e300, -1e300, math.nan, math.inf, -math.inf, 5e-324, 1e-310, -0.0]
extreme_floats = st.one_of(st.sampled_from(EXTREME), st.floats(allow_nan=True, allow_infinity=True))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    extreme_floats,
    st.text(max_size=50),
    st.binary(max_size=50),
)
msgpack_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=6),
        st.dictionaries(st.one_of(st.text(max_size=20), st.binary(max_size=8)), children, max_size=6),
    ),
    max_leaves=30,
)
ragged = st.lists(st.one_of(extreme_floats, st.lists(extreme_floats, max_size=3)), min_size=1, max_size=8)
dtypes = st.sampled_from(["<f4", "<f8", ">f4", "<f2", "<i8", "<u8", "|u1", "|b1", "<U3", "|S2", "<M8[s]"])


@st.composite
def tagged_arrays(draw, shape: tuple[int, ...]):
    """A numpy array on the wire, sometimes of the wrong dtype or shape, filled with extreme values."""
    dtype = np.dtype(draw(dtypes))
    if draw(st.booleans()):
        shape = tuple(draw(st.lists(st.integers(0, 20), max_size=4)))
    n = math.prod(shape)
    if dtype.kind == "f":
        values = draw(st.lists(extreme_floats, min_size=n, max_size=n)) if n <= 64 else [draw(extreme_floats)] * n
        with np.errstate(over="ignore"):
            array = np.array(values, dtype=np.float64).astype(dtype)
    else:
        array = np.zeros(n, dtype)
    return array.reshape(shape)


def field_values(shape: tuple[int, ...]):
    return st.one_of(tagged_arrays(shape), ragged, msgpack_values, st.text(min_size=1000, max_size=3000))


@st.composite
def hostile_observations(draw) -> bytes:
    obs: dict = {keys.OBS_STATE: observation()[keys.OBS_STATE], SCENE: observation()[SCENE]}
    for key, shape in ((keys.OBS_STATE, (STATE_DIM,)), (SCENE, IMAGE_SHAPE), ("noise", (H, A))):
        choice = draw(st.sampled_from(["keep", "hostile", "drop"]))
        if choice == "hostile":
            obs[key] = draw(field_values(shape))
        elif choice == "drop":
            obs.pop(key, None)
    if draw(st.booleans()):
        obs[draw(st.text(min_size=1, max_size=300))] = draw(msgpack_values)
    if draw(st.booleans()):
        obs["task"] = draw(st.one_of(st.text(max_size=5000), msgpack_values))
    return pack(obs)


@st.composite
def extreme_but_valid(draw) -> bytes:
    """Right shapes and dtypes, finite float32 values far outside anything seen in training."""
    big = st.sampled_from([1e20, -1e20, 3e38, -3e38, 3.4e38, 1e-45, 0.0])
    state = np.array(draw(st.lists(big, min_size=STATE_DIM, max_size=STATE_DIM)), np.float32)
    obs = {keys.OBS_STATE: state, SCENE: observation()[SCENE]}
    if draw(st.booleans()):
        obs["noise"] = np.full((H, A), draw(big), np.float32)
    return pack(obs)


@st.composite
def broken_frames(draw) -> bytes | str:
    kind = draw(st.sampled_from(["text", "bytes", "truncated", "structure"]))
    if kind == "text":
        return draw(st.text(max_size=2000))
    if kind == "bytes":
        return draw(st.binary(max_size=2000))
    if kind == "truncated":
        message = pack({**observation(), "noise": noise_for(0)})
        return message[: draw(st.integers(0, len(message) - 1))]
    return msgpack.packb(draw(msgpack_values))


FUZZ = settings(
    max_examples=scale(80, 1000), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


# --------------------------------------------------------------------------- fuzzing
@FUZZ
@given(frame=hostile_observations())
def test_hostile_observations_get_finite_actions_or_a_short_error(raw, frame):
    check_reply(raw.ask(frame))


@FUZZ
@given(frame=extreme_but_valid())
def test_finite_extreme_inputs_never_give_nan_actions(raw, frame):
    check_reply(raw.ask(frame))


@FUZZ
@given(frame=broken_frames())
def test_malformed_frames_get_a_short_error(raw, frame):
    reply = raw.ask(frame)
    if check_reply(reply) is not None:  # only a valid observation may succeed
        assert isinstance(frame, bytes) and isinstance(unpack(frame), dict)


def test_known_hostile_inputs(raw, server):
    """The adversarial findings, each pinned: NaN actions, ragged lists, echoed megabytes."""
    state, image = observation()[keys.OBS_STATE], observation()[SCENE]
    for value in (1e20, 3e38, -3e38):
        reply = raw.ask(pack({keys.OBS_STATE: np.full(STATE_DIM, value, np.float32), SCENE: image}))
        assert (
            reply
            == "error: the policy produced non-finite actions for this input (values far outside the training range?)"
        )
    reply = raw.ask(pack({keys.OBS_STATE: state, SCENE: image, "noise": np.full((H, A), 3e38, np.float32)}))
    assert isinstance(reply, str) and "non-finite actions" in reply
    for field in (keys.OBS_STATE, SCENE, "noise"):
        reply = raw.ask(pack({keys.OBS_STATE: state, SCENE: image, field: [[1.0, 2.0], [3.0]]}))
        assert isinstance(reply, str) and reply.startswith("error: ") and "ragged" in reply, reply
    huge = "x" * 1_000_000
    for frame in (
        pack({keys.OBS_STATE: huge, SCENE: image}),
        pack({keys.OBS_STATE: state, SCENE: image, "noise": huge}),
        msgpack.packb({"x": {b"__ndarray__": True, b"data": b"", b"dtype": huge, b"shape": [0]}}),
        msgpack.packb({"x": {b"__ndarray__": True, b"data": b"", b"dtype": "<f4", b"shape": [-1] * 100_000}}),
    ):
        check_reply(raw.ask(frame))
    assert_still_serving(server.port)


def test_handshake_names_the_checkpoint_without_its_path(raw, checkpoint):  # noqa: F811
    name = raw.metadata["policy_path"]
    assert name == checkpoint.name and not name.startswith("/") and str(checkpoint.parent) not in name


def test_server_answers_after_fuzzing(server):
    assert_still_serving(server.port)
    assert "internal error (ref" not in server.log_path.read_text(), "a hostile request reached a server fault"


# --------------------------------------------------------------------------- many clients
async def _ask_all(port: int, frames: list[bytes], close_after_send: set[int] = frozenset()) -> list:
    """Connect one client per frame, send them all at once; the replies (None for clients that hung up)."""
    from websockets.asyncio.client import connect

    clients = [await connect(f"ws://127.0.0.1:{port}", max_size=None, compression=None, proxy=None) for _ in frames]
    for ws in clients:
        await ws.recv()  # metadata

    async def one(i: int, ws) -> bytes | str | None:
        t0 = time.perf_counter()
        await ws.send(frames[i])
        if i in close_after_send:
            await ws.close()
            return None
        reply = await ws.recv()
        await ws.close()
        return reply, time.perf_counter() - t0

    return await asyncio.gather(*(one(i, ws) for i, ws in enumerate(clients)))


def test_thirty_clients_at_once_each_get_their_own_actions(server, policy):
    observations = [observation(100 + i) for i in range(30)]
    frames = [pack({**obs, "noise": noise_for(i)}) for i, obs in enumerate(observations)]
    results = asyncio.run(_ask_all(server.port, frames))
    batch_sizes = []
    for i, (reply, _) in enumerate(results):
        assert isinstance(reply, bytes), reply
        decoded = unpack(reply)
        np.testing.assert_allclose(
            decoded["actions"], expected_actions(policy, observations[i], noise_for(i)), atol=1e-5, rtol=1e-5
        )
        batch_sizes.append(decoded["server_timing"]["batch_size"])
    assert max(batch_sizes) > 1, "thirty requests at once were never batched"


def test_clients_that_hang_up_do_not_break_others_and_their_work_is_skipped(server, policy):
    slow = pack(observation(7, batch=512))  # a long forward pass that the others queue behind
    observations = [observation(200 + i) for i in range(5)]
    good = [pack({**obs, "noise": noise_for(i)}) for i, obs in enumerate(observations)]
    quitters = [pack(observation(300 + i)) for i in range(15)]
    frames = [slow, *quitters, *good]
    # Whether a quitter's request is still queued when its close is noticed depends on timing
    # (the slow pass may end first), so the scenario runs up to three times; every run must
    # serve the others correctly, and at least one must skip closed connections' work.
    for _attempt in range(3):
        results = asyncio.run(_ask_all(server.port, frames, close_after_send=set(range(1, 1 + len(quitters)))))
        assert check_reply(results[0][0], batch=512).shape == (512, H, A)
        for i, (reply, _) in enumerate(results[1 + len(quitters) :]):
            np.testing.assert_allclose(
                unpack(reply)["actions"], expected_actions(policy, observations[i], noise_for(i)), atol=1e-5, rtol=1e-5
            )
        assert_still_serving(server.port)
        if "request(s) of closed connections" in server.log_path.read_text():
            break
    assert "request(s) of closed connections" in server.log_path.read_text()


def test_a_ten_megabyte_message_delays_only_its_sender(server):
    from websockets.sync.client import connect

    def latency(client: PolicyClient) -> float:
        t0 = time.perf_counter()
        client.infer(observation())
        return time.perf_counter() - t0

    huge = pack({**observation(), "padding": b"\x00" * (10 * 1024 * 1024)})
    with PolicyClient("127.0.0.1", server.port) as small:
        alone = float(np.median([latency(small) for _ in range(10)]))
        with connect(f"ws://127.0.0.1:{server.port}", max_size=None, compression=None, proxy=None) as big:
            big.recv(timeout=10)
            during = []
            for _ in range(5):
                big.send(huge)  # queued in the socket while the small client keeps asking
                during += [latency(small) for _ in range(3)]
                check_reply(big.recv(timeout=30))
    assert max(during) < 1.0 and float(np.median(during)) < 10 * alone + 0.1, (alone, during)


def test_a_full_queue_answers_busy_at_once(checkpoint, tmp_path):  # noqa: F811
    proc = ServerProcess(
        checkpoint,
        tmp_path / "server.log",
        "--queue-size",
        "1",
        "--max-batch-size",
        "1",
        "--no-warmup",
        "--max-message-bytes",
        str(BIG_LIMIT),
    )
    try:
        frames = [pack(observation(1, batch=1024))] + [pack(observation(i)) for i in range(8)]
        results = asyncio.run(_ask_all(proc.port, frames))
        replies = [reply for reply, _ in results]
        busy = [r for r in replies if isinstance(r, str)]
        assert busy, "nine requests through a queue of one: some must be refused"
        for reply in busy:
            assert reply.startswith("error: server busy (queue full, 1 requests waiting); retry"), reply
        assert all(check_reply(r, batch=1024) is not None for r in replies if isinstance(r, bytes))
        assert_still_serving(proc.port)
    finally:
        proc.stop()


# --------------------------------------------------------------------------- authentication
def test_api_key_sources_and_exposure_rules(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("  from-file\n")
    assert resolve_api_key(None, str(key_file), environ={}) == "from-file"
    assert resolve_api_key("flag", None, environ={API_KEY_ENV: "env"}) == "flag"
    assert resolve_api_key(None, None, environ={API_KEY_ENV: " env \n"}) == "env"
    assert resolve_api_key(None, None, environ={}) is None
    with pytest.raises(ValueError, match="no such file"):
        resolve_api_key(None, str(tmp_path / "missing"), environ={})
    (tmp_path / "empty").write_text(" \n")
    with pytest.raises(ValueError, match="is empty"):
        resolve_api_key(None, str(tmp_path / "empty"), environ={})
    with pytest.raises(ValueError, match="not both"):
        resolve_api_key("flag", str(key_file), environ={})
    assert all(is_loopback_host(h) for h in ("127.0.0.1", "localhost", "::1", "127.0.0.2"))
    assert not any(is_loopback_host(h) for h in ("0.0.0.0", "", "::", "192.168.1.5", "gpu-box"))
    check_exposure("127.0.0.1", None, False)
    check_exposure("0.0.0.0", "key", False)
    check_exposure("0.0.0.0", None, True)
    with pytest.raises(ValueError, match="--allow-unauthenticated"):
        check_exposure("0.0.0.0", None, False)


def test_non_loopback_host_without_a_key_refuses_to_start(checkpoint):  # noqa: F811
    env = {k: v for k, v in os.environ.items() if k != API_KEY_ENV}
    cmd = [sys.executable, "-m", "vla.cli.main", "serve", "--policy", str(checkpoint), "--host", "0.0.0.0"]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert (
        "without an API key" in out.stderr
        and "--api-key-file" in out.stderr
        and "--allow-unauthenticated" in out.stderr
    )


def _handshake_status(port: int, headers: list[tuple[str, str]]) -> int:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    try:
        with connect(f"ws://127.0.0.1:{port}", additional_headers=headers, proxy=None, open_timeout=10):
            return 101
    except InvalidStatus as err:
        return err.response.status_code


def test_key_file_duplicate_headers_and_rate_limit(checkpoint, tmp_path):  # noqa: F811
    key_file = tmp_path / "key"
    key_file.write_text("s3cret\n")
    proc = ServerProcess(
        checkpoint,
        tmp_path / "server.log",
        "--api-key-file",
        str(key_file),
        "--auth-max-failures",
        "3",
        "--auth-window-s",
        "3",
        "--no-warmup",
    )
    try:
        right = ("Authorization", "Api-Key s3cret")
        with PolicyClient("127.0.0.1", proc.port, api_key="s3cret") as client:
            assert client.infer(observation())["actions"].shape == (H, A)
        assert _handshake_status(proc.port, [right, right]) == 401  # a repeated header is refused, not a 500
        assert _handshake_status(proc.port, [right, ("Authorization", "Api-Key other")]) == 401
        statuses = [_handshake_status(proc.port, [("Authorization", f"Api-Key guess{i}")]) for i in range(20)]
        assert statuses[0] == 401 and set(statuses[2:]) == {429}, statuses
        assert _handshake_status(proc.port, [right]) == 429, "locked out until the window passes, even with the key"
        with pytest.raises(AuthenticationError, match="HTTP 429"):
            PolicyClient("127.0.0.1", proc.port, api_key="s3cret")
        time.sleep(3.2)
        with PolicyClient("127.0.0.1", proc.port, api_key="s3cret") as client:
            assert client.infer(observation())["actions"].shape == (H, A)
        refusals = [line for line in proc.log_path.read_text().splitlines() if "refused 127.0.0.1" in line]
        assert 1 <= len(refusals) <= 6, refusals  # about one line per second, with counts
    finally:
        proc.stop()


def test_api_key_from_the_environment(checkpoint, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv(API_KEY_ENV, "from-env")
    proc = ServerProcess(checkpoint, tmp_path / "server.log", "--no-warmup")
    try:
        with pytest.raises(AuthenticationError, match="HTTP 401"):
            PolicyClient("127.0.0.1", proc.port)
        with PolicyClient("127.0.0.1", proc.port, api_key="from-env") as client:
            assert client.infer(observation())["actions"].shape == (H, A)
    finally:
        proc.stop()


def test_a_server_fault_is_answered_with_a_log_reference_only(checkpoint, caplog):  # noqa: F811
    """An in-process server on a real socket whose policy raises: the client sees a reference, the log the rest."""
    import re
    import threading

    import torch

    from vla.serving.server import PolicyServer, ServeConfig

    threads = torch.get_num_threads()  # the server sets its role's budget in this process
    server = PolicyServer(ServeConfig(policy=str(checkpoint), port=0, warmup=False))

    def broken(*args, **kwargs):
        raise RuntimeError(f"boom in {REPO}/vla/secret.py")

    server.policy.predict_action_chunk = broken
    running: dict = {}

    async def main() -> None:
        running["loop"], running["stop"] = asyncio.get_running_loop(), asyncio.Event()
        await server.run(running["stop"])

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    try:
        assert server.ready.wait(30)
        client = RawClient(server.port)
        reply = client.ask(pack(observation()))
        client.close()
        check_reply(reply)
        match = re.fullmatch(r"internal server error \(ref ([0-9a-f]{8})\); details are in the server log", reply)
        assert match, reply
        logged = [r for r in caplog.records if match.group(1) in r.getMessage()]
        assert logged and "boom in" in str(logged[0].exc_info[1])
    finally:
        running["loop"].call_soon_threadsafe(running["stop"].set)
        thread.join(10)
        server.close()
        torch.set_num_threads(threads)
