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
