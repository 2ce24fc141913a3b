"""`vla serve`: openpi wire format, a real server process, our client and the real openpi-client.

The policy samples its initial noise, so exact comparisons send the optional ``noise`` array
(the server accepts it, like openpi's ``infer(obs, noise=...)``); requests without it are
checked for shape, finiteness and for actually being sampled (two replies differ).
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from vla import keys
from vla.serving.client import AuthenticationError, PolicyClient, PolicyServerError
from vla.serving.server import ServeConfig
from vla.serving.wire import WireError, pack, unpack

REPO = Path(__file__).resolve().parents[1]
SCENE = keys.image_key("scene")
STATE_DIM, IMAGE_SHAPE, H, A = 5, (16, 16, 3), 4, 3
LIMIT = 64 * 1024  # the test servers' max_message_bytes
OPENPI_VENV_PYTHON = Path(
    os.environ.get("VLA_OPENPI_CLIENT_PYTHON", Path.home() / ".cache/vla-stack/openpi-client-venv/bin/python")
)


# --------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A random-weight policy of this module's sizes (the one `vla bench serve` times)."""
    from vla.bench.serve_load import tiny_checkpoint

    return tiny_checkpoint(tmp_path_factory.mktemp("serve"))


class ServerProcess:
    """`python -m vla.cli.main serve` on a free port; the port is read from its first stdout line."""

    def __init__(self, checkpoint: Path, log_path: Path, *extra: str):
        self.log_path = log_path
        self.log = log_path.open("w")
        cmd = [
            sys.executable,
            "-m",
            "vla.cli.main",
            "-v",
            "serve",
            "--policy",
            str(checkpoint),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--max-message-bytes",
            str(LIMIT),
            *extra,
        ]
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=self.log, text=True)
        selector = selectors.DefaultSelector()
        selector.register(self.proc.stdout, selectors.EVENT_READ)
        deadline, line = time.monotonic() + 90, ""
        while "listening on" not in line:
            if (
                self.proc.poll() is not None
                or time.monotonic() > deadline
                or not selector.select(deadline - time.monotonic())
            ):
                self.stop()
                raise RuntimeError(f"server did not start; log:\n{log_path.read_text()}")
            line = self.proc.stdout.readline()
        self.port = int(line.rsplit(":", 1)[1])

    def interrupt(self, timeout: float = 20) -> int:
        """Ctrl-C, as a user would; the exit code."""
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        finally:
            self.log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory):
    proc = ServerProcess(checkpoint, tmp_path_factory.mktemp("serve_log") / "server.log")
    yield proc
    proc.stop()


def observation(seed: int = 0, batch: int | None = None) -> dict:
    rng = np.random.default_rng(seed)
    lead = () if batch is None else (batch,)
    return {
        keys.OBS_STATE: rng.normal(size=(*lead, STATE_DIM)).astype(np.float32),
        SCENE: rng.integers(0, 256, size=(*lead, *IMAGE_SHAPE), dtype=np.uint8),
    }


def in_process_actions(checkpoint: Path, obs: dict, noise: np.ndarray) -> np.ndarray:
    """The same checkpoint's chunk computed here, for unbatched obs and (H, A) noise."""
    from vla.policies.checkpoint import load_policy

    policy = load_policy(checkpoint)
    batch = {k: np.asarray(v)[None] for k, v in obs.items()}
    return policy.predict_action_chunk(batch, noise=torch.from_numpy(noise)[None])[0].numpy()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def openpi_python() -> Path:
    if not OPENPI_VENV_PYTHON.exists():
        pytest.skip(
            f"openpi-client venv not found at {OPENPI_VENV_PYTHON} (set VLA_OPENPI_CLIENT_PYTHON or create it: "
            "python3.12 -m venv ~/.cache/vla-stack/openpi-client-venv && "
            "~/.cache/vla-stack/openpi-client-venv/bin/pip install openpi-client==0.1.2)"
        )
    return OPENPI_VENV_PYTHON


def run_openpi(script: str, stdin: str = "") -> dict:
    """Run a script in the openpi-client venv (numpy<2); it prints one JSON object."""
    out = subprocess.run(
        [str(openpi_python()), "-c", textwrap.dedent(script)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- wire format
def test_wire_round_trips_arrays_scalars_and_nesting():
    arrays = {
        "f32": np.arange(12, dtype=np.float32).reshape(3, 4),
        "u8": np.arange(24, dtype=np.uint8).reshape(2, 4, 3),
        "f64_big_endian": np.array([1.5, -2.0], dtype=">f8"),
        "bool": np.array([True, False]),
        "strided": np.arange(20, dtype=np.int64).reshape(4, 5)[:, ::2],
        "fortran": np.asfortranarray(np.eye(3)),
        "empty": np.zeros((0, 7), np.float32),
        "str": np.array(["ab", "cde"]),
    }
    msg = {
        **arrays,
        "nested": {"list": [np.float32(1.25), np.int64(-3), np.bool_(True)], "task": "lift", "n": 3},
        "bytes": b"\x00\x01",
    }
    back = unpack(pack(msg))
    for key, value in arrays.items():
        assert back[key].dtype == value.dtype and back[key].shape == value.shape, key
        np.testing.assert_array_equal(back[key], value)
        assert back[key].flags.writeable, "decoded arrays are writable copies"
    scalars = back["nested"]["list"]
    assert [type(s) for s in scalars] == [np.float32, np.int64, np.bool_] and scalars[0] == 1.25
    assert back["nested"]["task"] == "lift" and back["bytes"] == b"\x00\x01"
    # a torch tensor is sent as its numpy array
    np.testing.assert_array_equal(unpack(pack({"t": torch.arange(3)}))["t"], np.arange(3))


@pytest.mark.parametrize(
    "bad",
    [np.array([object()]), np.zeros(2, dtype="f4,i4"), np.zeros(2, np.complex64), np.complex128(1j)],
    ids=["object", "structured", "complex", "complex_scalar"],
)
def test_wire_refuses_object_void_and_complex_dtypes(bad):
    with pytest.raises(ValueError, match="unsupported dtype"):
        pack({"x": bad})


def _tagged(**fields) -> bytes:
    import msgpack

    base = {b"__ndarray__": True, b"data": np.zeros(4, np.float32).tobytes(), b"dtype": "<f4", b"shape": [4]}
    base.update({k.encode(): v for k, v in fields.items()})
    return msgpack.packb({"x": base})


@pytest.mark.parametrize(
    "data,match",
    [
        (b"\xc1", "malformed"),  # 0xc1 is never used in msgpack
        (pack({"x": np.zeros(8, np.float32)})[:-5], "malformed"),  # truncated
        (pack({"a": 1}) + b"\x00", "malformed"),  # trailing bytes
        (_tagged(shape=[5]), "needs 20 bytes, got 16"),
        (_tagged(shape=[-4]), "non-negative"),
        (_tagged(dtype="|O"), "unsupported dtype"),
        (_tagged(dtype="no-such-dtype"), "unknown dtype"),
        (_tagged(data="text"), "must be bytes"),
        ("a text frame", "got text"),
    ],
    ids=[
        "reserved_byte",
        "truncated",
        "trailing",
        "size_mismatch",
        "negative_shape",
        "object",
        "unknown_dtype",
        "str_data",
        "text",
    ],
)
def test_wire_unpack_refuses_malformed_input_clearly(data, match):
    with pytest.raises(WireError, match=match):
        unpack(data)


def test_wire_unpack_enforces_the_size_limit():
    message = pack({"x": np.zeros(300, np.float32)})
    assert unpack(message, max_bytes=len(message))["x"].shape == (300,)
    with pytest.raises(WireError, match=f"message of {len(message)} bytes exceeds the limit of 1000 bytes"):
        unpack(message, max_bytes=1000)


def test_wire_is_byte_identical_to_openpi_msgpack_numpy():
    """openpi's packb and our pack give the same bytes, and each side decodes the other."""
    sample = (
        "{'state': np.arange(5, dtype=np.float32), 'img': np.arange(48, dtype=np.uint8).reshape(4, 4, 3), "
        "'be': np.array([1.5], dtype='>f8'), 's': np.float32(2.5), 'i': np.int64(7), 'task': 'lift', "
        "'nested': [np.bool_(True), {'z': np.zeros((0, 2))}]}"
    )
    ours = pack(eval(sample, {"np": np}))
    result = run_openpi(
        f"""
        import json, sys
        import numpy as np
        from openpi_client import msgpack_numpy
        theirs = msgpack_numpy.packb({sample})
        decoded = msgpack_numpy.unpackb(bytes.fromhex(sys.stdin.read().strip()))
        print(json.dumps({{"hex": theirs.hex(), "img": decoded["img"].tolist(), "img_dtype": str(decoded["img"].dtype),
                          "s": [float(decoded["s"]), type(decoded["s"]).__name__], "be": str(decoded["be"].dtype),
                          "numpy": np.__version__}}))
    """,
        stdin=ours.hex(),
    )
    assert result["numpy"].startswith("1."), "the openpi venv runs numpy<2, the other side of the wire"
    assert bytes.fromhex(result["hex"]) == ours
    assert result["img"] == np.arange(48).reshape(4, 4, 3).tolist() and result["img_dtype"] == "uint8"
    assert result["s"] == [2.5, "float32"] and result["be"] == ">f8"
    theirs = unpack(bytes.fromhex(result["hex"]))
    np.testing.assert_array_equal(theirs["state"], np.arange(5, dtype=np.float32))
    assert theirs["nested"][1]["z"].shape == (0, 2)


# --------------------------------------------------------------------------- config and CLI
def test_serve_verb_builds_its_config_from_flags(tmp_path):
    from vla.cli.args import config_from_args
    from vla.cli.main import build_parser, main

    args = build_parser().parse_args(
        ["serve", "--policy", "ck", "--port", "9000", "--api-key", "k", "--no-warmup", "--device", "cuda"]
    )
    config = config_from_args(ServeConfig, args)
    assert (config.policy, config.port, config.api_key, config.warmup, config.device) == (
        "ck",
        9000,
        "k",
        False,
        "cuda",
    )
    assert config.max_message_bytes == 16 * 1024 * 1024 and config.host == "127.0.0.1"  # loopback unless asked
    assert (config.max_batch_size, config.queue_size) == (64, 64)
    with pytest.raises(ValueError, match="port must be in"):
        ServeConfig(port=70000)
    with pytest.raises(ValueError, match="api_key must not be empty"):
        ServeConfig(api_key=" ")
    assert main(["serve", "--policy", str(tmp_path / "missing")]) == 2  # not a checkpoint: clear error, exit 2


# --------------------------------------------------------------------------- a real server process
def test_metadata_handshake_describes_the_policy(server):
    with PolicyClient("127.0.0.1", server.port) as client, PolicyClient("127.0.0.1", server.port) as other:
        meta = client.metadata
        assert meta["server"] == "vla" and meta["protocol"] == "openpi-msgpack-numpy" and meta["server_version"]
        assert (meta["action_dim"], meta["chunk_size"], meta["n_action_steps"]) == (A, H, 2)
        assert (meta["head"], meta["inference_steps"]) == ("flow_matching", 10)
        assert meta["features"] == {
            keys.OBS_STATE: {"shape": [STATE_DIM], "dtype": "float32"},
            SCENE: {"shape": list(IMAGE_SHAPE), "dtype": "uint8"},
        }
        assert meta["max_message_bytes"] == LIMIT and other.metadata == meta
        # two clients at once are both served
        assert client.infer(observation())["actions"].shape == other.infer(observation())["actions"].shape == (H, A)


def test_infer_equals_the_in_process_policy(server, checkpoint):
    obs, noise = observation(1), np.random.default_rng(2).normal(size=(H, A)).astype(np.float32)
    expected = in_process_actions(checkpoint, obs, noise)
    with PolicyClient("127.0.0.1", server.port) as client:
        reply = client.infer({**obs, "noise": noise})
        assert reply["actions"].dtype == np.float32 and reply["actions"].shape == (H, A)
        np.testing.assert_allclose(reply["actions"], expected, atol=1e-5, rtol=1e-5)
        timing = reply["server_timing"]
        assert 0 < timing["infer_ms"] <= timing["total_ms"] and reply["policy_timing"]["infer_ms"] == timing["infer_ms"]
        # without noise the chunk is sampled: finite, right shape, different each call
        a, b = client.infer(obs)["actions"], client.infer(obs)["actions"]
        assert a.shape == b.shape == (H, A) and np.isfinite(a).all() and not np.allclose(a, b)
        assert "prev_total_ms" in client.infer(obs)["server_timing"]
        # a batched request gets a batched reply, row i as if sent alone with noise[i]
        batch, noises = observation(3, batch=2), np.random.default_rng(4).normal(size=(2, H, A)).astype(np.float32)
        chunks = client.infer({**batch, "noise": noises})["actions"]
        assert chunks.shape == (2, H, A)
        single = client.infer({keys.OBS_STATE: batch[keys.OBS_STATE][1], SCENE: batch[SCENE][1], "noise": noises[1]})
        np.testing.assert_allclose(chunks[1], single["actions"], atol=1e-5, rtol=1e-5)


def test_bad_requests_get_error_replies_and_the_connection_keeps_serving(server):
    from websockets.sync.client import connect

    good = pack(observation())
    state, image = observation()[keys.OBS_STATE], observation()[SCENE]
    bad_requests = {
        "malformed msgpack": (b"\xc1\x00garbage", "malformed msgpack"),
        "text frame": ("hello", "got text"),
        "oversized": (pack({**observation(), "padding": b"x" * LIMIT}), f"exceeds the limit of {LIMIT} bytes"),
        "wrong-shaped image": (
            pack({keys.OBS_STATE: state, SCENE: np.zeros((8, 16, 3), np.uint8)}),
            "observation.images.scene must have shape (16, 16, 3)",
        ),
        "float image": (pack({keys.OBS_STATE: state, SCENE: image.astype(np.float32)}), "must be uint8"),
        "NaN state": (
            pack({keys.OBS_STATE: np.full(STATE_DIM, np.nan, np.float32), SCENE: image}),
            "observation.state contains NaN",
        ),
        "missing feature": (pack({keys.OBS_STATE: state}), "observation lacks ['observation.images.scene']"),
        "not a map": (pack([1, 2, 3]), "must be a map"),
        "mixed batching": (pack({keys.OBS_STATE: state[None].repeat(2, 0), SCENE: image}), "mix batched"),
        "wrong noise": (pack({**observation(), "noise": np.zeros((H + 1, A), np.float32)}), "noise must have shape"),
    }
    with connect(f"ws://127.0.0.1:{server.port}", max_size=None, compression=None) as ws:
        unpack(ws.recv(timeout=10))  # metadata
        for name, (request, match) in bad_requests.items():
            ws.send(request)
            reply = ws.recv(timeout=30)
            assert isinstance(reply, str), f"{name}: expected a text error frame"
            assert match in reply, f"{name}: {reply!r}"
            ws.send(good)
            reply = ws.recv(timeout=30)
            assert isinstance(reply, bytes), f"after {name}: {reply!r}"
            assert unpack(reply)["actions"].shape == (H, A)
    with PolicyClient("127.0.0.1", server.port) as client:  # our client raises the server's text
        with pytest.raises(PolicyServerError, match="contains NaN"):
            client.infer({keys.OBS_STATE: np.full(STATE_DIM, np.inf, np.float32), SCENE: image})
        assert client.infer(observation())["actions"].shape == (H, A)


def test_healthz_answers_200(server):
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=10) as response:
        assert response.status == 200 and response.read().strip() == b"OK"


def test_real_openpi_client_gets_actions(server, checkpoint):
    obs, noise = observation(5), np.random.default_rng(6).normal(size=(H, A)).astype(np.float32)
    expected = in_process_actions(checkpoint, obs, noise)
    result = run_openpi(f"""
        import json
        import numpy as np
        from openpi_client import websocket_client_policy
        policy = websocket_client_policy.WebsocketClientPolicy(host="127.0.0.1", port={server.port})
        meta = policy.get_server_metadata()
        obs = {{"observation.state": np.array({obs[keys.OBS_STATE].tolist()}, dtype=np.float32),
               "observation.images.scene": np.array({obs[SCENE].tolist()}, dtype=np.uint8),
               "noise": np.array({noise.tolist()}, dtype=np.float32)}}
        out = policy.infer(obs)
        try:
            policy.infer({{**obs, "observation.state": np.full(5, np.nan, np.float32)}})
            error = None
        except RuntimeError as err:
            error = str(err)
        again = policy.infer(obs)
        print(json.dumps({{"meta": {{k: meta[k] for k in ("action_dim", "chunk_size")}}, "actions": out["actions"].tolist(),
                          "dtype": str(out["actions"].dtype), "timing": sorted(out["server_timing"]), "error": error,
                          "again": again["actions"].tolist()}}))
    """)
    assert result["meta"] == {"action_dim": A, "chunk_size": H} and result["dtype"] == "float32"
    np.testing.assert_allclose(np.array(result["actions"]), expected, atol=1e-5, rtol=1e-5)
    assert {"infer_ms", "total_ms"} <= set(result["timing"])
    assert result["error"] and "contains NaN" in result["error"], "openpi-client raises on our text error frame"
    np.testing.assert_allclose(np.array(result["again"]), expected, atol=1e-5, rtol=1e-5)


def test_api_key_is_enforced_and_ctrl_c_exits_cleanly(checkpoint, tmp_path):
    proc = ServerProcess(checkpoint, tmp_path / "server.log", "--api-key", "s3cret", "--no-warmup")
    try:
        for key in (None, "wrong"):
            with pytest.raises(AuthenticationError, match=f"127.0.0.1:{proc.port} refused the API key"):
                PolicyClient("127.0.0.1", proc.port, api_key=key)
        with PolicyClient("127.0.0.1", proc.port, api_key="s3cret") as client:
            assert client.infer(observation())["actions"].shape == (H, A)
        with urllib.request.urlopen(f"http://127.0.0.1:{proc.port}/healthz", timeout=10) as response:
            assert response.status == 200  # the health check needs no key
        if OPENPI_VENV_PYTHON.exists():  # openpi-client's Api-Key header is the one we check
            result = run_openpi(f"""
                import json
                import numpy as np
                from openpi_client import websocket_client_policy
                policy = websocket_client_policy.WebsocketClientPolicy("127.0.0.1", {proc.port}, api_key="s3cret")
                out = policy.infer({{"observation.state": np.zeros(5, np.float32),
                                    "observation.images.scene": np.zeros((16, 16, 3), np.uint8)}})
                print(json.dumps({{"shape": list(out["actions"].shape)}}))
            """)
            assert result["shape"] == [H, A]
        assert proc.interrupt() == 0
        assert "server stopped" in proc.log_path.read_text()
    finally:
        proc.stop()


def test_unreachable_server_raises_connection_error_quickly():
    port = free_port()
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=f"no policy server at 127.0.0.1:{port}"):
        PolicyClient("127.0.0.1", port, timeout_s=5)
    assert time.monotonic() - start < 2


def test_server_with_taco_replies_the_winning_candidate_and_refuses_client_noise(checkpoint, tmp_path):
    from vla.policies.checkpoint import load_policy
    from vla.verifiers.cfn import CFNConfig, CoinFlippingNetwork
    from vla.verifiers.taco import VERIFIER_DIR, TacoPolicy, TacoVerifier, load_taco, policy_fingerprint

    policy = load_policy(checkpoint)
    torch.manual_seed(0)
    network = CoinFlippingNetwork(CFNConfig(feature_dim=policy.config.d_model, hidden_dim=16))
    TacoVerifier(network, policy_fingerprint(checkpoint), {"threshold": 1.0}).save(checkpoint / VERIFIER_DIR)
    proc = ServerProcess(checkpoint, tmp_path / "server.log", "--verifier", "taco", "--num-samples", "4")
    try:
        obs = observation(5)
        expected = TacoPolicy(policy, load_taco(checkpoint), 4).predict_action_chunk(
            {k: np.asarray(v)[None] for k, v in obs.items()}
        )
        with PolicyClient("127.0.0.1", proc.port) as client:
            reply = client.infer(obs)
            verdict = reply["verifier"]
            assert verdict["candidate"] in range(4) and verdict["pseudo_count"] > 0
            assert verdict["out_of_distribution"] == (verdict["pseudo_count"] < 1.0)
            np.testing.assert_allclose(reply["actions"], expected[0].numpy(), atol=1e-5, rtol=1e-5)
            batched = client.infer(observation(6, batch=3))
            assert batched["actions"].shape == (3, H, A) and len(batched["verifier"]["candidate"]) == 3
            with pytest.raises(PolicyServerError, match="send no noise"):
                client.infer({**obs, "noise": np.zeros((H, A), np.float32)})
            assert client.infer(obs)["actions"].shape == (H, A)
    finally:
        proc.stop()
