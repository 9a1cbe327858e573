"""What every command (tools/, experiments/, benchmarks/, trainers/, serving/) does around its work: bad input
becomes one line `error: <message>` on stderr and exit status 2, and a JSON report is printed and written."""
import functools
import glob
import json
import os
import sys
import tempfile
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


VERBOSE_FLAG = "--verbose"


def quiet_tensorflow(argv: Optional[Sequence[str]] = None) -> None:
    """Call before the first `import tensorflow`: imports it without its start-up notices (CUDA stubs, cuInit, oneDNN,
    CPU features) unless VERBOSE_FLAG is among `argv` (default sys.argv[1:]). On a machine without an NVIDIA device
    TensorFlow's C++ log shows fatal messages only (TF_CPP_MIN_LOG_LEVEL 3), else warnings and errors (2); the
    notices printed while loading its libraries, which no setting silences, are held back and shown only when the
    import fails. A TF_CPP_MIN_LOG_LEVEL set by the user wins. Does nothing once TensorFlow is imported."""
    if "tensorflow" in sys.modules or VERBOSE_FLAG in (sys.argv[1:] if argv is None else argv):
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2" if glob.glob("/dev/nvidia[0-9]*") else "3")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            import tensorflow as tf
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    tf.get_logger().setLevel("ERROR")


def prefer_onednn() -> None:
    """Call before the first `import tensorflow` (trainers.train, tools.evaluate, the model server, the real-face
    study): turns on TensorFlow's oneDNN CPU kernels (TF_ENABLE_ONEDNN_OPTS=1) unless TF_ENABLE_ONEDNN_OPTS is set
    already (the user's setting wins). TensorFlow enables them by itself only on CPUs with AVX-512 VNNI, BF16 or AMX;
    on the AVX2-only development machine its default kernels ran the MobileFaceNet SavedModel at batch 64 at 28 images
    per CPU-second, oneDNN's at 51 (answers equal to 2.5e-7), and training steps at about half oneDNN's rate.
    Does nothing once TensorFlow is imported."""
    if "tensorflow" not in sys.modules:
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def add_verbose_argument(parser) -> None:
    """The VERBOSE_FLAG option quiet_tensorflow reads (declared so that argparse accepts it)."""
    parser.add_argument(VERBOSE_FLAG, action="store_true",
                        help="show TensorFlow's start-up notices and warnings (hidden by default)")
