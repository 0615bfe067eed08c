#!/usr/bin/python3
"""A mock Salesforce Pub/Sub API (gRPC) for the tests.

Debian's python3-grpcio and python3-protobuf (run it with /usr/bin/python3),
no protoc: the service eventbus.v1.PubSub with the messages of Salesforce's
pubsub_api.proto (t/lib/pubsub_proto.py), plaintext HTTP/2 (h2c) on
127.0.0.1:PORT.  A request is read as bytes (its sha256 is recorded) and
parsed there; one that does not parse gets INVALID_ARGUMENT (3).

Every call's metadata must carry a valid "accesstoken": the mock
Salesforce (--sf-url) is asked whether it is, by a REST call with it as
the bearer token (GET /services/data/v59.0/, 200 or 401), so that a
/__mock/revoke there kills it here too.  A dead or missing token gets what
the Pub/Sub API answers (trailers-only, before any message):

    status UNAUTHENTICATED (16), "An authentication exception occurred.
    Provide valid authentication via metadata headers", trailer
    error-code: sfdc.platform.eventbus.grpc.service.auth.error

The event bus: each topic has its events in order, each with a replay id
(8 bytes, big-endian, counting up across topics).  Publish and the control
port's /publish add to it.

The calls (each answer's rpc_id names its call in /stats):

  GetTopic (TopicRequest)    a TopicInfo for the topic asked: can_publish
                             and can_subscribe true, the schema_id
                             SCHEMA_ID, tenant_guid the "tenantid" metadata
                             the call had
  GetSchema (SchemaRequest)  by its schema_id: "other16" answers 16 with
                             error-code sfdc.platform.eventbus.other;
                             "status7" answers PERMISSION_DENIED (7) with
                             the auth error-code; anything else a SchemaInfo
                             (that schema_id, an Avro record schema)
  Publish (PublishRequest)   each ProducerEvent added to the topic's events;
                             a PublishResponse with one PublishResult per
                             event, in order: its replay_id and
                             correlation_key (the event's id)
  Subscribe (FetchRequest stream, FetchResponse stream)
                             the first FetchRequest names the topic and
                             where to start (replay_preset LATEST: events
                             added after it; EARLIEST: all; CUSTOM: after
                             replay_id, INVALID_ARGUMENT if the topic has
                             none such); its num_requested and each later
                             FetchRequest's add to what may be sent.  The
                             events go out as soon as there are some and
                             something is requested, a FetchResponse of up
                             to that many (never more: with nothing
                             requested the mock waits for a FetchRequest);
                             when idle, an empty FetchResponse every
                             --keepalive seconds (0.1).  Each carries
                             latest_replay_id (of the last event sent, or
                             where the subscription started) and
                             pending_num_requested (what is still
                             requested).  The token is checked before each
                             response: a revoked one ends the stream with
                             16 and the error-code trailer.  When the
                             client ends its side (half-close), the mock
                             sends what is requested and there, then ends
                             the stream OK

The control port (--control-port, HTTP/1.1, JSON):

  GET  /stats     "calls": each call's method, "metadata" seen
                  ("accesstoken", "instanceurl", "tenantid",
                  "authorization", "x-seen", each a list), "sha256" of the
                  request's bytes (a stream's first FetchRequest), the
                  "status" it got, its "rpc_id" ("" if refused), "topic";
                  a Publish's "events"; a Subscribe's "fetch_requests" (the
                  num_requested of each FetchRequest), "events_sent" and
                  "keepalives" (recorded when the stream ends).
                  "events_sent" (all streams), "topics" (each topic's
                  number of events)
  POST /publish?topic=T&count=N
                  adds N events to topic T (id "ctl-I", payload
                  "event I of T", the schema_id SCHEMA_ID); answers their
                  "replay_ids" (hex)
  POST /reset     forgets the calls and events_sent (not the events)
"""

import argparse
import hashlib
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from google.protobuf.message import DecodeError

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pubsub_proto import METHODS, PB, SERVICE  # noqa: E402

AUTH_ERROR = "sfdc.platform.eventbus.grpc.service.auth.error"
AUTH_MESSAGE = ("An authentication exception occurred. Provide valid "
                "authentication via metadata headers")
KEYS = ("accesstoken", "instanceurl", "tenantid", "authorization",
        "x-seen")
SCHEMA_ID = "MockSchemaId00001"
SCHEMA_JSON = json.dumps({
    "type": "record", "name": "MockEvent", "namespace": "com.sforce.eventbus",
    "fields": [{"name": "CreatedDate", "type": "long"},
               {"name": "CreatedById", "type": "string"}],
})
BATCH = 100         # events in one FetchResponse at most


class State:
    def __init__(self, sf_url, keepalive):
        self.sf_url = sf_url
        self.keepalive = keepalive
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)  # an event was added
        self.calls = []
        self.events_sent = 0
        self.topics = {}        # topic: [(replay id, ProducerEvent)]
        self.replay = 0


STATE = None


def token_ok(token):
    if not token:
        return False
    req = urllib.request.Request(STATE.sf_url + "/services/data/v59.0/",
                                 headers={"Authorization": "Bearer " + token})
    try:
        with urllib.request.urlopen(req, timeout=10) as res:
            return res.status == 200
    except urllib.error.HTTPError:
        return False


def seen(context):
    md = {k: [] for k in KEYS}
    for key, value in context.invocation_metadata():
        if key in md:
            md[key].append(value)
    return md


def record(method, md, data, status, rpc_id="", **extra):
    call = {
        "method": method,
        "metadata": md,
        "sha256": hashlib.sha256(data).hexdigest(),
        "status": status,
        "rpc_id": rpc_id,
    }
    call.update(extra)
    with STATE.lock:
        STATE.calls.append(call)


def dead(context, method, md, data, **extra):
    record(method, md, data, 16, **extra)
    context.set_trailing_metadata((("error-code", AUTH_ERROR),))
    context.abort(grpc.StatusCode.UNAUTHENTICATED, AUTH_MESSAGE)


def token_of(md):
    return md["accesstoken"][0] if len(md["accesstoken"]) == 1 else None


def parse(cls, data, context, method, md):
    try:
        return cls.FromString(data)
    except DecodeError:
        record(method, md, data, 3)
        context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                      "not a " + cls.DESCRIPTOR.name)


def add_events(topic, events):
    """Adds EVENTS (ProducerEvents) to TOPIC; their replay ids."""
    ids = []
    with STATE.cond:
        log = STATE.topics.setdefault(topic, [])
        for ev in events:
            STATE.replay += 1
            rid = STATE.replay.to_bytes(8, "big")
            log.append((rid, ev))
            ids.append(rid)
        STATE.cond.notify_all()
    return ids


def unary(method):
    req_cls = METHODS[method][0]

    def handler(data, context):
        md = seen(context)
        if not token_ok(token_of(md)):
            dead(context, method, md, data)
        req = parse(req_cls, data, context, method, md)
        rpc_id = str(uuid.uuid4())

        if method == "GetTopic":
            tenant = md["tenantid"][0] if len(md["tenantid"]) == 1 else ""
            record(method, md, data, 0, rpc_id, topic=req.topic_name)
            return PB.TopicInfo(topic_name=req.topic_name,
                                tenant_guid=tenant, can_publish=True,
                                can_subscribe=True, schema_id=SCHEMA_ID,
                                rpc_id=rpc_id)

        if method == "GetSchema":
            if req.schema_id == "other16":
                record(method, md, data, 16)
                context.set_trailing_metadata(
                    (("error-code", "sfdc.platform.eventbus.other"),))
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "other")
            if req.schema_id == "status7":
                record(method, md, data, 7)
                context.set_trailing_metadata((("error-code", AUTH_ERROR),))
                context.abort(grpc.StatusCode.PERMISSION_DENIED, "denied")
            record(method, md, data, 0, rpc_id)
            return PB.SchemaInfo(schema_json=SCHEMA_JSON,
                                 schema_id=req.schema_id, rpc_id=rpc_id)

        # Publish
        ids = add_events(req.topic_name, req.events)
        record(method, md, data, 0, rpc_id, topic=req.topic_name,
               events=len(req.events))
        return PB.PublishResponse(
            results=[PB.PublishResult(replay_id=rid, correlation_key=ev.id)
                     for rid, ev in zip(ids, req.events)],
            schema_id=SCHEMA_ID, rpc_id=rpc_id)

    return handler


class Subscription:
    """What a Subscribe stream's client asked for: its FetchRequests are
    read on a thread of their own, so that one may come while the mock
    waits to send."""

    def __init__(self, first, request_iterator):
        self.pending = first.num_requested
        self.fetch_requests = [first.num_requested]
        self.closed = False
        self.bad = None
        threading.Thread(target=self.read, args=(request_iterator,),
                         daemon=True).start()

    def read(self, request_iterator):
        try:
            for data in request_iterator:
                try:
                    req = PB.FetchRequest.FromString(data)
                except DecodeError:
                    with STATE.cond:
                        self.bad = "not a FetchRequest"
                        STATE.cond.notify_all()
                    return
                with STATE.cond:
                    self.pending += req.num_requested
                    self.fetch_requests.append(req.num_requested)
                    STATE.cond.notify_all()
        except Exception:       # the call ended: cancelled, or aborted
            pass
        with STATE.cond:
            self.closed = True
            STATE.cond.notify_all()


def subscribe(request_iterator, context):
    md = seen(context)
    data = next(request_iterator, b"")
    token = token_of(md)
    if not token_ok(token):
        dead(context, "Subscribe", md, data)
    first = parse(PB.FetchRequest, data, context, "Subscribe", md)
    topic = first.topic_name

    with STATE.lock:
        log = STATE.topics.setdefault(topic, [])
        if first.replay_preset == PB.EARLIEST:
            cursor = 0
        elif first.replay_preset == PB.CUSTOM:
            ids = [rid for rid, _ in log]
            cursor = (ids.index(first.replay_id) + 1
                      if first.replay_id in ids else None)
        else:
            cursor = len(log)
        latest = log[cursor - 1][0] if cursor else b""
    if cursor is None:
        record("Subscribe", md, data, 3, topic=topic)
        context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                      "replay_id is not one of the topic's")

    sub = Subscription(first, request_iterator)
    rpc_id = str(uuid.uuid4())
    sent = keepalives = 0

    def done():
        return dict(topic=topic, fetch_requests=list(sub.fetch_requests),
                    events_sent=sent, keepalives=keepalives)

    while True:
        deadline = time.monotonic() + STATE.keepalive
        with STATE.cond:
            while True:
                log = STATE.topics[topic]
                batch = log[cursor:cursor + min(sub.pending, BATCH)]
                left = deadline - time.monotonic()
                if batch or sub.bad or sub.closed or left <= 0:
                    break
                STATE.cond.wait(left)
            if batch:
                sub.pending -= len(batch)
                cursor += len(batch)
                latest = batch[-1][0]
            pending = sub.pending
        if sub.bad:
            record("Subscribe", md, data, 3, rpc_id, **done())
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, sub.bad)
        if not batch and sub.closed:
            break
        if not token_ok(token):
            dead(context, "Subscribe", md, data, rpc_id=rpc_id, **done())
        if batch:
            sent += len(batch)
            with STATE.lock:
                STATE.events_sent += len(batch)
        else:
            keepalives += 1
        yield PB.FetchResponse(
            events=[PB.ConsumerEvent(event=ev, replay_id=rid)
                    for rid, ev in batch],
            latest_replay_id=latest, rpc_id=rpc_id,
            pending_num_requested=pending)

    record("Subscribe", md, data, 0, rpc_id, **done())


class Control(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def send_json(self, obj, status=200):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        with STATE.lock:
            self.send_json({"calls": STATE.calls,
                            "events_sent": STATE.events_sent,
                            "topics": {t: len(log) for t, log
                                       in STATE.topics.items()}})

    def do_POST(self):
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        if url.path == "/reset":
            with STATE.lock:
                STATE.calls = []
                STATE.events_sent = 0
            self.send_json({"reset": True})
        elif url.path == "/publish" and "topic" in query:
            topic = query["topic"]
            with STATE.lock:
                base = len(STATE.topics.get(topic, ()))
            events = [PB.ProducerEvent(
                id="ctl-%d" % (base + i), schema_id=SCHEMA_ID,
                payload=("event %d of %s" % (base + i, topic)).encode())
                for i in range(int(query.get("count", "1")))]
            ids = add_events(topic, events)
            self.send_json({"replay_ids": [rid.hex() for rid in ids]})
        else:
            self.send_json({"error": "POST /reset or /publish?topic=T"},
                           404)


def main():
    global STATE

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--control-port", type=int, required=True)
    ap.add_argument("--sf-url", required=True)
    ap.add_argument("--keepalive", type=float, default=0.1)
    args = ap.parse_args()

    STATE = State(args.sf_url, args.keepalive)

    # requests are read as bytes (their sha256 is recorded), answers are
    # messages
    ident = (lambda b: b)
    ser = (lambda m: m.SerializeToString())
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            unary(name), request_deserializer=ident,
            response_serializer=ser)
        for name in ("GetTopic", "GetSchema", "Publish")
    }
    handlers["Subscribe"] = grpc.stream_stream_rpc_method_handler(
        subscribe, request_deserializer=ident, response_serializer=ser)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_insecure_port("127.0.0.1:%d" % args.port)
    server.start()

    control = ThreadingHTTPServer(("127.0.0.1", args.control_port), Control)
    threading.Thread(target=control.serve_forever, daemon=True).start()

    sys.stderr.write("mock_pubsub: listening on 127.0.0.1:%d\n" % args.port)
    sys.stderr.flush()
    try:
        server.wait_for_termination()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
