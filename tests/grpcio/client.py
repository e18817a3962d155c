"""A gRPC client on grpcio, for tests/web_grpc.rs: one unary call, its outcome as JSON.

Usage: client.py <host:port> <method path> <message> [token]
Prints {"code": "<StatusCode name>", "details": ..., "reply": ...}.
"""

import json
import sys

import grpc


def main():
    target, path, message = sys.argv[1:4]
    token = sys.argv[4] if len(sys.argv) > 4 else None
    metadata = [("authorization", f"Bearer {token}")] if token else []
    options = [("grpc.enable_http_proxy", 0)]
    with grpc.insecure_channel(target, options=options) as channel:
        call = channel.unary_unary(path)
        try:
            reply = call(message.encode(), metadata=metadata, timeout=20)
            outcome = {"code": "OK", "details": "", "reply": reply.decode()}
        except grpc.RpcError as err:
            outcome = {"code": err.code().name, "details": err.details(), "reply": None}
    print(json.dumps(outcome), flush=True)


if __name__ == "__main__":
    main()
