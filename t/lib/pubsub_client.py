#!/usr/bin/python3
"""A Pub/Sub API client for the tests: Salesforce's messages, an insecure
channel.

Debian's python3-grpcio and python3-protobuf (run it with /usr/bin/python3);
the messages of pubsub_api.proto from t/lib/pubsub_proto.py.  An argument
with "=" is metadata KEY=VALUE, sent on every call.

  pubsub_client.py ADDR unary METHOD ARG... [KEY=VALUE...]
      one unary call, its deadline $PUBSUB_TIMEOUT seconds (30):
        GetTopic TOPIC            a TopicRequest
        GetSchema SCHEMA_ID       a SchemaRequest
        Publish TOPIC [N [SIZE]]  a PublishRequest of N ProducerEvents (1),
                                  ids "evt-0"..., payloads of SIZE bytes
                                  (16) of letters, each event's its own
      prints one JSON line: "code" (the status name), "details",
      "trailers", "request_sha256" (of the request's bytes as sent),
      "response" (the answer, every field, bytes in hex; null if none)
  pubsub_client.py ADDR session [KEY=VALUE...]
      the same calls on one channel (one HTTP/2 connection): one a line of
      stdin ("METHOD ARG..."), a JSON line for each
  pubsub_client.py ADDR subscribe TOPIC PRESET[:REPLAY_HEX] STEP...
                   [KEY=VALUE...]
      a Subscribe stream (deadline $PUBSUB_TIMEOUT, 60), the steps in order:
        fetch:N         send a FetchRequest for N events (the first one also
                        names TOPIC and the ReplayPreset: LATEST, EARLIEST,
                        CUSTOM after REPLAY_HEX)
        events:N        wait until N more events came
        keepalives:N    wait until N more empty FetchResponses came
        close           end the client's side (half-close)
      prints a JSON line for each FetchRequest sent ({"sent": request}) and
      for each FetchResponse as it comes (the response: "events",
      "latest_replay_id", "rpc_id", "pending_num_requested"), then the
      status line as above
"""

import hashlib
import json
import os
import queue
import sys

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pubsub_proto import METHODS, PB, SERVICE, to_dict  # noqa: E402

LETTERS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"
SCHEMA_ID = "MockSchemaId00001"


def status_line(code, details, trailers, sha=None, response=None):
    print(json.dumps({
        "code": code.name,
        "details": details,
        "trailers": {k: v for k, v in (trailers or ())},
        "request_sha256": sha,
        "response": to_dict(response) if response is not None else None,
    }), flush=True)


def payload(i, size):
    data = LETTERS * (size // len(LETTERS) + 2)
    off = (i * 7) % len(LETTERS)
    return data[off:off + size]


def request(method, args):
    if method == "GetTopic":
        return PB.TopicRequest(topic_name=args[0])
    if method == "GetSchema":
        return PB.SchemaRequest(schema_id=args[0])
    if method == "Publish":
        count = int(args[1]) if len(args) > 1 else 1
        size = int(args[2]) if len(args) > 2 else 16
        return PB.PublishRequest(topic_name=args[0], events=[
            PB.ProducerEvent(id="evt-%d" % i, schema_id=SCHEMA_ID,
                             payload=payload(i, size))
            for i in range(count)])
    raise SystemExit("pubsub_client.py: no unary method " + method)


def unary(channel, method, args, md):
    req_cls, res_cls = METHODS[method][:2]
    data = request(method, args).SerializeToString()
    sha = hashlib.sha256(data).hexdigest()
    # the bytes are serialized here, so that their sha256 is what is sent
    call = channel.unary_unary("/%s/%s" % (SERVICE, method),
                               request_serializer=(lambda b: b),
                               response_deserializer=res_cls.FromString)
    try:
        res, c = call.with_call(data, metadata=md,
                                timeout=float(os.environ.get(
                                    "PUBSUB_TIMEOUT", "30")))
        status_line(c.code(), c.details(), c.trailing_metadata(), sha, res)
    except grpc.RpcError as e:
        status_line(e.code(), e.details(), e.trailing_metadata(), sha)


def subscribe(channel, args, md):
    topic, start = args[0], args[1]
    preset, _, replay = start.partition(":")
    steps = [s.partition(":")[::2] for s in args[2:]]
    requests = queue.Queue()

    def request_stream():
        while True:
            item = requests.get()
            if item is None:
                return
            yield item

    first = [True]
    at = [0]
    got = {"events": 0, "keepalives": 0}

    def run():
        """Runs the steps up to one that waits for more than came."""
        while at[0] < len(steps):
            kind, n = steps[at[0]]
            if kind == "fetch":
                req = PB.FetchRequest(num_requested=int(n))
                if first[0]:
                    req.topic_name = topic
                    req.replay_preset = getattr(PB, preset)
                    req.replay_id = bytes.fromhex(replay)
                    first[0] = False
                print(json.dumps({"sent": to_dict(req)}), flush=True)
                requests.put(req)
            elif kind == "close":
                requests.put(None)
            elif got[kind] < int(n):
                return
            got["events"] = got["keepalives"] = 0
            at[0] += 1

    call = channel.stream_stream("/%s/Subscribe" % SERVICE,
                                 request_serializer=(
                                     lambda m: m.SerializeToString()),
                                 response_deserializer=(
                                     PB.FetchResponse.FromString))
    run()
    stream = call(request_stream(), metadata=md,
                  timeout=float(os.environ.get("PUBSUB_TIMEOUT", "60")))
    try:
        for res in stream:
            print(json.dumps(to_dict(res)), flush=True)
            if res.events:
                got["events"] += len(res.events)
            else:
                got["keepalives"] += 1
            run()
    except grpc.RpcError:
        pass
    requests.put(None)
    status_line(stream.code(), stream.details(), stream.trailing_metadata())


def main():
    addr, mode = sys.argv[1], sys.argv[2]
    args = [a for a in sys.argv[3:] if "=" not in a]
    md = [tuple(a.split("=", 1)) for a in sys.argv[3:] if "=" in a]

    with grpc.insecure_channel(addr) as channel:
        if mode == "unary":
            unary(channel, args[0], args[1:], md)
        elif mode == "session":
            for line in sys.stdin:
                words = line.split()
                if words:
                    unary(channel, words[0], words[1:], md)
        else:
            subscribe(channel, args, md)


if __name__ == "__main__":
    main()
