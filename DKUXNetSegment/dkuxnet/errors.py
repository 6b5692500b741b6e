"""Error types the core raises for problems the user can fix.

The CLI prints these as one clear line (no traceback unless ``--verbose``) and exits non-zero;
anything else is a bug and keeps its traceback.
"""


class DKUXNetError(Exception):
    """Base class: a problem with the user's input, files or settings."""


class InputError(DKUXNetError, ValueError):
    """An image, label or dataset that cannot be used as given."""


class ConfigError(DKUXNetError, ValueError):
    """An unknown, mistyped or out-of-range configuration value."""


class CheckpointError(DKUXNetError):
    """A checkpoint that is missing, truncated, foreign or from a newer format."""


class OutputExistsError(DKUXNetError, FileExistsError):
    """Refusing to overwrite a file or run folder the user already has."""


class RunLockedError(DKUXNetError):
    """Another process is writing to the same run folder."""
