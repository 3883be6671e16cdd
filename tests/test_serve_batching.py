"""The server's batching: requests of several connections within the window run as one batched policy call, each
connection keeps its own episode state, and errors and disconnects stay with the connection they belong to.

Batches are formed deterministically here: a large window plus the rule that the batcher stops waiting once every
open connection has a request queued (or, where a connection stays idle, a window far longer than the few ms the
test needs to send its frames)."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from openpi_client.websocket_client_policy import WebsocketClientPolicy
from torch import nn

from defi.errors import DefiError
from defi.policies.base import PolicyConfig, PolicyMetadata, TorchPolicyMixin
from defi.serve import PolicyClient, PolicyServer, ServeConfig
from defi.serve.protocol import packb, unpackb

pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager:DeprecationWarning")

FAST = dict(port=0, open_timeout_s=0.5, ping_interval_s=0.3, ping_timeout_s=0.3, close_timeout_s=0.3)
WAIT_S = 10.0
H, A = 3, 2  # action chunk of the echo policy


@dataclass
class EchoConfig(PolicyConfig):
    type_name = "echo"
    image_size: int = 8
    state_dim: int = A
    action_dim: int = A
    action_horizon: int = H


class EchoPolicy(TorchPolicyMixin, nn.Module):
    """A batchable policy whose every output says where it came from: row b of a chunk is the row's state + the
    mean pixel of its image + 1000 x its fork's step count in the episode (the fork's `episode_noise`, which
    act_batch draws once per row). Steered by the instruction: "refuse" makes the batched call raise a DefiError,
    "crash" a RuntimeError, "nan" gives that row NaN actions, "block" waits for `gate`. Every fork shares
    `shared` (the batch sizes of the calls, the gate)."""

    def __init__(self, shared: dict | None = None):
        nn.Module.__init__(self)
        self.config = EchoConfig()
        self.shared = shared or {"calls": [], "gate": threading.Event(), "started": threading.Event()}
        self._init_episode_state()

    @property
    def metadata(self) -> PolicyMetadata:
        return PolicyMetadata("echo", ["corner"], [8, 8], A, A, H)

    def _init_episode_state(self) -> None:
        super()._init_episode_state()
        self.steps = 0

    def reset(self, seed: int | None = None) -> None:
        super().reset(seed)
        self.steps = 0

    def episode_noise(self) -> torch.Tensor:
        self.steps += 1
        return torch.full((H, A), float(self.steps))

    def predict_action_chunk(self, batch, generator=None, noise=None):
        words = list(batch["instruction"])
        self.shared["calls"].append(len(words))
        if "block" in words:
            self.shared["started"].set()
            assert self.shared["gate"].wait(WAIT_S), "test never opened the gate"
        if "refuse" in words:
            raise DefiError("this policy refuses that instruction")
        if "crash" in words:
            raise RuntimeError("boom")
        pixel = batch["images"].float().mean(dim=(1, 2, 3, 4))
        out = batch["state"][:, None, :] + pixel[:, None, None] + 1000 * noise
        return torch.stack([torch.full_like(row, float("nan")) if word == "nan" else row
                            for row, word in zip(out, words)])


def request(seed: int, prompt: str = "x") -> dict:
    rng = np.random.default_rng(seed)
    return {"observation/images/corner": rng.integers(0, 256, (8, 8, 3), dtype=np.uint8),
            "observation/state": rng.uniform(-1, 1, A).astype(np.float32), "prompt": prompt}


def alone(fork: EchoPolicy, req: dict) -> np.ndarray:
    """What a fork's own `act` answers (the unbatched reference)."""
    return fork.act({"observation.images.corner": req["observation/images/corner"],
                     "observation.state": req["observation/state"]}, req["prompt"])


def send(client, req: dict) -> None:
    client._ws.send(packb(req))


def receive(client):
    """The next reply of a raw connection: the decoded map, or the server's error text."""
    reply = client._ws.recv(timeout=WAIT_S)
    return reply if isinstance(reply, str) else unpackb(reply)


def serve(policy, **config):
    return PolicyServer(policy, ServeConfig(**FAST, **config)).start_in_thread()


def connect(port: int, count: int) -> list:
    """Alternately openpi's real client and ours: both speak the protocol the server batches."""
    return [WebsocketClientPolicy(host="127.0.0.1", port=port) if i % 2 else PolicyClient("127.0.0.1", port)
            for i in range(count)]


def test_requests_of_several_connections_form_one_batch_and_match_acting_alone():
    policy = EchoPolicy()
    references = [EchoPolicy() for _ in range(4)]  # own call lists: only the served calls count
    with serve(policy, batch_window_ms=1000) as thread:
        clients = connect(thread.port, 4)
        meta = clients[1].get_server_metadata()  # the real openpi client reads the metadata as before
        assert meta["policy_type"] == "echo" and meta["action_horizon"] == H and meta["server"]["max_batch"] == 16
        for step in range(3):
            reqs = [request(100 * step + i) for i in range(4)]
            if step == 1:
                reqs[0]["reset"] = True  # reset, then act: this connection's episode restarts inside the batch
                references[0].reset()
            if step == 2:
                reqs[3] = {"reset": True}  # a reset-only request rides along without acting
                references[3].reset()
            for client, req in zip(clients, reqs):
                send(client, req)
            replies = [receive(client) for client in clients]
            for i, (reply, req) in enumerate(zip(replies, reqs)):
                assert reply["server_timing"]["batch_size"] == 4
                if "prompt" not in req:
                    assert reply["reset"] is True and "actions" not in reply
                    continue
                np.testing.assert_array_equal(reply["actions"], alone(references[i], req))  # no row mixed up
        # one call per step; step counts are per connection (1000, 2000, 3000 for a connection never reset)
        assert policy.shared["calls"] == [4, 4, 3]
        assert replies[1]["actions"][0, 0] // 1000 == 3 and replies[0]["actions"][0, 0] // 1000 == 2
        assert thread.server.stats["batches"] == 3 and thread.server.stats["batch_fallbacks"] == 0
        for client in clients[:3]:
            client._ws.close()  # alone now: its next request runs at once (nobody else could join its batch)
        assert clients[3].infer(request(7))["actions"][0, 0] // 1000 == 1  # its episode restarted at step 2


def test_window_zero_runs_one_request_per_call_in_arrival_order():
    policy = EchoPolicy()
    references = [EchoPolicy() for _ in range(4)]  # own call lists: only the served calls count
    with serve(policy, batch_window_ms=0) as thread:
        clients = connect(thread.port, 4)
        assert clients[0].metadata["server"]["max_batch"] == 1
        reqs = [request(i) for i in range(4)]
        for client, req in zip(clients, reqs):
            send(client, req)
        for client, req, reference in zip(clients, reqs, references):
            reply = receive(client)
            assert reply["server_timing"]["batch_size"] == 1
            np.testing.assert_array_equal(reply["actions"], alone(reference, req))
        assert policy.shared["calls"] == [1, 1, 1, 1]


def test_only_policies_whose_act_is_act_batch_of_one_are_batched():
    class OwnAct(EchoPolicy):
        def act(self, observation, instruction):  # e.g. temporal ensembling: batching would bypass it
            return super().act(observation, instruction)

    class PlainPolicy:  # no predict_action_chunk, like the scripted experts
        metadata = {"policy_type": "Plain", "cameras": [], "action_dim": 1, "action_horizon": 1, "state_dim": 0}

        def fork(self):
            return self

        def act(self, observation, instruction):
            return np.zeros((1, 1), np.float32)

    assert PolicyServer(EchoPolicy(), ServeConfig(batch_window_ms=5)).batches
    assert not PolicyServer(EchoPolicy(), ServeConfig(batch_window_ms=0)).batches
    assert not PolicyServer(EchoPolicy(), ServeConfig(batch_window_ms=5, max_batch=1)).batches
    assert not PolicyServer(OwnAct(), ServeConfig(batch_window_ms=5)).batches
    assert not PolicyServer(PlainPolicy(), ServeConfig(batch_window_ms=5)).batches
    with pytest.raises(DefiError, match="batch_window_ms"):
        ServeConfig(batch_window_ms=-1).validate()


def test_an_error_in_one_request_of_a_batch_reaches_only_that_connection():
    policy = EchoPolicy()
    with serve(policy, batch_window_ms=1000) as thread:
        ok, refuse, nan, crash = clients = connect(thread.port, 4)
        for client, prompt in zip(clients, ("x", "refuse", "nan", "crash")):
            send(client, request(0, prompt))
        # the batched call raised: each request ran alone, so each got its own outcome
        assert receive(ok)["actions"].shape == (H, A)
        assert receive(refuse) == "defi serve: policy error: this policy refuses that instruction"
        assert receive(nan) == "defi serve: policy error: policy returned NaN or infinite actions; nothing was " \
                               "sent to the robot"
        assert "RuntimeError: boom" in receive(crash)
        with pytest.raises(Exception) as closed:
            crash._ws.recv(timeout=WAIT_S)
        assert closed.value.rcvd.code == 1011  # only the crashing connection is closed
        assert sorted(policy.shared["calls"]) == [1, 1, 1, 1, 4]
        # NaN in one row of a batch that did not raise: that row's connection gets the error, no rerun
        for client, prompt in zip((ok, refuse, nan), ("x", "x", "nan")):
            send(client, request(1, prompt))
        assert receive(ok)["actions"].shape == (H, A) and receive(refuse)["actions"].shape == (H, A)
        assert "NaN" in receive(nan)
        assert policy.shared["calls"][-1] == 3
        stats = thread.server.stats
        assert stats["batch_fallbacks"] == 1 and stats["policy_errors"] == 3 and stats["internal_errors"] == 1


def test_a_connection_leaving_mid_batch_does_not_break_the_others_and_waiting_requests_join_the_next():
    policy = EchoPolicy()
    shared = policy.shared
    try:
        with serve(policy, batch_window_ms=200) as thread:
            a, b, c, d = connect(thread.port, 4)
            send(a, request(0, "block"))
            send(b, request(1))
            assert shared["started"].wait(WAIT_S)  # a and b run as one batch (c and d idle: the window passed)
            send(c, request(2))  # these wait for the running batch
            send(d, request(3))
            b._ws.close()  # b leaves while its request runs
            assert _wait(lambda: thread.server.stats["abandoned"] == 1)
            shared["gate"].set()
            assert receive(a)["actions"].shape == (H, A)
            replies = [receive(c), receive(d)]
            assert [r["server_timing"]["batch_size"] for r in replies] == [2, 2]  # both waiting joined the next
            assert shared["calls"] == [2, 2]
            assert thread.server.stats["internal_errors"] == 0
            assert a.infer(request(4))["actions"].shape == (H, A)
    finally:
        shared["gate"].set()


def _wait(condition, timeout_s: float = WAIT_S) -> bool:
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()
