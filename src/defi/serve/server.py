"""The policy server: websockets + msgpack, wire-compatible with openpi's remote-inference protocol.

On connect the server sends the metadata (the policy's `metadata` plus a `server` map describing the request
keys and limits). Then each binary frame is one request (see `defi.serve.protocol`) and gets one reply:

    {"actions": float32 [H, A], "server_timing": {"infer_ms", "queue_ms", "batch_size", "prev_total_ms"}}
    {"reset": True, "server_timing": {...}}                       (for a reset-only request)

or, when the request cannot be served, a text frame starting with "defi serve:" (openpi's client raises it as a
RuntimeError) and the connection stays open. An unexpected exception inside the policy is answered as openpi
does: the traceback as a text frame, then close code 1011. The server itself always stays up.

Inference runs on one worker thread, off the event loop, so a slow `act` never stalls other connections'
handshakes, error replies or keepalive pings; requests from all connections are served in arrival order on that
thread (one model, one device). Each connection owns a fork of the policy (`policy.fork()`: its own episode
state, every weight shared with the loaded policy, so a connection costs no weight memory).

Batching (`batch_window_ms` > 0): parsed requests from different connections queue up on the event loop; the
batcher sends everything waiting (up to `max_batch`, oldest first) to the inference thread as ONE job, which
applies each request's reset and then runs every acting request in one `act_batch` call (one batched
`predict_action_chunk`, each row's noise from its own connection's fork). It waits for more requests for at most
`batch_window_ms` after the oldest one arrived or the previous batch finished, and not at all once every open
connection has a request waiting (nobody else could join: a single robot pays no window). While a batch runs, new
requests wait for the next one, so the queue is served in arrival order. A connection has at most one request in
the queue (it reads its next frame only after its reply is sent), so a batch never holds two of one connection.
"""

from __future__ import annotations

import asyncio
import hmac
import http
import ipaddress
import logging
import signal
import sys
import threading
import time
import traceback
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import websockets
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.frames import CloseCode

from defi.config import Config
from defi.errors import DefiError
from defi.policies.base import act_batch, batchable, policy_metadata
from defi.serve.protocol import (
    IMAGE_PREFIX,
    INSTRUCTION_KEYS,
    RESET_KEY,
    STATE_KEY,
    Request,
    RequestError,
    RequestSpec,
    check_actions,
    packb,
    parse_request,
    unpackb,
)

logger = logging.getLogger("defi.serve")

PROTOCOL = "openpi-websocket-msgpack"
HEALTH_PATH = "/healthz"


@dataclass
class ServeConfig(Config):
    host: str = "127.0.0.1"  # loopback unless told otherwise: a policy server drives hardware
    port: int = 8000  # 0 picks a free port
    max_message_bytes: int = 16 * 2**20  # larger requests are refused with close code 1009
    api_key: str | None = None  # when set, clients must send "Authorization: Api-Key <key>" (as openpi's client)
    device: str = "auto"  # "auto" = cuda when present, else cpu
    open_timeout_s: float = 10.0  # a client must finish the websocket handshake within this time
    ping_interval_s: float = 20.0  # keepalive pings; a peer silent for ping_timeout_s after one is dropped (0: off)
    ping_timeout_s: float = 20.0  # how long to wait for the pong before dropping the peer
    close_timeout_s: float = 5.0  # how long to wait for the peer's close frame before cutting the TCP connection
    # How long the server waits for more robots' requests to join a batch, counted from the oldest waiting request
    # or the end of the previous batch (ms; 0: no batching, one request per policy call, in arrival order). It stops
    # waiting once every open connection has a request queued. Only batchable policies (`PolicyServer.batches`).
    batch_window_ms: float = 5.0
    max_batch: int = 16  # the most requests in one batched call; later ones wait for the next call

    def validate(self) -> None:
        self.check(0 <= self.port <= 65535, "port", "0..65535 (0 picks a free port)")
        self.check(self.max_message_bytes >= 1024, "max_message_bytes", "at least 1024 bytes")
        self.check(self.api_key is None or len(self.api_key) > 0, "api_key", "a non-empty token or none")
        self.check(self.open_timeout_s > 0, "open_timeout_s", "a positive number of seconds")
        self.check(self.ping_interval_s >= 0, "ping_interval_s", ">= 0 (0 turns keepalive off)")
        self.check(self.ping_timeout_s > 0, "ping_timeout_s", "a positive number of seconds")
        self.check(self.close_timeout_s > 0, "close_timeout_s", "a positive number of seconds")
        self.check(0 <= self.batch_window_ms <= 1000, "batch_window_ms", "0..1000 ms (0 turns batching off)")
        self.check(self.max_batch >= 1, "max_batch", ">= 1")


def _to_wire(value: Any) -> Any:
    """Metadata as msgpack can carry it (tuples -> lists, paths -> strings)."""
    if isinstance(value, dict):
        return {str(k): _to_wire(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_wire(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _policy_device(policy: Any) -> str:
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(policy, torch.nn.Module):
        tensor = next(iter((*policy.parameters(), *policy.buffers())), None)
        if tensor is not None:
            return str(tensor.device)
    return "cpu"


def _describe_close(ws: ServerConnection) -> str:
    sent, received = ws.protocol.close_sent, ws.protocol.close_rcvd
    frames = (("sent", sent), ("received", received))
    parts = [f"{who} {int(frame.code)} {frame.reason}".strip() for who, frame in frames if frame is not None]
    return ", ".join(parts) or "dropped without a close frame"


@dataclass(eq=False)
class _Pending:
    """A parsed request waiting for, or inside, a batch."""

    session: Any  # its connection's policy fork
    request: Request
    received: float  # monotonic time its frame arrived
    queued: float  # monotonic time it was parsed and queued
    future: asyncio.Future  # resolved on the event loop with (actions or None, server_timing) or the exception


def _report_batcher_exit(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:  # every request would hang: say why, loudly
        logger.critical("the batcher stopped; no request will be served", exc_info=task.exception())


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class PolicyServer:
    """Serve one loaded policy to any number of websocket clients. Use `run()` (blocking) or `start_in_thread()`."""

    def __init__(self, policy: Any, config: ServeConfig | None = None, device: str | None = None):
        self.config = config or ServeConfig()
        self.config.validate()
        self.policy = policy  # the template every connection forks; never acted on itself
        on = batchable(policy) and self.config.batch_window_ms > 0  # see `batches`
        self._max_batch = self.config.max_batch if on else 1
        self._window_s = self.config.batch_window_ms / 1e3 if on else 0.0
        meta = policy_metadata(policy).to_dict()
        self.spec = RequestSpec.from_metadata(meta)
        self.metadata = {
            **_to_wire(meta),
            "server": {
                "name": "defi",
                "protocol": PROTOCOL,
                "image_key": IMAGE_PREFIX + "<camera>",
                "state_key": STATE_KEY,
                "instruction_keys": list(INSTRUCTION_KEYS),
                "reset_key": RESET_KEY,
                "max_message_bytes": self.config.max_message_bytes,
                "device": device or _policy_device(policy),
                "auth": self.config.api_key is not None,
                "max_batch": self._max_batch,  # 1: no batching (window 0, or a policy whose act is its own)
                "batch_window_ms": self._window_s * 1e3,
            },
        }
        try:
            self._metadata_frame = packb(self.metadata)
        except (TypeError, ValueError) as err:
            raise DefiError(f"{type(policy).__name__}.metadata cannot be sent as msgpack ({err})") from None
        if not callable(getattr(policy, "fork", None)):
            raise DefiError(f"{type(policy).__name__} cannot be served: it has no fork() (the policy protocol of "
                            "defi.policies.base; each connection drives its own fork)")
        policy.fork()  # fail at start-up, not on the first connection, if the policy cannot be forked
        self.stats: Counter[str] = Counter()
        self.port: int | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._server: Server | None = None
        self._queue: list[_Pending] = []  # parsed requests waiting for the inference thread, oldest first
        self._wake: asyncio.Event | None = None  # set when a request is queued or a connection closes
        self._batcher: asyncio.Task | None = None

    @property
    def batches(self) -> bool:
        """Whether requests of several connections run as one call: a batch window is set and the policy's `act`
        is `act_batch` of one (TorchPolicyMixin's), so one `act_batch` over the connections' forks gives each row
        what that fork's own `act` would. A policy with its own `act` (the scripted experts, a wrapper keeping
        more episode state) is served one request per call: batching could bypass what its `act` does."""
        return self._max_batch > 1

    # ------------------------------------------------------------------------------------------ connection life

    def _process_request(self, connection: ServerConnection, request: websockets.http11.Request):
        if request.path == HEALTH_PATH:
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        key = self.config.api_key
        if key is not None:
            sent = request.headers.get("Authorization", "")
            if not hmac.compare_digest(sent.encode(), f"Api-Key {key}".encode()):
                self.stats["auth_refused"] += 1
                logger.warning("refused %s: missing or wrong API key", connection.remote_address)
                return connection.respond(http.HTTPStatus.UNAUTHORIZED,
                                          "missing or wrong 'Authorization: Api-Key <key>' header\n")
        return None

    # ------------------------------------------------------------------------------------------------ inference

    def _run_batch(self, batch: list[_Pending]) -> tuple[list[Any], float, float]:
        """On the inference thread: each request's reset, then one act over every acting request. Returns one
        outcome per request (float32 actions, None for a reset-only request, or the exception it raised) and when
        the job started and ended."""
        started = time.monotonic()
        outcomes: list[Any] = [None] * len(batch)
        acting: list[int] = []
        torch = sys.modules.get("torch")  # a policy that never imported torch does not need inference mode
        with torch.inference_mode() if torch is not None else nullcontext():
            for i, item in enumerate(batch):
                if item.request.reset:
                    try:
                        item.session.reset()
                    except Exception as err:  # reported to that connection only; it does not act
                        outcomes[i] = err
                        continue
                if item.request.act:
                    acting.append(i)
            for i, outcome in zip(acting, self._act([batch[i] for i in acting])):
                outcomes[i] = outcome
        return outcomes, started, time.monotonic()

    def _act(self, items: list[_Pending]) -> list[Any]:
        if len(items) < 2:
            return [self._act_alone(item) for item in items]
        try:
            chunks = act_batch([item.session for item in items], [item.request.observation for item in items],
                               [item.request.instruction for item in items])
        except Exception:
            # One call failed for the whole batch and cannot say whose row caused it: run each request alone, so
            # only the request that fails gets the error (a DefiError as a text reply, anything else as traceback
            # + close 1011) and the others still get their actions. The rerun draws each row's sampling noise
            # again (the server never seeds episodes, so no client can tell).
            self.stats["batch_fallbacks"] += 1
            logger.warning("a batched call of %d requests failed; running each alone", len(items), exc_info=True)
            return [self._act_alone(item) for item in items]
        return [self._checked(chunk) for chunk in chunks]

    def _act_alone(self, item: _Pending) -> Any:
        try:
            return check_actions(item.session.act(item.request.observation, item.request.instruction), self.spec)
        except Exception as err:
            return err

    def _checked(self, chunk: Any) -> Any:
        try:
            return check_actions(chunk, self.spec)
        except DefiError as err:  # NaN or misshapen actions in this row only
            return err

    def _submit(self, session: Any, request: Request, received: float) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(session, request, received, time.monotonic(), future))
        self._wake.set()
        return future

    def _prune(self) -> None:
        """Drop requests whose connection left while they waited (their future was cancelled)."""
        self._queue = [item for item in self._queue if not item.future.done()]

    async def _fill(self, deadline: float) -> None:
        """Wait for more requests to join the oldest one, until the batch is full, every open connection has a
        request waiting, or `deadline` (monotonic seconds)."""
        while True:
            self._prune()
            waiting = len(self._queue)
            remaining = deadline - time.monotonic()
            if waiting == 0 or waiting >= self._max_batch or waiting >= self.stats["open"] or remaining <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except asyncio.TimeoutError:
                return

    async def _batch_loop(self) -> None:
        """Form batches from the queue and run them on the inference thread, one at a time."""
        loop = asyncio.get_running_loop()
        idle_since = time.monotonic()
        while True:
            self._prune()
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            if self._max_batch > 1:
                # counted from the end of the previous batch too: the robots it served reply within a few ms and
                # join the requests that waited for it, instead of the fleet splitting into groups that alternate
                await self._fill(max(self._queue[0].queued, idle_since) + self._window_s)
                if not self._queue:
                    continue
            batch, self._queue = self._queue[:self._max_batch], self._queue[self._max_batch:]
            try:
                outcomes, started, done = await loop.run_in_executor(self._executor, self._run_batch, batch)
            except Exception as err:  # _run_batch catches the policy's errors: this is a server bug, not a policy's
                logger.exception("batch job failed")
                started = done = time.monotonic()
                outcomes = [err] * len(batch)
            idle_since = time.monotonic()
            self.stats["batches"] += 1
            for item, outcome in zip(batch, outcomes):
                if item.future.done():  # its connection left mid-request: the others' replies still go out
                    continue
                if isinstance(outcome, BaseException):
                    item.future.set_exception(outcome)
                else:
                    item.future.set_result((outcome, {"infer_ms": (done - started) * 1e3,
                                                      "queue_ms": (started - item.received) * 1e3,
                                                      "batch_size": len(batch)}))

    # ------------------------------------------------------------------------------------------ connection life

    async def _handle(self, ws: ServerConnection) -> None:
        self.stats["connections"] += 1
        self.stats["open"] += 1
        peer = ws.remote_address
        logger.info("connection from %s opened", peer)
        try:
            await ws.send(self._metadata_frame)
            # not on the inference thread: a new robot must not wait for others' inference to get connected
            session = self.policy.fork()  # a shallow copy: cheap enough for the event loop
            prev_total_s = None
            while True:
                message = await ws.recv()
                received = time.monotonic()
                try:
                    if isinstance(message, str):
                        raise RequestError("expected a binary msgpack frame, got a text frame")
                    # on the event loop (not the inference thread) so that bad requests are answered at once
                    request = parse_request(unpackb(message), self.spec)
                except RequestError as err:
                    self.stats["bad_requests"] += 1
                    logger.info("bad request from %s: %s", peer, err)
                    await ws.send(f"defi serve: bad request: {err}")
                    continue
                job = self._submit(session, request, received)
                closed = asyncio.ensure_future(ws.wait_closed())
                await asyncio.wait({job, closed}, return_when=asyncio.FIRST_COMPLETED)
                if not job.done():  # the client left mid-request: drop its queued work, keep serving the others
                    job.cancel()
                    self.stats["abandoned"] += 1
                    logger.info("%s disconnected mid-request", peer)
                    return
                closed.cancel()
                try:
                    actions, timing = job.result()
                except DefiError as err:  # the policy refused the input, or its output failed the safety checks
                    self.stats["policy_errors"] += 1
                    logger.warning("policy error for %s: %s", peer, err)
                    await ws.send(f"defi serve: policy error: {err}")
                    continue
                except Exception:
                    self.stats["internal_errors"] += 1
                    logger.exception("policy raised for %s; closing that connection", peer)
                    await ws.send(traceback.format_exc())
                    await ws.close(CloseCode.INTERNAL_ERROR, "Internal server error. Traceback included in previous "
                                   "frame.")
                    return
                if prev_total_s is not None:
                    timing["prev_total_ms"] = prev_total_s * 1e3
                reply: dict[str, Any] = {"server_timing": timing}
                if actions is None:
                    reply[RESET_KEY] = True
                else:
                    reply["actions"] = actions
                await ws.send(packb(reply))
                self.stats["replies"] += 1
                prev_total_s = time.monotonic() - received
        except websockets.ConnectionClosed:
            pass
        finally:
            self.stats["open"] -= 1
            if self._wake is not None:
                self._wake.set()  # a batch waiting for every open connection need not wait for this one
            logger.info("connection from %s closed (%s)", peer, _describe_close(ws))

    # ---------------------------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        cfg = self.config
        if not _is_loopback(cfg.host) and cfg.api_key is None:
            logger.warning("serving on %s without --api-key: anyone who can reach this port can drive the robot",
                           cfg.host)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="defi-serve-infer")
        self._queue, self._wake = [], asyncio.Event()
        self._batcher = asyncio.create_task(self._batch_loop(), name="defi-serve-batcher")
        self._batcher.add_done_callback(_report_batcher_exit)
        self._server = await serve(
            self._handle,
            cfg.host,
            cfg.port,
            process_request=self._process_request,
            compression=None,  # images do not compress; deflate would only cost CPU (openpi disables it too)
            max_size=cfg.max_message_bytes,
            open_timeout=cfg.open_timeout_s,
            ping_interval=cfg.ping_interval_s or None,
            ping_timeout=cfg.ping_timeout_s,
            close_timeout=cfg.close_timeout_s,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        logger.info("serving %s on ws://%s:%d (%s)", self.metadata.get("policy_type", type(self.policy).__name__),
                    cfg.host, self.port, f"batches of up to {self._max_batch} requests within "
                    f"{cfg.batch_window_ms:g} ms" if self.batches else "one request per call")

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._batcher is not None:
            self._batcher.cancel()
            await asyncio.gather(self._batcher, return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def serve_until(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()

    def run(self) -> None:
        """Serve until Ctrl-C or SIGTERM."""

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await self.serve_until(stop)

        asyncio.run(main())

    def start_in_thread(self, timeout_s: float = 30.0) -> ServerThread:
        return ServerThread(self).start(timeout_s)


class ServerThread:
    """A `PolicyServer` running on its own event loop in a background thread (tests, benchmarks, examples)."""

    def __init__(self, server: PolicyServer):
        self.server = server
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="defi-serve", daemon=True)

    @property
    def port(self) -> int:
        assert self.server.port is not None
        return self.server.port

    @property
    def url(self) -> str:
        return f"ws://{self.server.config.host}:{self.port}"

    def _main(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            try:
                await self.server.start()
            except BaseException as err:
                self._error = err
                self._ready.set()
                return
            self._ready.set()
            try:
                await self._stop.wait()
            finally:
                await self.server.stop()

        asyncio.run(main())

    def start(self, timeout_s: float = 30.0) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError(f"policy server did not start within {timeout_s} s")
        if self._error is not None:
            raise self._error
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout_s)

    def __enter__(self) -> ServerThread:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
