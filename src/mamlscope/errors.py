"""Errors that name what is wrong and what to do, so a user never reads a traceback to learn it."""


class MamlscopeError(Exception):
    """Base of every error this library raises on purpose."""


class ConfigError(MamlscopeError, ValueError):
    """The configuration is invalid; the message names the key."""


class DataError(MamlscopeError, ValueError):
    """Input data is missing, corrupt or too small; the message names the file or dataset."""


class CheckpointError(MamlscopeError, ValueError):
    """A checkpoint is missing, truncated or does not fit the model asked for."""
