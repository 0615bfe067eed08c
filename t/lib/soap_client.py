#!/usr/bin/python3
"""A real SOAP client for the tests: python3-zeep, generated from the
partner-like WSDL (t/lib/wsdl/partner.wsdl, or the mock's
/__mock/wsdl/partner.wsdl), sending to a proxy (nginx).

    soap_client.py URL OPERATION [options]

URL is the base of the proxy, e.g. http://127.0.0.1:8080; the calls go to
URL/services/Soap/u/VERSION.  OPERATION is query, create, describe or
login.  Options:

    --wsdl PATH_OR_URL   the WSDL (default: t/lib/wsdl/partner.wsdl)
    --version V          API version (default 59.0)
    --session S          the SessionHeader's sessionId (default "bogus": a
                         legacy app's stale value, which the proxy replaces)
    --no-session         send no SessionHeader at all
    --soql Q             query: the SOQL
    --name N             create: the Account's Name (repeat for several)
    --type T             describe: the sObject type (default Account)
    --username U, --password P
                         login

It prints one JSON object: "ok"; "result" (the answer, as plain data) or
"fault" ({"code", "message"}); "status" and "headers" of the HTTP answer;
"sent" (the envelope zeep sent, as zeep wrote it) and "received" (the raw
body of the answer).  Exit status 0 unless the client itself broke.
"""

import argparse
import json
import os
import sys

import requests
from zeep import Client, Settings
from zeep.exceptions import Fault, TransportError
from zeep.helpers import serialize_object
from zeep.transports import Transport

HERE = os.path.dirname(os.path.abspath(__file__))


class RecordingTransport(Transport):
    """Keeps the last HTTP exchange: what was sent and what came back."""

    last = None

    def post(self, address, message, headers):
        response = super().post(address, message, headers)
        RecordingTransport.last = {
            "sent": message.decode("utf-8", "replace")
            if isinstance(message, bytes) else message,
            "status": response.status_code,
            "headers": dict(response.headers),
            "received": response.content.decode("utf-8", "replace"),
        }
        return response


def plain(value):
    """zeep's answer as JSON-able data."""
    value = serialize_object(value, dict)
    return json.loads(json.dumps(value, default=str))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("url")
    ap.add_argument("operation",
                    choices=("query", "create", "describe", "login"))
    ap.add_argument("--wsdl", default=os.path.join(HERE, "wsdl",
                                                   "partner.wsdl"))
    ap.add_argument("--version", default="59.0")
    ap.add_argument("--session", default="bogus")
    ap.add_argument("--no-session", action="store_true")
    ap.add_argument("--soql", default="SELECT Id, Name FROM Account")
    ap.add_argument("--name", action="append")
    ap.add_argument("--type", default="Account")
    ap.add_argument("--username", default="integration@example.com")
    ap.add_argument("--password", default="hunter2")
    ap.add_argument("--timeout", type=float, default=60)
    args = ap.parse_args()

    session = requests.Session()
    session.trust_env = False  # no proxy from the environment
    transport = RecordingTransport(session=session, timeout=args.timeout,
                                   operation_timeout=args.timeout)
    client = Client(args.wsdl, transport=transport,
                    settings=Settings(strict=True, xml_huge_tree=True))
    address = "%s/services/Soap/u/%s" % (args.url.rstrip("/"), args.version)
    service = client.create_service("{urn:partner.soap.sforce.com}SoapBinding",
                                    address)

    headers = {}
    if not args.no_session:
        session_header = client.get_element(
            "{urn:partner.soap.sforce.com}SessionHeader")
        headers["_soapheaders"] = [session_header(sessionId=args.session)]

    out = {"ok": False}
    try:
        if args.operation == "query":
            result = service.query(queryString=args.soql, **headers)
        elif args.operation == "create":
            sobject = client.get_type(
                "{urn:sobject.partner.soap.sforce.com}sObject")
            result = service.create(
                sObjects=[sobject(type="Account", Name=n)
                          for n in args.name or ["Acme"]], **headers)
        elif args.operation == "describe":
            result = service.describeSObject(sObjectType=args.type,
                                             **headers)
        else:
            result = service.login(username=args.username,
                                   password=args.password)
        out["ok"] = True
        out["result"] = plain(result)
    except Fault as e:
        out["fault"] = {"code": e.code, "message": e.message}
    except TransportError as e:
        out["transport_error"] = {"status": e.status_code,
                                  "message": str(e)}
    if RecordingTransport.last:
        out.update(RecordingTransport.last)
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
