"""Expected failures: shown to the user as one clear line, without a traceback."""


class WSPError(Exception):
    """Base class of every expected error; the CLI prints it and exits with `exit_code`."""

    exit_code = 2


class InputError(WSPError):
    """A user file (image, mask, manifest) is missing, unreadable or inconsistent."""


class ConfigError(WSPError):
    """A command-line flag or configuration value is invalid."""


class BundleError(WSPError):
    """A model bundle is missing, corrupt, or incompatible with this software."""


class Cancelled(WSPError):
    """The user cancelled a long-running job; nothing partial was left behind."""

    exit_code = 130
