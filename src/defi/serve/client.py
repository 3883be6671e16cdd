"""`PolicyClient`: the robot side of the policy server, itself a policy (reset / act / metadata).

It speaks the same protocol as `openpi_client.websocket_client_policy.WebsocketClientPolicy` and adds what a
robot loop needs: waiting for a server that is still starting, a real per-connection `reset()`, a reply timeout,
a size check before sending, and errors that say what went wrong. It needs only websockets, msgpack and numpy.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from typing import Any

import numpy as np
import websockets
from websockets.sync.client import ClientConnection, connect

from defi.errors import DefiError
from defi.serve.protocol import RESET_KEY, RequestError, packb, unpackb


class PolicyServerError(DefiError):
    """The server refused a request, failed, closed the connection or did not answer in time."""


class PolicyClient:
    """Connect to `defi serve` (or any openpi-protocol server) and call it like a local policy.

    >>> with PolicyClient("127.0.0.1", 8000) as policy:
    ...     policy.reset()
    ...     chunk = policy.act({"observation.images.corner": rgb, "observation.state": state}, "open the drawer")
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = 8000,
        api_key: str | None = None,
        connect_timeout_s: float = 30.0,
        reply_timeout_s: float | None = 60.0,
    ):
        self.url = host if host.startswith("ws") else f"ws://{host}"
        if port is not None and not host.startswith("ws"):
            self.url += f":{port}"
        self.reply_timeout_s = reply_timeout_s
        headers = {"Authorization": f"Api-Key {api_key}"} if api_key else None
        self._stack = ExitStack()
        self._ws = self._stack.enter_context(self._connect(headers, connect_timeout_s))
        self.metadata: dict[str, Any] = self._receive("metadata")
        limit = self.metadata.get("server", {}).get("max_message_bytes")
        self.max_message_bytes: int | None = int(limit) if limit else None

    def _connect(self, headers: dict[str, str] | None, timeout_s: float) -> ClientConnection:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return connect(self.url, compression=None, max_size=None, additional_headers=headers,
                               open_timeout=max(1.0, timeout_s))
            except websockets.InvalidStatus as err:  # e.g. 401: retrying will not help
                raise PolicyServerError(f"{self.url} refused the connection: HTTP {err.response.status_code} "
                                        f"{err.response.body.decode(errors='replace').strip()}") from None
            except (ConnectionRefusedError, OSError, TimeoutError) as err:
                if time.monotonic() >= deadline:
                    raise PolicyServerError(f"no policy server at {self.url} after {timeout_s:.0f} s ({err})") from None
                time.sleep(0.2)  # the server may still be loading its checkpoint

    def _receive(self, what: str) -> Any:
        try:
            reply = self._ws.recv(timeout=self.reply_timeout_s)
        except TimeoutError:
            # a late reply would be taken for the answer to the next request: this connection is unusable now
            self._ws.close()
            raise PolicyServerError(f"{self.url}: no {what} within {self.reply_timeout_s} s; connection closed") \
                from None
        except websockets.ConnectionClosed as err:
            raise PolicyServerError(f"{self.url} closed the connection ({_describe_close(err)})") from None
        if isinstance(reply, str):  # the server's error report
            raise PolicyServerError(f"{self.url}: {reply.strip()}")
        try:
            return unpackb(reply)
        except RequestError as err:
            raise PolicyServerError(f"{self.url} sent an unreadable {what}: {err}") from None

    def infer(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send one raw request (openpi's `infer`): returns the reply dict ("actions", "server_timing")."""
        frame = packb(request)
        if self.max_message_bytes is not None and len(frame) > self.max_message_bytes:
            raise PolicyServerError(f"request of {len(frame)} bytes exceeds the server's limit of "
                                    f"{self.max_message_bytes} bytes (send smaller images or raise "
                                    "--max-message-bytes on the server)")
        try:
            self._ws.send(frame)
        except websockets.ConnectionClosed as err:
            raise PolicyServerError(f"{self.url} closed the connection ({_describe_close(err)})") from None
        return self._receive("reply")

    def act(self, observation: dict[str, Any], instruction: str) -> np.ndarray:
        """The policy API over the wire: float32 [H, A] action chunk for this observation."""
        return np.array(self.infer({**observation, "prompt": instruction})["actions"])  # writable, unlike the frame

    def reset(self, seed: int | None = None) -> None:
        """Start a new episode for this connection (other connections are not affected). openpi's protocol has no
        seed: the server-side policy copy draws its sampling noise from its own generator, so `seed` is ignored."""
        reply = self.infer({RESET_KEY: True})
        if not reply.get(RESET_KEY):
            raise PolicyServerError(f"{self.url} did not acknowledge the reset (reply keys {sorted(reply)}); "
                                    "is it a defi server?")

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _describe_close(err: websockets.ConnectionClosed) -> str:
    frame = err.rcvd
    if frame is None:
        return "no close frame: the connection dropped"
    return f"code {int(frame.code)} {frame.reason or ''}".strip()
