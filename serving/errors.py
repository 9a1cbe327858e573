"""The error a request handler raises to answer with a gRPC status instead of a result, and the bound on what its
message echoes of the client's input."""
import grpc

from tfface.errors import cut

# characters of a status message: gRPC sends it in a response header (8 KiB of headers by default; past that the
# client gets RESOURCE_EXHAUSTED "Stream removed" instead of the status)
MAX_MESSAGE = 1024
ECHO_LIMIT = 80  # characters of one echoed client value (a name, a shape, a list of keys)


def echoed(value, limit: int = ECHO_LIMIT) -> str:
    """str(value) cut to `limit` characters, with a count of the rest: client input inside an error message."""
    return cut(str(value), limit)


class ServingError(Exception):
    """A refused request: `code` is the grpc.StatusCode sent back, the message (str) says why, naming the field;
    it is cut to MAX_MESSAGE characters."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(echoed(message, MAX_MESSAGE))
        self.code = code
