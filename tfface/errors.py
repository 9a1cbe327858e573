"""The error type for bad user input (config keys, names, paths); the CLIs print it as one line."""
import os
import tempfile
from pathlib import Path


class ConfigError(ValueError):
    """A problem in what the user gave (a config key, a name, a path); the message names it."""


def shown(value, limit: int = 80) -> str:
    """`repr(value)` for an error message, cut to `limit` characters with a count of the rest, so a message never
    echoes unbounded user input (an integer of any size included: Python refuses to print one of > 4300 digits)."""
    try:
        text = repr(value)
    except ValueError:  # an int too large to print
        text = f"<an integer of about {int(value.bit_length() * 0.30103) + 1} digits>"
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def check_output_folder(folder, flag: str, given=None) -> None:
    """ConfigError naming `flag` and its value `given` (default: `folder`) unless `folder` is a folder or can be made
    one: the nearest of it and its ancestors that exists must be a folder (a file in the way is named). Run it before
    the work whose results go there."""
    folder = Path(folder)
    for candidate in (folder, *folder.absolute().parents):
        if candidate.exists():
            if not candidate.is_dir():
                raise ConfigError(f"{flag} {folder if given is None else given}: {candidate} is not a folder")
            return


def check_writable_folder(folder, flag: str) -> None:
    """Creates `folder` and writes and removes a probe file there: a read-only or full folder is a ConfigError naming
    `flag`, the path and the errno, before any work."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-probe-") as probe:
            probe.write(b"\0" * 4096)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as error:
        raise ConfigError(f"{flag} {folder}: cannot write there: [Errno {error.errno}] {error.strerror}") from None
