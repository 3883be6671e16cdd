"""The policy server on loopback, driven by openpi's real client and by `PolicyClient`: normal use, every bad input,
slow and vanishing clients, concurrency, auth and the CLI. Every wait is bounded."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # before anything imports mujoco (rendering test below)

import http.client
import importlib.util
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import websockets
from openpi_client.websocket_client_policy import WebsocketClientPolicy
from websockets.sync.client import connect

from defi.cli import main as defi_main
from defi.errors import DefiError
from defi.policies import load_policy
from defi.policies.scripted import ScriptedConfig as ScriptedMetaWorldConfig
from defi.policies.scripted import ScriptedPolicy as ScriptedMetaWorldPolicy
from defi.serve import PolicyClient, PolicyServer, PolicyServerError, ServeConfig
from defi.serve.protocol import packb

pytestmark = [  # third-party noise: openpi-client's direct websockets.connect, gymnasium's env checker
    pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning:gymnasium.utils.passive_env_checker"),
    # the policy's own filter for the experts' gain warning is reset by pytest between tests
    pytest.mark.filterwarnings("ignore:Constant\\(s\\) may be too high:UserWarning"),
]

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(port=0, open_timeout_s=0.5, ping_interval_s=0.3, ping_timeout_s=0.3, close_timeout_s=0.3)
WAIT_S = 10.0  # upper bound for anything that should happen "soon" on a loaded 2-core machine


def wait_until(condition, timeout_s: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def images(h: int = 64, w: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"observation/images/{cam}": rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            for cam in ("corner", "gripperPOV")}


def good_request(seed: int = 0) -> dict:
    state = np.random.default_rng(seed).uniform(-0.5, 0.5, 39).astype(np.float32)
    return {**images(seed=seed), "observation/state": state, "prompt": "reach the goal"}


def expert_action(state: np.ndarray, task: str = "reach-v3") -> np.ndarray:
    return ScriptedMetaWorldPolicy(ScriptedMetaWorldConfig(task=task)).act({"observation.state": state}, "")


@pytest.fixture(scope="module")
def served():
    """The scripted expert (two 64x64 cameras, 39-dim state) behind a server with small limits and timeouts."""
    server = PolicyServer(ScriptedMetaWorldPolicy(), ServeConfig(max_message_bytes=64 * 1024, **FAST))
    with server.start_in_thread() as thread:
        yield thread


class GatedPolicy:
    """A test policy steered by the instruction: "block" waits for `gate`, "crash" raises, "nan" returns NaN,
    "refuse" raises a user error; anything else answers [[number of calls so far]]."""

    metadata = {"policy_type": "Gated", "cameras": [], "action_dim": 1, "action_horizon": 1, "state_dim": 0}

    def __init__(self, shared=None):
        self.shared = shared or {"gate": threading.Event(), "started": threading.Event(), "calls": []}

    def fork(self):  # the events are shared on purpose: the test steers every connection's copy
        return GatedPolicy(self.shared)

    def reset(self):
        pass

    def act(self, observation, instruction):
        self.shared["calls"].append(instruction)
        if instruction == "block":
            self.shared["started"].set()
            assert self.shared["gate"].wait(WAIT_S), "test never opened the gate"
        if instruction == "crash":
            raise RuntimeError("boom")
        if instruction == "refuse":
            raise DefiError("this policy refuses that instruction")
        if instruction == "nan":
            return np.array([[np.nan]], np.float32)
        return np.array([[len(self.shared["calls"])]], np.float32)


@pytest.fixture
def gated():
    policy = GatedPolicy()
    with PolicyServer(policy, ServeConfig(**FAST)).start_in_thread() as thread:
        try:
            yield thread, policy.shared
        finally:
            policy.shared["gate"].set()  # never leave the inference thread blocked


def health(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT_S)
    conn.request("GET", "/healthz")
    return conn.getresponse().status


# ---------------------------------------------------------------------------------------------------- normal use


def test_openpi_client_drives_a_metaworld_episode(tmp_path):
    import gymnasium as gym
    import metaworld  # noqa: F401

    ScriptedMetaWorldPolicy(ScriptedMetaWorldConfig(task="reach-v3", cameras=())).save_pretrained(tmp_path / "p")
    policy = load_policy(tmp_path / "p", device="cpu")
    with PolicyServer(policy, ServeConfig(**FAST)).start_in_thread() as thread:
        client = WebsocketClientPolicy(host="127.0.0.1", port=thread.port)
        metadata = client.get_server_metadata()
        assert metadata["policy_type"] == "scripted" and metadata["state_dim"] == 39
        assert metadata["server"]["instruction_keys"] == ["prompt", "task"]
        env = gym.make("Meta-World/MT1", env_name="reach-v3", seed=0)
        obs, _ = env.reset(seed=0)
        success = False
        for step in range(150):
            state = obs.astype(np.float32)
            reply = client.infer({"observation/state": state, "prompt": "reach the goal", "reset": step == 0})
            assert reply["actions"].shape == (1, 4) and reply["actions"].dtype == np.float32
            assert set(reply["server_timing"]) >= {"infer_ms", "queue_ms"}
            np.testing.assert_array_equal(reply["actions"], expert_action(state))
            obs, _, _, _, info = env.step(reply["actions"][0])
            if info["success"]:
                success = True
                break
        env.close()
        assert success, "the served expert did not solve reach-v3 in 150 steps"
        assert "prev_total_ms" in reply["server_timing"]


def test_example_robot_loop_renders_cameras_and_drives_the_server(capsys):
    spec = importlib.util.spec_from_file_location("robot_client_metaworld", ROOT / "examples/robot_client_metaworld.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    assert example.main(["--self-serve", "--cameras", "corner", "--task", "reach-v3", "--max-steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "wants cameras ['corner'] at [64, 64]" in out
    assert "episode 0: success=False steps=2" in out


def test_policy_client_is_a_policy_and_accepts_both_instruction_keys(served):
    with PolicyClient("127.0.0.1", served.port) as policy:
        assert policy.metadata["cameras"] == ["corner", "gripperPOV"]
        request = good_request(1)
        state = request["observation/state"]
        observation = {"observation.images.corner": request["observation/images/corner"],
                       "observation.images.gripperPOV": request["observation/images/gripperPOV"],
                       "observation.state": state}
        policy.reset()
        chunk = policy.act(observation, "reach")
        np.testing.assert_array_equal(chunk, expert_action(state))
        chunk[0, 0] = 0.0  # robot code may edit its chunk (clip, smooth) in place
        # LeRobot's "task" key, and nested maps, mean the same thing
        nested = {"observation": {"images": {"corner": observation["observation.images.corner"],
                                             "gripperPOV": observation["observation.images.gripperPOV"]},
                                  "state": state}, "task": "reach"}
        np.testing.assert_array_equal(policy.infer(nested)["actions"], expert_action(state))


# ---------------------------------------------------------------------------------------------------- bad inputs


def _without(key):
    def mutate(request):
        request.pop(key)
        return request
    return mutate


def _with(key, value):
    def mutate(request):
        request[key] = value
        return request
    return mutate


BAD_REQUESTS = {
    "missing-instruction": (_without("prompt"), "missing the instruction: send it as 'prompt'"),
    "instruction-not-str": (_with("prompt", 5), "prompt: expected a string"),
    "prompt-task-disagree": (_with("task", "something else"), "'prompt' and 'task' disagree"),
    "missing-camera": (_without("observation/images/gripperPOV"),
                       "missing image 'observation.images.gripperPOV'.*request has cameras \\['corner'\\] "
                       "\\(all its keys: \\['observation.images.corner', 'observation.state', 'prompt'\\]\\)"),
    "image-float": (_with("observation/images/corner", np.zeros((64, 64, 3), np.float32)),
                    "observation.images.corner: dtype float32, expected uint8"),
    "image-chw": (_with("observation/images/corner", np.zeros((3, 64, 64), np.uint8)), "looks channel-first"),
    "image-size": (_with("observation/images/corner", np.zeros((32, 32, 3), np.uint8)),
                   "expected \\[64, 64, 3\\] \\(resize on the robot side"),
    "image-not-array": (_with("observation/images/corner", [1, 2, 3]), "expected a uint8 numpy array"),
    "missing-state": (_without("observation/state"), "missing 'observation.state'"),
    "state-shape": (_with("observation/state", np.zeros(7, np.float32)), "shape \\[7\\], expected \\[39\\]"),
    "state-nan": (_with("observation/state", np.full(39, np.nan, np.float32)), "NaN or infinite"),
    "state-bool": (_with("observation/state", np.zeros(39, bool)), "expected a float numpy array"),
    "reset-not-bool": (_with("reset", "yes"), "reset: expected true or false"),
}


@pytest.mark.parametrize("name", sorted(BAD_REQUESTS))
def test_bad_requests_get_an_error_reply_and_the_connection_survives(served, name):
    mutate, message = BAD_REQUESTS[name]
    client = WebsocketClientPolicy(host="127.0.0.1", port=served.port)
    with pytest.raises(RuntimeError, match="defi serve: bad request: (.*)" + message):
        client.infer(mutate(good_request()))
    assert client.infer(good_request())["actions"].shape == (1, 4)


BAD_FRAMES = {
    "garbage-bytes": (b"\xc1\x00\xff not msgpack", "not valid msgpack"),
    "truncated": (packb(good_request())[:-10], "not valid msgpack"),
    "text-frame": ("hello", "expected a binary msgpack frame, got a text frame"),
    "not-a-map": (msgpack.packb([1, 2, 3]), "a request must be a map"),
    "int-key": (msgpack.packb({1: 2}), "int is not allowed for map key"),
    "bytes-key": (msgpack.packb({b"prompt": "x"}), "request key b'prompt': expected a string"),
    "object-array": (msgpack.packb({"prompt": "x", "observation/state": {
        b"__ndarray__": True, b"data": b"\0" * 8, b"dtype": "|O", b"shape": [1]}}), "only bool, integer and float"),
    "short-array-buffer": (msgpack.packb({"prompt": "x", "observation/state": {
        b"__ndarray__": True, b"data": b"\0" * 8, b"dtype": "<f4", b"shape": [39]}}), "needs 156 bytes, got 8"),
}


@pytest.mark.parametrize("name", sorted(BAD_FRAMES))
def test_malformed_frames_get_an_error_reply_and_the_connection_survives(served, name):
    frame, message = BAD_FRAMES[name]
    client = WebsocketClientPolicy(host="127.0.0.1", port=served.port)
    client._ws.send(frame)  # below the client's packer: what a buggy or hostile peer could send
    reply = client._ws.recv(timeout=WAIT_S)
    assert isinstance(reply, str) and message in reply
    assert client.infer(good_request())["actions"].shape == (1, 4)


def test_oversized_messages_are_refused_and_the_server_stays_up(served):
    big = {**good_request(), **images(200, 200)}  # ~240 kB > the 64 kB limit of this server
    client = WebsocketClientPolicy(host="127.0.0.1", port=served.port)
    with pytest.raises(websockets.ConnectionClosedError) as closed:
        client.infer(big)
    assert closed.value.rcvd.code == 1009  # "message too big"
    with PolicyClient("127.0.0.1", served.port) as policy:
        with pytest.raises(PolicyServerError, match="exceeds the server's limit of 65536 bytes"):
            policy.infer(big)  # refused before sending: the connection stays usable
        assert policy.infer(good_request())["actions"].shape == (1, 4)
    assert WebsocketClientPolicy(host="127.0.0.1", port=served.port).infer(good_request())["actions"].shape == (1, 4)


def test_policy_failures_are_reported_and_only_a_crash_closes_that_connection(gated):
    thread, shared = gated
    client = WebsocketClientPolicy(host="127.0.0.1", port=thread.port)
    with pytest.raises(RuntimeError, match="policy error: policy returned NaN or infinite actions"):
        client.infer({"prompt": "nan"})
    with pytest.raises(RuntimeError, match="policy error: this policy refuses that instruction"):
        client.infer({"prompt": "refuse"})
    assert client.infer({"prompt": "fine"})["actions"].shape == (1, 1)
    with pytest.raises(RuntimeError, match="(?s)Traceback.*RuntimeError: boom"):
        client.infer({"prompt": "crash"})
    with pytest.raises(websockets.ConnectionClosedError) as closed:
        client._ws.recv(timeout=WAIT_S)
    assert closed.value.rcvd.code == 1011
    assert WebsocketClientPolicy(host="127.0.0.1", port=thread.port).infer({"prompt": "ok"})["actions"].shape == (1, 1)
    stats = thread.server.stats
    assert stats["internal_errors"] == 1 and stats["policy_errors"] == 2


# ----------------------------------------------------------------------------------------------- episode state


class CountingPolicy:
    metadata = {"policy_type": "Counting", "cameras": [], "action_dim": 1, "action_horizon": 1, "state_dim": 0}

    def __init__(self):
        self.steps = 0

    def fork(self):
        return type(self)()

    def reset(self):
        self.steps = 0

    def act(self, observation, instruction):
        self.steps += 1
        return np.array([[self.steps]], np.float32)


def test_reset_and_episode_state_are_per_connection():
    with PolicyServer(CountingPolicy(), ServeConfig(**FAST)).start_in_thread() as thread:
        a, b = PolicyClient("127.0.0.1", thread.port), PolicyClient("127.0.0.1", thread.port)
        openpi = WebsocketClientPolicy(host="127.0.0.1", port=thread.port)
        assert [a.act({}, "x")[0, 0] for _ in range(3)] == [1, 2, 3]
        assert b.act({}, "x")[0, 0] == 1
        a.reset()
        assert a.act({}, "x")[0, 0] == 1 and b.act({}, "x")[0, 0] == 2
        assert openpi.infer({"prompt": "x"})["actions"][0, 0] == 1
        assert openpi.infer({"prompt": "x"})["actions"][0, 0] == 2
        assert openpi.infer({"prompt": "x", "reset": True})["actions"][0, 0] == 1  # reset flag, then act
        reply = openpi.infer({"reset": True})  # a reset-only request is acknowledged without acting
        assert reply["reset"] is True and "actions" not in reply
        assert openpi.infer({"prompt": "x"})["actions"][0, 0] == 1
        a.close(), b.close()


class ChunkPolicy(CountingPolicy):
    metadata = {"policy_type": "Chunk", "cameras": [], "action_dim": 2, "action_horizon": 4, "state_dim": 0}

    def act(self, observation, instruction):
        self.steps += 1
        return np.arange(8, dtype=np.float32).reshape(4, 2) + 100 * self.steps


def test_openpi_action_chunk_broker_steps_through_served_chunks():
    from openpi_client.action_chunk_broker import ActionChunkBroker

    with PolicyServer(ChunkPolicy(), ServeConfig(**FAST)).start_in_thread() as thread:
        broker = ActionChunkBroker(WebsocketClientPolicy(host="127.0.0.1", port=thread.port), action_horizon=4)
        steps = [broker.infer({"prompt": "x"})["actions"] for _ in range(6)]
        np.testing.assert_array_equal(steps[0], [100, 101])
        np.testing.assert_array_equal(steps[3], [106, 107])
        np.testing.assert_array_equal(steps[4], [200, 201])  # a new chunk was requested after four steps
        assert thread.server.stats["replies"] == 2


# -------------------------------------------------------------------------------------------------- concurrency


def test_concurrent_clients_each_get_their_own_answers(served):
    errors: list[str] = []

    def robot(index: int) -> None:
        try:
            if index % 2:
                client = WebsocketClientPolicy(host="127.0.0.1", port=served.port)
                infer = client.infer
            else:
                client = PolicyClient("127.0.0.1", served.port)
                infer = client.infer
            for step in range(15):
                request = good_request(seed=1000 * index + step)
                actions = infer(request)["actions"]
                if not np.array_equal(actions, expert_action(request["observation/state"])):
                    errors.append(f"client {index} step {step}: wrong actions")
        except Exception as err:  # surfaced below: a thread cannot fail the test itself
            errors.append(f"client {index}: {type(err).__name__}: {err}")

    threads = [threading.Thread(target=robot, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a client hung"
    assert errors == []


def test_slow_inference_does_not_block_other_connections(gated):
    thread, shared = gated
    result: dict = {}

    def slow_robot():
        result["reply"] = WebsocketClientPolicy(host="127.0.0.1", port=thread.port).infer({"prompt": "block"})

    worker = threading.Thread(target=slow_robot)
    worker.start()
    assert shared["started"].wait(WAIT_S)
    start = time.monotonic()
    other = PolicyClient("127.0.0.1", thread.port)  # handshake + metadata while the inference thread is busy
    with pytest.raises(PolicyServerError, match="bad request"):
        other.infer({"no": "instruction"})  # answered by the event loop, not queued behind the slow inference
    assert health(thread.port) == 200
    elapsed = time.monotonic() - start
    assert worker.is_alive() and "reply" not in result
    assert elapsed < 3.0, f"other connections waited {elapsed:.2f} s for a blocked inference"
    shared["gate"].set()
    worker.join(WAIT_S)
    assert result["reply"]["actions"].shape == (1, 1)
    other.close()


def test_disconnect_mid_request_drops_its_work_and_the_server_stays_up(gated):
    thread, shared = gated
    a = WebsocketClientPolicy(host="127.0.0.1", port=thread.port)
    b = WebsocketClientPolicy(host="127.0.0.1", port=thread.port)
    a._ws.send(packb({"prompt": "block"}))
    assert shared["started"].wait(WAIT_S)
    b._ws.send(packb({"prompt": "queued"}))  # waits behind the blocked inference
    time.sleep(0.1)
    b._ws.close()
    a._ws.close()
    assert wait_until(lambda: thread.server.stats["abandoned"] == 2)
    shared["gate"].set()
    c = WebsocketClientPolicy(host="127.0.0.1", port=thread.port)
    assert c.infer({"prompt": "after"})["actions"].shape == (1, 1)
    assert shared["calls"] == ["block", "after"]  # b's queued request never ran
    assert thread.server.stats["internal_errors"] == 0


def _raw_connection(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
    return sock


def _read_until_eof(sock: socket.socket, timeout_s: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True
    return False


def test_slow_and_silent_clients_are_dropped_without_hurting_others(served):
    # 1. a handshake that never finishes: closed after open_timeout_s
    stalled_handshake = _raw_connection(served.port)
    stalled_handshake.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    # 2. a handshake that finishes, then half a frame and silence (no pongs either): dropped by the keepalive
    half_frame = _raw_connection(served.port)
    half_frame.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                       b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    assert half_frame.recv(4096).startswith(b"HTTP/1.1 101")
    half_frame.sendall(b"\x82\xfe\x01\x00" + b"\x00\x00\x00\x00" + b"\x00" * 10)  # 256-byte masked frame, 10 sent
    # 3. a client that floods requests and never reads the replies
    flood = connect(f"ws://127.0.0.1:{served.port}", compression=None, close_timeout=0.5).__enter__()
    flood.recv(timeout=WAIT_S)
    for seed in range(30):
        flood.send(packb(good_request(seed)))
    # meanwhile a well-behaved robot is served promptly
    client = WebsocketClientPolicy(host="127.0.0.1", port=served.port)
    start = time.monotonic()
    for seed in range(5):
        assert client.infer(good_request(seed))["actions"].shape == (1, 4)
    assert time.monotonic() - start < 5.0
    assert _read_until_eof(stalled_handshake), "a stalled handshake was never closed"
    assert _read_until_eof(half_frame), "a silent client with a half-sent frame was never dropped"
    flood.close()
    for sock in (stalled_handshake, half_frame):
        sock.close()
    assert client.infer(good_request())["actions"].shape == (1, 4)


# --------------------------------------------------------------------------------------------- auth and binding


def test_shared_token_authentication():
    with PolicyServer(ScriptedMetaWorldPolicy(), ServeConfig(api_key="s3cret", **FAST)).start_in_thread() as thread:
        assert thread.server.config.host == "127.0.0.1"
        ok = WebsocketClientPolicy(host="127.0.0.1", port=thread.port, api_key="s3cret")
        assert ok.infer(good_request())["actions"].shape == (1, 4)
        for key in (None, "wrong"):
            with pytest.raises(websockets.InvalidStatus) as refused:
                WebsocketClientPolicy(host="127.0.0.1", port=thread.port, api_key=key)
            assert refused.value.response.status_code == 401
        with pytest.raises(PolicyServerError, match="HTTP 401"):
            PolicyClient("127.0.0.1", thread.port, api_key="wrong")
        assert health(thread.port) == 200  # the health check needs no key
        assert thread.server.stats["auth_refused"] == 3


def test_policy_client_timeouts():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(PolicyServerError, match="no policy server at"):
        PolicyClient("127.0.0.1", port, connect_timeout_s=0.5)
    assert time.monotonic() - start < 5.0


def test_policy_client_reply_timeout(gated):
    thread, shared = gated
    client = PolicyClient("127.0.0.1", thread.port, reply_timeout_s=0.3)
    with pytest.raises(PolicyServerError, match="no reply within 0.3 s; connection closed"):
        client.act({}, "block")
    shared["gate"].set()


# -------------------------------------------------------------------------------------------------------- CLI


def test_cli_serves_a_checkpoint_until_interrupted(tmp_path):
    ScriptedMetaWorldPolicy(ScriptedMetaWorldConfig(cameras=())).save_pretrained(tmp_path / "expert")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "DEFI_API_KEY": "from-env", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "defi", "serve", str(tmp_path / "expert"), "--port", str(port),
                             "--device", "cpu"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with PolicyClient("127.0.0.1", port, api_key="from-env", connect_timeout_s=60) as policy:
            assert policy.metadata["server"]["auth"] is True
            state = np.linspace(-0.2, 0.2, 39, dtype=np.float32)
            np.testing.assert_array_equal(policy.act({"observation.state": state}, "reach"), expert_action(state))
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert f"on ws://127.0.0.1:{port}" in out and "auth on" in out and "defi serve: stopped" in out


def test_cli_reports_a_bad_checkpoint_in_one_line(tmp_path, capsys):
    assert defi_main(["serve", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nowhere: no saved policy here" in err[0]
    assert defi_main(["serve", str(tmp_path), "--port", "70000"]) == 2
    assert "port=70000: expected 0..65535" in capsys.readouterr().err
