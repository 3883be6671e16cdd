"""`defi serve CHECKPOINT`: load a saved policy and serve it until Ctrl-C."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from defi.policies import load_policy
from defi.serve.server import PolicyServer, ServeConfig

API_KEY_ENV = "DEFI_API_KEY"


@dataclass(kw_only=True)
class ServeCommand(ServeConfig):
    """`defi serve`: serve a saved policy over websockets + msgpack (openpi's protocol) to robot clients. The API
    key may also be given in the DEFI_API_KEY environment variable."""

    checkpoint: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(
        metavar="CHECKPOINT", help="a saved policy directory (or a run directory holding model/)")]


def build_server(checkpoint: str | Path, config: ServeConfig) -> PolicyServer:
    """Load the policy on its device and wrap it in a server (not started yet)."""
    return PolicyServer(load_policy(checkpoint, device=config.device), config)


def run(cmd: ServeCommand) -> int:
    fields = {k: v for k, v in vars(cmd).items() if k != "checkpoint"}
    config = ServeConfig(**fields)
    if config.api_key is None and os.environ.get(API_KEY_ENV):
        config.api_key = os.environ[API_KEY_ENV]
    config.validate()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)  # defi.serve logs each connection already
    server = build_server(cmd.checkpoint, config)
    print(f"defi serve: {server.metadata.get('policy_type')} from {cmd.checkpoint} on ws://{config.host}:"
          f"{config.port} (device {server.metadata['server']['device']}, auth {'on' if config.api_key else 'off'}); "
          "Ctrl-C stops", flush=True)
    server.run()
    print("defi serve: stopped", flush=True)
    return 0
