"""The error a request handler raises to answer with a gRPC status instead of a result."""
import grpc


class ServingError(Exception):
    """A refused request: `code` is the grpc.StatusCode sent back, the message (str) says why, naming the field."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
