"""User-facing errors: one line naming the key or file, exit code 2, no traceback."""

EXIT_USAGE = 2


class ThawError(Exception):
    """Bad input the user can fix; reported as one line with exit code 2."""

    exit_code = EXIT_USAGE


class ConfigError(ThawError):
    """A config value is invalid (the message starts with the key)."""


class DataError(ThawError):
    """The data folder or an image in it cannot be used (the message names the path)."""


class WeightsError(ThawError):
    """Backbone weights cannot be obtained or loaded."""


class TrainingError(Exception):
    """Training diverged (e.g. NaN loss); not a usage error, the trial fails."""
