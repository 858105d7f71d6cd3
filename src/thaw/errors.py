"""User-facing errors: one line naming the key or file, exit code 2, no traceback."""

EXIT_USAGE = 2


class ThawError(Exception):
    """Bad input the user can fix; reported as one line with exit code 2."""

    exit_code = EXIT_USAGE


def first_line(exc: BaseException, width: int | None = 200) -> str:
    """An exception as one line for a one-line error: its message's first line (at most `width`
    characters), or its type's name where it has no message."""
    text = str(exc).strip()
    return text.splitlines()[0][:width] if text else type(exc).__name__


class ConfigError(ThawError):
    """A config value is invalid (the message starts with the key)."""


def unknown_setting(key: str, known, where: str) -> ConfigError:
    """`key: no such setting <where>`, with the nearest of `known` (names under the key's parent)
    when one is close: one line for a mistyped or appended setting."""
    import difflib

    parent, _, name = key.rpartition(".")
    text = f"{key}: no such setting {where}"
    close = difflib.get_close_matches(name, list(known), n=1)
    if close:
        text += f"; did you mean {parent + '.' if parent else ''}{close[0]}?"
    return ConfigError(text)


class DataError(ThawError):
    """The data folder or an image in it cannot be used (the message names the path)."""


class WeightsError(ThawError):
    """Backbone weights cannot be obtained or loaded."""


class TrainingError(Exception):
    """Training diverged (e.g. NaN loss); not a usage error, the trial fails."""
