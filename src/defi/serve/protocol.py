"""The wire format: openpi's websocket policy protocol, and how a request becomes a policy call.

Frames are msgpack with numpy arrays packed as `{b"__ndarray__": True, b"data", b"dtype", b"shape"}` (and numpy
scalars as `{b"__npgeneric__": True, b"data", b"dtype"}`), byte-for-byte what `openpi_client.msgpack_numpy`
writes. We encode/decode here instead of importing openpi-client because the server must not depend on it (it
pins numpy<2) and because decoding untrusted frames needs checks that it does not make (dtype kinds, buffer
length against shape).

A request is a map (nested maps are flattened with "." and "/" is read as ".", so `observation/images/corner`,
`{"observation": {"images": {"corner": ...}}}` and `observation.images.corner` are the same key):

    observation.images.<camera>   uint8 [h, w, 3] for every camera in the server metadata's `cameras`
    observation.state             float [state_dim] (required when the metadata's `state_dim` > 0)
    prompt | task                 str, the instruction (openpi's key | LeRobot's key)
    reset                         bool, optional: start a new episode for this connection before acting;
                                  a request holding only `reset: true` resets without acting
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from defi.errors import DefiError

IMAGE_PREFIX = "observation.images."
STATE_KEY = "observation.state"
INSTRUCTION_KEYS = ("prompt", "task")
RESET_KEY = "reset"
# Array dtypes a request may carry: bool, signed/unsigned integers, floats (openpi refuses V, O and c as well).
_ALLOWED_KINDS = "biuf"


class RequestError(DefiError):
    """A request that cannot be served as sent (bad frame, missing key, wrong shape or dtype)."""


class PolicyOutputError(DefiError):
    """The policy returned actions that must not reach a robot (wrong shape, NaN or infinite values)."""


# ------------------------------------------------------------------------------------------------- msgpack codec


def _encode(obj: Any) -> Any:
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind in ("V", "O", "c"):
        raise TypeError(f"cannot send numpy dtype {obj.dtype} (structured, object and complex arrays are refused)")
    if isinstance(obj, np.ndarray):
        obj = np.ascontiguousarray(obj)
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": obj.shape}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot send an object of type {type(obj).__name__}")


def _checked_dtype(raw: Any) -> np.dtype:
    if not isinstance(raw, str):
        raise RequestError(f"array dtype {raw!r}: expected a numpy dtype string such as '|u1' or '<f4'")
    try:
        dtype = np.dtype(raw)
    except TypeError:
        raise RequestError(f"array dtype {raw!r}: not a numpy dtype") from None
    if dtype.kind not in _ALLOWED_KINDS:
        raise RequestError(f"array dtype {raw!r}: only bool, integer and float arrays are accepted")
    return dtype


def _decode(obj: dict) -> Any:
    if b"__ndarray__" in obj:
        data, shape = obj.get(b"data"), obj.get(b"shape")
        dtype = _checked_dtype(obj.get(b"dtype"))
        if not isinstance(data, bytes):
            raise RequestError("array data: expected bytes")
        if not isinstance(shape, (list, tuple)) or not all(
            type(d) is int and d >= 0 for d in shape
        ):
            raise RequestError(f"array shape {shape!r}: expected a list of non-negative integers")
        if math.prod(shape) * dtype.itemsize != len(data):
            raise RequestError(f"array of shape {list(shape)} and dtype {dtype} needs "
                               f"{math.prod(shape) * dtype.itemsize} bytes, got {len(data)}")
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    if b"__npgeneric__" in obj:
        dtype, value = _checked_dtype(obj.get(b"dtype")), obj.get(b"data")
        fits = isinstance(value, (bool, int, float)) and (
            dtype.kind not in "iu" or (isinstance(value, int) and np.iinfo(dtype).min <= value <= np.iinfo(dtype).max))
        if not fits:
            raise RequestError(f"numpy scalar {value!r} does not fit dtype {dtype}")
        return dtype.type(value)
    return obj


def packb(obj: Any) -> bytes:
    return msgpack.packb(obj, default=_encode)


def unpackb(data: bytes) -> Any:
    """Decode one frame; anything malformed raises `RequestError`."""
    try:
        return msgpack.unpackb(data, object_hook=_decode)
    except RequestError:
        raise
    except Exception as err:  # msgpack raises a zoo of types (ExtraData, FormatError, StackError, ValueError, ...)
        raise RequestError(f"frame is not valid msgpack ({type(err).__name__}: {err})") from None


# ---------------------------------------------------------------------------------------------- request parsing


@dataclass(frozen=True)
class RequestSpec:
    """What the served policy needs in a request, read from its metadata (absent entries are not checked)."""

    cameras: tuple[str, ...] | None = None
    image_hw: tuple[int, int] | None = None
    state_dim: int | None = None
    action_dim: int | None = None
    action_horizon: int | None = None

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> RequestSpec:
        size = metadata.get("image_size")
        if isinstance(size, int):
            size = (size, size)
        return cls(
            cameras=tuple(metadata["cameras"]) if metadata.get("cameras") is not None else None,
            image_hw=tuple(int(s) for s in size) if size is not None else None,
            state_dim=metadata.get("state_dim"),
            action_dim=metadata.get("action_dim"),
            action_horizon=metadata.get("action_horizon"),
        )


@dataclass
class Request:
    observation: dict[str, np.ndarray]
    instruction: str | None
    reset: bool
    act: bool  # False for a reset-only request


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if not isinstance(key, str):
            raise RequestError(f"request key {key!r}: expected a string")
        name = prefix + key.replace("/", ".")
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _check_image(key: str, image: Any, image_hw: tuple[int, int] | None) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise RequestError(f"{key}: expected a uint8 numpy array [h, w, 3], got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise RequestError(f"{key}: dtype {image.dtype}, expected uint8 (0..255)")
    if image.ndim != 3 or image.shape[-1] != 3:
        hint = " (looks channel-first: send HWC, e.g. image.transpose(1, 2, 0))" if (
            image.ndim == 3 and image.shape[0] == 3) else ""
        raise RequestError(f"{key}: shape {list(image.shape)}, expected [h, w, 3]{hint}")
    if image_hw is not None and tuple(image.shape[:2]) != image_hw:
        raise RequestError(f"{key}: shape {list(image.shape)}, expected [{image_hw[0]}, {image_hw[1]}, 3] "
                           "(resize on the robot side, e.g. openpi_client.image_tools.resize_with_pad)")
    return np.array(image)  # writable copy: the decoded frame is a read-only view of the message buffer


def _check_state(state: Any, state_dim: int | None) -> np.ndarray:
    if isinstance(state, (list, tuple)):
        state = np.asarray(state)
    if not isinstance(state, np.ndarray) or state.dtype.kind not in "iuf":
        raise RequestError(f"{STATE_KEY}: expected a float numpy array [{state_dim or 'S'}], got "
                           f"{getattr(state, 'dtype', type(state).__name__)}")
    expected = (state_dim,) if state_dim else None
    if (expected and state.shape != expected) or state.ndim != 1:
        raise RequestError(f"{STATE_KEY}: shape {list(state.shape)}, expected [{state_dim or 'S'}]")
    state = state.astype(np.float32)
    if not np.isfinite(state).all():
        raise RequestError(f"{STATE_KEY}: contains NaN or infinite values")
    return state


def parse_request(message: Any, spec: RequestSpec) -> Request:
    """Check a decoded request against the policy's needs and build the `act` arguments."""
    if not isinstance(message, dict):
        raise RequestError(f"a request must be a map of keys to values, got {type(message).__name__}")
    flat = _flatten(message)
    reset = flat.pop(RESET_KEY, False)
    if not isinstance(reset, (bool, np.bool_)):
        raise RequestError(f"{RESET_KEY}: expected true or false, got {reset!r}")
    if reset and not flat:
        return Request(observation={}, instruction=None, reset=True, act=False)

    instructions = {k: flat[k] for k in INSTRUCTION_KEYS if k in flat}
    if not instructions:
        raise RequestError("missing the instruction: send it as 'prompt' (openpi) or 'task' (LeRobot)")
    for key, value in instructions.items():
        if not isinstance(value, str):
            raise RequestError(f"{key}: expected a string, got {type(value).__name__}")
    if len(set(instructions.values())) > 1:
        raise RequestError(f"'prompt' and 'task' disagree ({instructions['prompt']!r} vs {instructions['task']!r}); "
                           "send one of them")
    instruction = next(iter(instructions.values()))

    observation: dict[str, np.ndarray] = {}
    sent = sorted(k[len(IMAGE_PREFIX):] for k in flat if k.startswith(IMAGE_PREFIX))
    cameras = spec.cameras if spec.cameras is not None else sent
    for camera in cameras:
        key = IMAGE_PREFIX + camera
        if key not in flat:
            raise RequestError(f"missing image {key!r}: the policy needs cameras {list(cameras)}, the request has "
                               f"cameras {sent} (all its keys: {sorted(flat)})")
        observation[key] = _check_image(key, flat[key], spec.image_hw)

    if STATE_KEY in flat:
        observation[STATE_KEY] = _check_state(flat[STATE_KEY], spec.state_dim)
    elif spec.state_dim:
        raise RequestError(f"missing {STATE_KEY!r}: the policy needs a float array [{spec.state_dim}]")
    return Request(observation=observation, instruction=instruction, reset=bool(reset), act=True)


def check_actions(actions: Any, spec: RequestSpec) -> np.ndarray:
    """The policy's chunk as float32 [H, A]; refuse anything that must not be sent to a robot."""
    if hasattr(actions, "detach"):  # a torch tensor
        actions = actions.detach().cpu().numpy()
    actions = np.asarray(actions)
    if actions.dtype.kind not in "iuf":
        raise PolicyOutputError(f"policy returned actions of dtype {actions.dtype}, expected float32 [H, A]")
    expected = [spec.action_horizon or "H", spec.action_dim or "A"]
    if actions.ndim != 2 or any(isinstance(e, int) and e != s for e, s in zip(expected, actions.shape)):
        raise PolicyOutputError(f"policy returned actions of shape {list(actions.shape)}, expected {expected}")
    actions = actions.astype(np.float32)
    if not np.isfinite(actions).all():
        raise PolicyOutputError("policy returned NaN or infinite actions; nothing was sent to the robot")
    return actions
