"""Exceptions for problems a user can cause and fix.

Every entry point catches :class:`UserError` and prints its message as one line, exiting with
status 2, so a bad config key or a missing file never ends in a deep traceback.
"""

# Exit status of a run that Ctrl-C or SIGTERM stopped (after saving its checkpoint), as a shell's.
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """A problem caused by user input (config, files, flags, tensors passed to the API).

    The message must name the offending thing and say what to do about it.
    """


class ConfigError(UserError, ValueError):
    """Invalid configuration: unknown key, wrong type, unknown model name or preset."""


class DataError(UserError, ValueError):
    """Missing or malformed data on disk: subject list, NIfTI file, shape, label values."""


class ShapeError(UserError, ValueError):
    """Tensors of the wrong shape, dimension or channel count passed to a function."""
