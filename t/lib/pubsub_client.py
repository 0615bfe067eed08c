#!/usr/bin/python3
"""A Pub/Sub API client for the tests: raw bytes, an insecure channel.

Debian's python3-grpcio (run it with /usr/bin/python3).

  pubsub_client.py ADDR unary METHOD BODY [KEY=VALUE...]
      one unary call (GetTopic, GetSchema, Publish) with BODY as its bytes
      ("repeat:N": N bytes "x") and the metadata KEY=VALUE, its deadline
      $PUBSUB_TIMEOUT seconds (30); prints one JSON line: "code" (the status
      name), "details", "trailers", "response" (the answer's bytes as text)
  pubsub_client.py ADDR subscribe BODY [KEY=VALUE...]
      a Subscribe stream, BODY its first request; prints a JSON line for
      each message as it comes ({"event": text}), then the status line as
      above
"""

import json
import os
import sys

import grpc


def status_line(code, details, trailers, response=None):
    print(json.dumps({
        "code": code.name,
        "details": details,
        "trailers": {k: v for k, v in (trailers or ())},
        "response": response,
    }), flush=True)


def main():
    addr, mode = sys.argv[1], sys.argv[2]
    ident = (lambda b: b)

    with grpc.insecure_channel(addr) as channel:
        if mode == "unary":
            method, body, pairs = sys.argv[3], sys.argv[4], sys.argv[5:]
            md = [tuple(p.split("=", 1)) for p in pairs]
            call = channel.unary_unary("/eventbus.v1.PubSub/" + method,
                                       request_serializer=ident,
                                       response_deserializer=ident)
            data = body.encode()
            if body.startswith("repeat:"):
                data = b"x" * int(body[7:])
            try:
                res, c = call.with_call(data, metadata=md,
                                        timeout=float(os.environ.get(
                                            "PUBSUB_TIMEOUT", "30")))
                status_line(c.code(), c.details(), c.trailing_metadata(),
                            res.decode())
            except grpc.RpcError as e:
                status_line(e.code(), e.details(), e.trailing_metadata())
            return

        body, pairs = sys.argv[3], sys.argv[4:]
        md = [tuple(p.split("=", 1)) for p in pairs]
        call = channel.stream_stream("/eventbus.v1.PubSub/Subscribe",
                                     request_serializer=ident,
                                     response_deserializer=ident)
        stream = call(iter([body.encode()]), metadata=md, timeout=60)
        try:
            for msg in stream:
                print(json.dumps({"event": msg.decode()}), flush=True)
        except grpc.RpcError:
            pass
        status_line(stream.code(), stream.details(),
                    stream.trailing_metadata())


if __name__ == "__main__":
    main()
