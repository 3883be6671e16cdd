"""Per-connection episode state: each robot connection drives its own copy of the policy.

A policy's `reset()`/`act()` may keep episode state (history, a pending chunk). Two robots on one server must not
share it, so every connection gets a fork: a copy of the policy object with its own Python-level state whose
weights (every parameter and buffer of its torch modules) are shared with the loaded policy, so a fork costs
no memory for weights. A policy that needs something else defines `fork()` itself and that is used instead.
Episode state must therefore live in plain attributes, not in registered buffers (which are shared).
"""

from __future__ import annotations

import copy
import sys
from typing import Any

from defi.errors import DefiError


def _shared_tensors(policy: Any) -> dict[int, Any]:
    torch = sys.modules.get("torch")
    if torch is None:  # nothing imported torch, so the policy holds no tensors
        return {}
    modules = [policy] if isinstance(policy, torch.nn.Module) else []
    modules += [v for v in vars(policy).values() if isinstance(v, torch.nn.Module)] if hasattr(policy, "__dict__") \
        else []
    memo: dict[int, Any] = {}
    for module in modules:
        for tensor in (*module.parameters(), *module.buffers()):
            memo[id(tensor)] = tensor
    return memo


def fork_policy(policy: Any) -> Any:
    """A copy of `policy` with its own episode state and the same weights (see the module docstring)."""
    fork = getattr(policy, "fork", None)
    if callable(fork):
        return fork()
    try:
        return copy.deepcopy(policy, _shared_tensors(policy))
    except Exception as err:
        raise DefiError(
            f"cannot give each connection its own copy of {type(policy).__name__} ({type(err).__name__}: {err}); "
            "define `fork()` on the policy (return a new policy sharing the weights, with fresh episode state)"
        ) from err
