"""What every command (tools/, experiments/, benchmarks/, trainers/, serving/) does around its work: bad input
becomes one line `error: <message>` on stderr and exit status 2, and a JSON report is printed and written."""
import functools
import json
import sys
from typing import Callable, Optional, Sequence, Tuple, Type

from tfface import atomic

EXIT_INPUT_ERROR = 2
# a bad argument, a missing or malformed file (ConfigError is a ValueError)
USER_ERRORS: Tuple[Type[BaseException], ...] = (ValueError, FileNotFoundError, NotADirectoryError)


def user_error(error: BaseException, name: str = "") -> int:
    """Prints `[name: ]error: <message>` on stderr; returns the exit status for bad input (2)."""
    print(f"{name + ': ' if name else ''}error: {error}", file=sys.stderr)
    return EXIT_INPUT_ERROR


def command(main: Optional[Callable] = None, *, errors: Sequence[Type[BaseException]] = USER_ERRORS,
            name: str = ""):
    """Decorates a command's `main(argv) -> int`: one of `errors` raised inside it is printed as
    `[name: ]error: <message>` on stderr and the exit status is 2. Use as `@command` or `@command(name=...)`;
    a command with a long run after its checks (training, serving) catches around the checks and calls `user_error`.
    """
    def decorate(function: Callable) -> Callable:
        @functools.wraps(function)
        def wrapper(*args, **kwargs) -> int:
            try:
                return function(*args, **kwargs)
            except tuple(errors) as error:
                return user_error(error, name)

        return wrapper

    return decorate(main) if main is not None else decorate


def emit_json(record, out=None, echo: bool = True) -> str:
    """`record` as indented JSON: printed when `echo`, written atomically to `out` when given; returns the text."""
    text = json.dumps(record, indent=2)
    if echo:
        print(text)
    if out:
        atomic.write_text(out, text + "\n")
    return text
