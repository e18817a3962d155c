"""A gRPC server on grpcio (the C-core implementation), for tests/web_grpc.rs.

Serves `test.Echo/Say` and `test.Admin/Do` with raw-bytes messages (no generated code):
the answer is `<x-auth-subject metadata>:<message>`; the message `fail` is NOT_FOUND
with the details `no such thing`. Prints its port on the first line of stdout.
"""

import sys
from concurrent import futures

import grpc


def say(request, context):
    if request == b"fail":
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    metadata = dict(context.invocation_metadata())
    subject = metadata.get("x-auth-subject", "-")
    return f"{subject}:{request.decode()}".encode()


def main():
    handlers = [
        grpc.method_handlers_generic_handler(
            "test.Echo", {"Say": grpc.unary_unary_rpc_method_handler(say)}
        ),
        grpc.method_handlers_generic_handler(
            "test.Admin", {"Do": grpc.unary_unary_rpc_method_handler(say)}
        ),
    ]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=handlers)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    # Stops when the test closes stdin (or dies, taking the pipe with it).
    sys.stdin.read()
    server.stop(grace=None)


if __name__ == "__main__":
    main()
