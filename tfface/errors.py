"""The error type for bad user input (config keys, names, paths), which the CLIs print as one line; checks of output
folders; the OSError behind a TensorFlow error about a file."""
import errno
import os
import re
import tempfile
from pathlib import Path
from typing import Optional


class ConfigError(ValueError):
    """A problem in what the user gave (a config key, a name, a path); the message names it."""


def cut(text: str, limit: int = 80) -> str:
    """`text` cut to `limit` characters with a count of the rest: user input inside a message has a bound."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


def shown(value, limit: int = 80) -> str:
    """`repr(value)` for an error message, cut to `limit` characters (an integer of any size included: Python
    refuses to print one of more than 4300 digits)."""
    try:
        text = repr(value)
    except ValueError:  # an int too large to print
        text = f"<an integer of about {int(value.bit_length() * 0.30103) + 1} digits>"
    return cut(text, limit)


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


# what a disk refuses: TensorFlow reports these as ResourceExhaustedError, PermissionDeniedError, ... '<path>; <strerror>'
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EIO)


def file_error(error: Exception) -> Optional[OSError]:
    """The OSError (errno, strerror, the path when the message names one) that a TensorFlow error raised by a file
    write or read stands for, such as CreateSummaryFileWriter or SaveV2 on a full disk; None for any other error."""
    message = str(error)
    for number in _WRITE_ERRNOS:
        strerror = os.strerror(number)
        if strerror in message:
            path = re.search(rf"(\S+); {re.escape(strerror)}", message)
            return OSError(number, strerror, path.group(1)) if path else OSError(number, strerror)
    return None
