#!/usr/bin/env python3
"""A stand-in for the module's sf_oauth_console, for the tests of the test
tools alone (SfTest's connect_flow, t/lib/console_browser.py) before and
besides the module: the same contract, in a few lines of Python standard
library.  It is not the module and proves nothing about it.

  GET  /sf_oauth/           the page: per credential (--credential NAME,
                            repeatable) <form method="post"
                            action="/sf_oauth/connect"> with hidden
                            "credential" and "form" (a form token), and a
                            Connect button; the module's safety headers
                            (CSP form-action 'self' and the mock's origin,
                            or 'self' alone with --form-action-self;
                            Referrer-Policy: no-referrer...)
  POST /sf_oauth/connect    the form token, and Sec-Fetch-Site: same-origin
                            (when sent) or an Origin that is this one or
                            "null"; else 403.  Then 303 to the mock's
                            authorize URL (state, PKCE S256, prompt, scope)
                            with the cookie sf_oauth_connect (HttpOnly,
                            SameSite=Lax, Path=/sf_oauth/)
  GET  /sf_oauth/callback   error=...: 400 page naming it; an unknown or
                            spent state: 400; no or another cookie: 403;
                            else the code exchange at the mock, and a page
                            "Connected" (or, for another user than the one
                            connected, a confirm form: POST
                            /sf_oauth/confirm with the state)
  GET  /sf_oauth/__state    JSON: per credential the user id connected and
                            a count of connections, the refusals, and the
                            Origin and Sec-Fetch-Site of each connect POST
"""

import argparse
import base64
import hashlib
import hmac
import html
import json
import secrets
import threading
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KEY = secrets.token_bytes(32)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def page(self, status, title, body, headers=()):
        a = self.server.args
        data = ('<!DOCTYPE html><html><head><meta charset="utf-8"><title>%s'
                '</title></head><body><h1>%s</h1>%s</body></html>'
                % (html.escape(title), html.escape(title), body)).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Content-Security-Policy",
                         "default-src 'none'; style-src 'unsafe-inline'; "
                         "form-action 'self'%s; frame-ancestors 'none'"
                         % ("" if a.form_action_self else " " + a.mock))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def token(self, name):
        return hmac.new(KEY, name.encode(), hashlib.sha256).hexdigest()

    def refuse(self, status, why):
        st = self.server.st
        with st["lock"]:
            st["refusals"].append(why)
        return self.page(status, "Refused", "<p>%s</p>" % html.escape(why))

    def do_GET(self):
        self.route()

    def do_POST(self):
        self.route()

    def route(self):
        a = self.server.args
        st = self.server.st
        u = urllib.parse.urlsplit(self.path)
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n).decode() if n else ""
        q = {k: v[0] for k, v in urllib.parse.parse_qs(
            u.query if self.command == "GET" else body).items()}
        me = "http://127.0.0.1:%d" % self.server.server_address[1]

        if u.path == "/sf_oauth/__state":
            with st["lock"]:
                data = json.dumps({"creds": st["creds"],
                                   "refusals": st["refusals"],
                                   "connect_headers":
                                   st["connect_headers"]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            return self.wfile.write(data)

        if u.path == "/sf_oauth/" and self.command == "GET":
            rows = "".join(
                '<tr><td>%s</td><td>%s</td><td><form method="post" '
                'action="/sf_oauth/connect"><input type="hidden" '
                'name="credential" value="%s"><input type="hidden" '
                'name="form" value="%s"><button type="submit">Connect'
                '</button></form></td></tr>'
                % (html.escape(c), html.escape(
                    st["creds"].get(c, {}).get("user") or "not connected"),
                   html.escape(c), self.token(c)) for c in a.credential)
            return self.page(200, "sf_oauth console",
                             "<table>%s</table>" % rows)

        if u.path == "/sf_oauth/connect" and self.command == "POST":
            cred = q.get("credential", "")
            if cred not in a.credential:
                return self.refuse(400, "no such credential")
            if not hmac.compare_digest(q.get("form", ""), self.token(cred)):
                return self.refuse(403, "form token")
            site = self.headers.get("Sec-Fetch-Site")
            origin = self.headers.get("Origin")
            with st["lock"]:
                st["connect_headers"].append({"origin": origin,
                                              "sec_fetch_site": site})
            if site is not None and site != "same-origin":
                return self.refuse(403, "cross-site")
            if site is None and origin not in (me, "null"):
                return self.refuse(403, "origin")
            state = secrets.token_urlsafe(16)
            cookie = secrets.token_urlsafe(16)
            verifier = secrets.token_urlsafe(48)
            challenge = base64.urlsafe_b64encode(hashlib.sha256(
                verifier.encode()).digest()).rstrip(b"=").decode()
            redirect_uri = me + "/sf_oauth/callback"
            with st["lock"]:
                st["pending"][state] = (cred, verifier, cookie, redirect_uri)
            loc = a.mock + "/services/oauth2/authorize?" + urllib.parse.urlencode({
                "response_type": "code", "client_id": a.client_id,
                "redirect_uri": redirect_uri, "scope": "api refresh_token",
                "prompt": "login consent", "state": state,
                "code_challenge": challenge, "code_challenge_method": "S256"},
                quote_via=urllib.parse.quote)
            return self.page(303, "See Other", "", headers=[
                ("Location", loc),
                ("Set-Cookie", "sf_oauth_connect=%s; HttpOnly; "
                 "SameSite=Lax; Path=/sf_oauth/" % cookie)])

        if u.path in ("/sf_oauth/callback", "/sf_oauth/confirm"):
            if u.path == "/sf_oauth/callback" and "error" in q:
                return self.refuse(400, "Salesforce said " + q["error"])
            cookies = dict(c.strip().split("=", 1) for c in
                           (self.headers.get("Cookie") or "").split(";")
                           if "=" in c)
            with st["lock"]:
                p = st["pending"].get(q.get("state", ""))
            if p is None:
                return self.refuse(400, "unknown or used state")
            cred, verifier, cookie, redirect_uri = p
            if not hmac.compare_digest(cookies.get("sf_oauth_connect", ""),
                                       cookie):
                return self.refuse(403, "cookie")
            if u.path == "/sf_oauth/confirm":
                with st["lock"]:
                    got = st["pending"].pop(q["state"], None)
                    held = st["held"].pop(q["state"], None)
                if not got or not held or self.command != "POST":
                    return self.refuse(400, "nothing to confirm")
                return self.store(cred, held)
            with st["lock"]:
                st["pending"].pop(q["state"], None)
            form = urllib.parse.urlencode({
                "grant_type": "authorization_code", "code": q.get("code", ""),
                "redirect_uri": redirect_uri, "code_verifier": verifier,
                "client_id": a.client_id,
                "client_secret": a.client_secret}).encode()
            try:
                with urllib.request.urlopen(
                        a.mock + "/services/oauth2/token", form,
                        timeout=30) as res:
                    answer = json.loads(res.read())
            except Exception as e:  # noqa: BLE001 (any failure is a page)
                return self.refuse(502, "exchange failed: %s"
                                   % getattr(e, "code", "error"))
            user = answer["id"].split("/id/", 1)[1]
            with st["lock"]:
                old = st["creds"].get(cred, {}).get("user")
            if old and old != user:
                with st["lock"]:
                    st["pending"][q["state"]] = p
                    st["held"][q["state"]] = answer
                return self.page(200, "Confirm", (
                    '<p>Connected to %s, now %s</p><form method="post" '
                    'action="/sf_oauth/confirm"><input type="hidden" '
                    'name="state" value="%s"><button type="submit">Confirm'
                    '</button></form>' % (html.escape(old), html.escape(user),
                                          html.escape(q["state"]))))
            return self.store(cred, answer)

        return self.page(404, "Not Found", "")

    def store(self, cred, answer):
        st = self.server.st
        user = answer["id"].split("/id/", 1)[1]
        with st["lock"]:
            c = st["creds"].setdefault(cred, {"connections": 0})
            c["user"] = user
            c["connections"] += 1
        return self.page(200, "Connected", '<p id="result">Credential %s is '
                         'connected as %s</p>' % (html.escape(cred),
                                                  html.escape(user)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--mock", required=True, help="the mock's base URL")
    ap.add_argument("--client-id", required=True)
    ap.add_argument("--client-secret", required=True)
    ap.add_argument("--credential", action="append", default=[])
    ap.add_argument("--form-action-self", action="store_true",
                    help="the page's CSP form-action is 'self' alone (Chrome "
                         "then follows no 303 to the authorize URL)")
    args = ap.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    server.args = args
    server.st = {"lock": threading.Lock(), "pending": {}, "held": {},
                 "creds": {}, "refusals": [],
                 "connect_headers": []}
    server.serve_forever()


if __name__ == "__main__":
    main()
