"""User-facing errors.

Anything a user can cause (a bad config value, a missing checkpoint, a corrupt file) raises a `DefiError`
whose message names the thing and what was expected; the CLI prints it as one line (`--debug` shows the
traceback). Programming errors stay ordinary exceptions.
"""


class DefiError(Exception):
    """An error caused by the user's input or environment, reported in one line."""


class ConfigError(DefiError):
    """A config key is unknown, has the wrong type or an impossible value."""


class CheckpointError(DefiError):
    """A checkpoint is missing, incomplete or corrupt."""


class TrainingDiverged(DefiError):
    """The loss became NaN or infinite."""


class ShapeError(DefiError):
    """A tensor handed across a module border has the wrong shape or dtype."""


def check_shape(name: str, tensor: object, expected: tuple[int | str | None, ...], hint: str = "") -> None:
    """Raise `ShapeError` unless `tensor.shape` matches `expected`.

    Entries of `expected`: an int (that size), None (any size) or a letter such as "B" (any size; the letter is
    only shown in the message). `hint` names where the expected sizes come from (e.g. "config key action_dim").
    """
    shape = tuple(getattr(tensor, "shape", ()))
    ok = len(shape) == len(expected) and all(not isinstance(e, int) or e == s for e, s in zip(expected, shape))
    if not ok:
        want = ", ".join("?" if e is None else str(e) for e in expected)
        raise ShapeError(f"{name}: expected shape [{want}], got {list(shape)}" + (f" ({hint})" if hint else ""))
