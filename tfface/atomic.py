"""Atomic file writes: each file is written under a temporary name beside its target and renamed over it, so a
reader, or a run killed mid-write, sees the old file or the new one and never a part of one. Parent folders are
created."""
import io
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any, Callable


# the temporary name write_with gives: .<name>.<pid>.<32 hex digits>.partial<suffix>
PARTIAL_NAME = re.compile(r"\..+\.(\d+)\.[0-9a-f]{32}\.partial.*")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # alive, owned by another user
        return True
    return True


def remove_stale_partial_files(folder) -> list:
    """Removes, everywhere under `folder`, the temporary files write_with leaves when its process is killed before
    its rename (those of a running process other than this one stay); returns their paths."""
    removed = []
    for parent, _, names in os.walk(folder):
        for name in names:
            match = PARTIAL_NAME.fullmatch(name)
            if match and (int(match.group(1)) == os.getpid() or not _running(int(match.group(1)))):
                path = os.path.join(parent, name)
                os.remove(path)
                removed.append(path)
    return removed


def write_with(path, write: Callable[[str], Any], suffix: str = "") -> None:
    """Calls `write(temporary)` (a function writing a whole file at the path it is given), then renames the result
    to `path`; on any failure the temporary file is removed. `suffix` ends the temporary name, for writers that
    insist on one (Keras' `.weights.h5`, numpy's `.npz`, matplotlib's `.png`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.partial{suffix}"
    try:
        write(str(temporary))
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_bytes(path, data: bytes) -> None:
    """`data` to `path` (mode 0o666 less the umask, as for an ordinary file)."""
    def write(temporary: str) -> None:
        with open(temporary, "xb") as stream:
            stream.write(data)

    write_with(path, write)


def write_text(path, text: str) -> None:
    """`text` to `path` as UTF-8."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path, data, indent: int = 2) -> None:
    """`data` as indented JSON with a final newline."""
    write_text(path, json.dumps(data, indent=indent) + "\n")


def write_figure(path, figure, dpi: int = 100) -> None:
    """A matplotlib figure as PNG at `dpi`."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    write_bytes(path, buffer.getvalue())
