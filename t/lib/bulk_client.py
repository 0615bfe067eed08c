#!/usr/bin/env python3
"""A Bulk API 1.0 client for the tests (Python standard library only): one
whole load, step by step, through a proxy (nginx).

    bulk_client.py URL [options]

The steps: create a job (POST /services/async/V/job), add a batch of CSV or
JSON records (POST .../job/ID/batch), read the batch's info (GET
.../batch/BID), its results (GET .../batch/BID/result), and close the job
(POST .../job/ID).  Options:

    --json               a JSON job (Content-Type application/json) instead
                         of XML with a CSV batch
    --session S          the X-SFDC-Session the client sends (default
                         "client-bogus-session": the proxy replaces it)
    --no-session         send no X-SFDC-Session
    --records N          records in the batch (default 3)
    --revoke-before STEP POST MOCK/__mock/revoke just before STEP (job,
                         batch, info, result, close); may be repeated
    --mock URL           the mock's base URL, for --revoke-before
    --version V          API version (default 59.0)

It prints one JSON object: "ok" (every step answered 2xx), and "steps", a
list of {"step", "status", "headers", "body"}.  It stops at the first step
that fails.
"""

import argparse
import json
import sys
import urllib.error
import urllib.request

NS = "http://www.force.com/2009/06/asyncapi/dataload"


def call(method, url, body=None, headers=None):
    req = urllib.request.Request(url, data=body, method=method,
                                 headers=headers or {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=60) as res:
            return res.status, dict(res.headers), res.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("url")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--session", default="client-bogus-session")
    ap.add_argument("--no-session", action="store_true")
    ap.add_argument("--records", type=int, default=3)
    ap.add_argument("--revoke-before", action="append", default=[])
    ap.add_argument("--mock")
    ap.add_argument("--version", default="59.0")
    args = ap.parse_args()

    base = "%s/services/async/%s" % (args.url.rstrip("/"), args.version)
    common = {} if args.no_session else {"X-SFDC-Session": args.session}
    if args.json:
        ctype = "application/json"
        job_body = json.dumps({"operation": "insert", "object": "Account",
                               "contentType": "JSON"}).encode()
        batch_body = json.dumps([{"Name": "Acme %d" % i}
                                 for i in range(args.records)]).encode()
        batch_ctype = ctype
        close_body = json.dumps({"state": "Closed"}).encode()
    else:
        ctype = "application/xml; charset=UTF-8"
        job_body = ('<?xml version="1.0" encoding="UTF-8"?><jobInfo xmlns="%s">'
                    "<operation>insert</operation><object>Account</object>"
                    "<contentType>CSV</contentType></jobInfo>" % NS).encode()
        batch_body = ("Name,Industry\n" + "".join(
            '"Acme %d",Energy\n' % i for i in range(args.records))).encode()
        batch_ctype = "text/csv"
        close_body = ('<?xml version="1.0" encoding="UTF-8"?><jobInfo xmlns="%s">'
                      "<state>Closed</state></jobInfo>" % NS).encode()

    out = {"ok": False, "steps": []}
    ids = {}

    def parse(status, headers, body):
        text = body.decode("utf-8", "replace")
        if status >= 300:
            return None
        if args.json:
            return json.loads(text)
        import xml.etree.ElementTree as ET
        root = ET.fromstring(body)
        return {el.tag.rsplit("}", 1)[-1]: el.text for el in root}

    def step(name, method, url, body=None, content_type=None):
        if name in args.revoke_before:
            call("POST", args.mock.rstrip("/") + "/__mock/revoke", b"")
        headers = dict(common)
        if content_type:
            headers["Content-Type"] = content_type
        status, res_headers, res_body = call(method, url, body, headers)
        out["steps"].append({"step": name, "status": status,
                             "headers": res_headers,
                             "body": res_body.decode("utf-8", "replace")})
        if status >= 300:
            raise StopIteration
        return status, res_headers, res_body

    try:
        job = parse(*step("job", "POST", base + "/job", job_body, ctype))
        ids["job"] = job["id"]
        batch = parse(*step("batch", "POST",
                            "%s/job/%s/batch" % (base, ids["job"]),
                            batch_body, batch_ctype))
        ids["batch"] = batch["id"]
        info = parse(*step("info", "GET", "%s/job/%s/batch/%s"
                           % (base, ids["job"], ids["batch"])))
        out["batch_state"] = info["state"]
        _, _, result = step("result", "GET", "%s/job/%s/batch/%s/result"
                            % (base, ids["job"], ids["batch"]))
        out["result"] = result.decode()
        closed = parse(*step("close", "POST", "%s/job/%s" % (base, ids["job"]),
                             close_body, ctype))
        out["job_state"] = closed["state"]
        out["ok"] = True
    except StopIteration:
        pass
    out["ids"] = ids
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
