"""Serve a policy to robots over websockets (openpi's protocol) and call it from robot-side code.

    defi serve CHECKPOINT --port 8000              # server (GPU when present)
    PolicyClient("127.0.0.1", 8000).act(obs, "…")  # robot side; openpi-client's WebsocketClientPolicy works too
"""

from defi.serve.client import PolicyClient, PolicyServerError
from defi.serve.protocol import PolicyOutputError, RequestError, RequestSpec
from defi.serve.server import PolicyServer, ServeConfig, ServerThread

__all__ = [
    "PolicyClient",
    "PolicyOutputError",
    "PolicyServer",
    "PolicyServerError",
    "RequestError",
    "RequestSpec",
    "ServeConfig",
    "ServerThread",
]
