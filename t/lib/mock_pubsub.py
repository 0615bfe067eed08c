#!/usr/bin/python3
"""A mock Salesforce Pub/Sub API (gRPC) for the tests.

Debian's python3-grpcio (run it with /usr/bin/python3), no protoc: the
service eventbus.v1.PubSub with raw bytes in and out (identity
serializers), plaintext HTTP/2 (h2c) on 127.0.0.1:PORT.

Every call's metadata must carry a valid "accesstoken": the mock
Salesforce (--sf-url) is asked whether it is, by a REST call with it as
the bearer token (GET /services/data/v59.0/, 200 or 401), so that a
/__mock/revoke there kills it here too.  A dead or missing token gets what
the Pub/Sub API answers (trailers-only, before any message):

    status UNAUTHENTICATED (16), "An authentication exception occurred.
    Provide valid authentication via metadata headers", trailer
    error-code: sfdc.platform.eventbus.grpc.service.auth.error

The calls:

  GetTopic, Publish (unary)  answer a JSON document: the method, the
                             metadata seen ("accesstoken", "instanceurl",
                             "tenantid", "authorization", "x-seen", each a
                             list) and
                             the request's bytes (hex) and their sha256
  GetSchema (unary)          by the request's bytes: "other16" answers 16
                             with error-code sfdc.platform.eventbus.other;
                             "status7" answers PERMISSION_DENIED (7) with
                             the auth error-code; anything else as GetTopic
  Subscribe (stream)         the first request's bytes: "events=N" ends
                             the stream OK after N events; else it goes on
                             (up to 2000 events).  An event ("event I") or
                             a keepalive (empty) every 20 ms; the token is
                             checked before each, and a revoked one ends
                             the stream with 16 and the error-code trailer

The control port (--control-port, HTTP/1.1, JSON):

  GET  /stats     "calls": each call's method, metadata seen, request
                  bytes' sha256 and the status it got; "events_sent"
  POST /reset     forget the calls
"""

import argparse
import hashlib
import json
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc

AUTH_ERROR = "sfdc.platform.eventbus.grpc.service.auth.error"
AUTH_MESSAGE = ("An authentication exception occurred. Provide valid "
                "authentication via metadata headers")
KEYS = ("accesstoken", "instanceurl", "tenantid", "authorization",
        "x-seen")


class State:
    def __init__(self, sf_url):
        self.sf_url = sf_url
        self.lock = threading.Lock()
        self.calls = []
        self.events_sent = 0


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


def record(method, md, data, status):
    with STATE.lock:
        STATE.calls.append({
            "method": method,
            "metadata": md,
            "sha256": hashlib.sha256(data).hexdigest(),
            "status": status,
        })


def dead(context, method, md, data):
    record(method, md, data, 16)
    context.set_trailing_metadata((("error-code", AUTH_ERROR),))
    context.abort(grpc.StatusCode.UNAUTHENTICATED, AUTH_MESSAGE)


def token_of(md):
    return md["accesstoken"][0] if len(md["accesstoken"]) == 1 else None


def unary(method):
    def handler(data, context):
        md = seen(context)
        if not token_ok(token_of(md)):
            dead(context, method, md, data)
        if method == "GetSchema" and data == b"other16":
            record(method, md, data, 16)
            context.set_trailing_metadata(
                (("error-code", "sfdc.platform.eventbus.other"),))
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "other")
        if method == "GetSchema" and data == b"status7":
            record(method, md, data, 7)
            context.set_trailing_metadata((("error-code", AUTH_ERROR),))
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "denied")
        record(method, md, data, 0)
        return json.dumps({
            "method": method,
            "metadata": md,
            "body_hex": data.hex(),
            "sha256": hashlib.sha256(data).hexdigest(),
        }).encode()
    return handler


def subscribe(request_iterator, context):
    md = seen(context)
    first = next(request_iterator, b"")
    token = token_of(md)
    if not token_ok(token):
        dead(context, "Subscribe", md, first)
    events = 2000
    if first.startswith(b"events="):
        events = int(first[7:])
    for i in range(events):
        time.sleep(0.02)
        if not token_ok(token):
            dead(context, "Subscribe", md, first)
        with STATE.lock:
            STATE.events_sent += 1
        # every third message is a keepalive: an empty response
        yield b"" if i % 3 == 2 else ("event %d" % i).encode()
    record("Subscribe", md, first, 0)


class Control(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def send_json(self, obj):
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        with STATE.lock:
            self.send_json({"calls": STATE.calls,
                            "events_sent": STATE.events_sent})

    def do_POST(self):
        with STATE.lock:
            STATE.calls = []
            STATE.events_sent = 0
        self.send_json({"reset": True})


def main():
    global STATE

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--control-port", type=int, required=True)
    ap.add_argument("--sf-url", required=True)
    args = ap.parse_args()

    STATE = State(args.sf_url)

    ident = (lambda b: b)
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            unary(name), request_deserializer=ident,
            response_serializer=ident)
        for name in ("GetTopic", "GetSchema", "Publish")
    }
    handlers["Subscribe"] = grpc.stream_stream_rpc_method_handler(
        subscribe, request_deserializer=ident, response_serializer=ident)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("eventbus.v1.PubSub",
                                              handlers),))
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
