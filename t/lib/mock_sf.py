#!/usr/bin/env python3
"""A mock Salesforce for the tests and for `make run`.

Python standard library only.  It answers like Salesforce does:

  POST /services/oauth2/token    the refresh-token, JWT bearer and client
                                 credentials grants, with Salesforce's
                                 success JSON and its error bodies (see
                                 "Grants" below); also under a path
                                 prefix, as an Experience Cloud site's
                                 /PREFIX/services/oauth2/token
  POST /services/oauth2/introspect
                                 token introspection: active, and exp (the
                                 token's expiry under the mock's lifetime)
  *    /services/...             the API: 200 JSON for a valid bearer token,
                                 401 INVALID_SESSION_ID otherwise
  POST /services/Soap/u/V, /c/V, /m/V, /T/V, /class/NAME
                                 SOAP (partner, enterprise, metadata,
                                 tooling, Apex web services): see below
  *    /services/async/V/job...  Bulk API 1.0: see below
  POST /cometd/V                 the Streaming API (CometD): see below

Test hooks, under /__mock/ (never used by the module):

  GET  /__mock/stats             counters and the issued secrets, as JSON
  POST /__mock/mode?mode=M       the token endpoint's mode (see MODES)
  POST /__mock/revoke            every issued access token dies
  POST /__mock/revoke_issued?count=N
                                 the next N access tokens issued die as
                                 they are issued (a revoke that came right
                                 after the token request); 0: none
  POST /__mock/api_mode?mode=M   "reject": the API answers 401 even to a
                                 valid token (a 401 a refresh cannot cure);
                                 "normal" again
  POST /__mock/api_limit?limit=N the org's API request limit that REST answers
                                 report in Sforce-Limit-Info (api-usage=
                                 the API requests so far / N)
  POST /__mock/delay?seconds=S   how long a successful token request takes
  POST /__mock/gate?open=0|1     0: a successful token request, after its
                                 delay, waits until the test opens the gate
                                 again (1; 10 minutes at most); open by
                                 default, and again after a reset
  POST /__mock/fixed?token=T     issue T as the access token from now on
                                 (the benchmark's upstream knows it); empty:
                                 random tokens again
  POST /__mock/lifetime?seconds=S[&absolute=1]
                                 access tokens die S seconds after their
                                 last use (Salesforce's sliding session
                                 timeout), or after they were issued; 0: never
  POST /__mock/instance_url?url=U
                                 answer successful token requests with U
                                 as the instance_url (to try bad ones);
                                 no url: the mock's own URL again
  POST /__mock/refresh_len?length=N
                                 rotated refresh tokens are exactly N bytes
                                 long; 0: the usual length
  POST /__mock/reset             counters, tokens and mode back to the
                                 start, the JWT and client credentials
                                 settings too (jwt_key: --jwt-key's again)
  POST /__mock/reset_echo        forget the echo_log
  POST /__mock/gzip?on=1|0       the API (REST, SOAP, Bulk, CometD) gzips its answers,
                                 errors included, when the request says
                                 Accept-Encoding: gzip, as Salesforce does
  *    /__mock/xxe               counts a fetch in "xxe_hits" (the URL of an
                                 XXE attempt: a fetch means an XML parser
                                 on the way resolved an external entity)
  GET  /__mock/wsdl/partner.wsdl?endpoint=URL
                                 t/lib/wsdl/partner.wsdl with its service
                                 address set to URL

  POST /__mock/jwt_key?path=P    verify JWT bearer assertions with the
                                 RSA public key (or X.509 certificate, as
                                 uploaded to a connected app) in PEM file
                                 P; also --jwt-key P.  No key: every
                                 assertion is "invalid assertion"
  POST /__mock/jwt_audience?aud=A
                                 the audience a JWT must name; no aud: the
                                 mock's own base URL again (the default,
                                 http://127.0.0.1:PORT)
  POST /__mock/jwt_user?user=U&approved=1|0
                                 the user U is (or is no longer) approved
                                 for the app (pre-authorized); at the start
                                 only integration@acme.com is
  POST /__mock/clock?skew=S      the mock's clock runs S seconds ahead of
                                 the real one (negative: behind), for the
                                 JWT's exp checks (a proxy whose clock is
                                 off)
  POST /__mock/cc_user?enabled=1|0
                                 the app has (or has no) run-as user for
                                 the client credentials flow
  POST /__mock/revoke_refresh    every refresh token dies, and every access
                                 token: an admin's "revoke" of the app's
                                 approvals.  The refresh grant then answers
                                 400 invalid_grant "expired access/refresh
                                 token"; a revoked token presented again
                                 revokes nothing more (unlike a rotated-out
                                 one); "-NAME" refresh tokens never used
                                 die too.  A later code exchange's tokens
                                 are valid

  The web server flow's hooks (see "The web server flow" below):

  POST /__mock/callbacks?url=U[&url=V...]
                                 the app's registered callback URLs are
                                 exactly these (compared byte for byte);
                                 no url: the default again.  A bare URL as
                                 the whole query (/__mock/callbacks?http://
                                 127.0.0.1:8080/sf_oauth/callback) is one url
  POST /__mock/code_secret?required=1|0
                                 the app requires the client secret at the
                                 code exchange ("Require Secret for Web
                                 Server Flow", the default) or not (a
                                 secret sent is still checked)
  POST /__mock/age_codes?seconds=S
                                 every code issued so far is S seconds older
                                 (900 or more: expired) with no wait
  POST /__mock/exchange_mode?mode=M[&seconds=S]
                                 the code exchange alone (the other grants
                                 go on as the token endpoint's mode says):
                                 normal; down (503 with an HTML maintenance
                                 page); slow (answered after S seconds, 2
                                 by default); refuse (400 invalid_grant
                                 "expired authorization code", the code not
                                 spent).  Refusals count as exchanges
                                 refused, reason "down" or "refuse"
  POST /__mock/deny_error?error=E
                                 the error a Deny sends: access_denied (the
                                 default), or access-denied, Salesforce's
                                 other spelling

Grants of the token endpoint (grant_type; the modes below apply to all):

  refresh_token   client_id, client_secret (form or HTTP Basic) and a valid
                  refresh_token; see "rotation".  Besides --refresh-token,
                  that token followed by "-NAME" (NAME: letters, digits,
                  "_", "." and "-", at most 64) is the refresh token of
                  another approval, valid from its first use until it is
                  rotated out (SfTest gives credentials other than "crm"
                  one each: nginx -t refuses two with one refresh token)
  urn:ietf:params:oauth:grant-type:jwt-bearer
                  assertion=JWT, checked in this order:
                    not three base64url parts (no padding), a header or
                    claims that are not JSON objects, alg not RS256
                        400 invalid_grant "invalid assertion"
                    iss not the client id
                        400 invalid_client_id "client identifier invalid"
                    the RS256 signature does not verify with the jwt_key
                    (checked with the openssl command line)
                        400 invalid_grant "invalid assertion"
                    aud not the expected audience (a string, or a list
                    holding it)
                        400 invalid_grant "audience is invalid"
                    exp missing, not a number, or not after the mock's clock
                        400 invalid_grant "expired authorization code"
                    exp more than 300 s after the mock's clock
                        400 invalid_grant "invalid assertion"
                    sub (or prn) not an approved user
                        400 invalid_grant "user hasn't approved this
                        consumer"
                  success: access_token, scope, instance_url, id,
                  token_type; no refresh_token, no issued_at
  client_credentials
                  client_id and client_secret (form or HTTP Basic):
                    wrong client_id  400 invalid_client_id
                    wrong secret     400 invalid_client "invalid client
                                     credentials"
                    no run-as user   400 invalid_grant "no client
                                     credentials user enabled"
                  success: access_token, signature, scope, instance_url,
                  id, token_type, issued_at; no refresh_token
  anything else   400 unsupported_grant_type

  authorization_code
                  the web server flow's code exchange: see below

  Tokens of every grant are alike for the API, revoke and lifetime.
  Stats: "token_requests" counts every token request, "grants" counts them
  per grant ("refresh_token", "jwt_bearer", "client_credentials",
  "authorization_code", "other"),
  "jwt_log" lists each assertion whose signature verified: its header and
  claims (not the signature), the mock's clock then ("now"), and the error
  answered (null for a token); "jwt_assertions" lists every assertion
  received, raw (secrets, like "issued_access_tokens": to look for them in
  logs); "jwt_audience", "clock_skew".  "last_token_form" has
  "client_secret_ok" (the secret sent is the mock's) and "has_assertion".

The web server flow (DESIGN.md section 10), as Salesforce does it:

  GET  /services/oauth2/authorize?response_type=code&client_id=C&
       redirect_uri=U[&scope=S][&prompt=P][&state=X]
       [&code_challenge=H[&code_challenge_method=S256]]
         client_id missing or not the mock's: 400, an HTML error page
           (invalid_client_id), no redirect, as Salesforce does
         redirect_uri missing: 400, an HTML error page
         redirect_uri not registered (see /__mock/callbacks): 302 to it
           with error=redirect_uri_mismatch
         response_type not "code": 302, error=unsupported_response_type
         code_challenge_method other than S256, or a code_challenge that is
           not 43 base64url characters (a SHA-256): 302,
           error=invalid_request
         otherwise the login page: 200 HTML, <form id="login"
           method="post" action="/services/oauth2/authorize/login"> with
           the query in hidden inputs, a username (id and name "username"),
           a password (id "password", name "pw") and the submit button
           id "Login" (Salesforce's own ids)
  POST /services/oauth2/authorize/login
         the query checked again as above; a wrong username or password:
         the login page again (200) saying "Please check your username and
         password"; else the consent page: 200 HTML, <form id="consent"
         method="post" action="/services/oauth2/authorize/consent"> with a
         hidden "ticket" (this login: single use, bound to the user and the
         query, which it keeps) and two submit buttons, Allow (id
         "oaapprove", name "approve") and Deny (id "oadeny", name "deny")
  POST /services/oauth2/authorize/consent
         Allow: 302 to redirect_uri?code=CODE&state=X (a new code, single
         use, 15 minutes); Deny: 302 to redirect_uri?error=access_denied&
         error_description=end-user+denied+authorization&state=X; an
         unknown or spent ticket: 400, an HTML error page.  A redirect
         carries state only when the request had one.

  Users (username, password: org id, user id):
    admin@acme    acme-password    00D5g000004TmoK (ORG_ID), 005000000000001
                                   (the user of the other grants' "id")
    other@globex  globex-password  00D5g000009GlbX, 005000000000002
  A code's tokens belong to its user: the answer's id is
  http://127.0.0.1:PORT/id/ORG/USER, the refresh grant with its refresh
  token (and those rotated from it) answers the same id, and the identity
  service answers with that user.

  Registered callback URLs: by default any http or https URL of 127.0.0.1
  or localhost, any port, whose path ends in "/callback" and that has no
  query: tests start nginx on ports they draw, and a redirect_uri that the
  module builds wrong still fails.  /__mock/callbacks sets an exact list.

  grant_type=authorization_code (POST /services/oauth2/token), checked in
  this order:
    client_id not the mock's        400 invalid_client_id
                                        "client identifier invalid"
    client_secret sent and wrong, or missing when the app requires it
                                    400 invalid_client
                                        "invalid client credentials"
    code unknown                    400 invalid_grant
                                        "invalid authorization code"
    code spent, or 15 minutes old   400 invalid_grant
                                        "expired authorization code"
    (a code that got this far is spent, whatever comes next)
    redirect_uri not the authorize request's, byte for byte
                                    400 redirect_uri_mismatch
                                        "redirect_uri must match
                                        configuration"
    a code_challenge was sent and no code_verifier came
                                    400 invalid_grant
                                        "invalid code verifier"
    base64url(SHA-256(code_verifier)), no padding, is not the challenge,
    or the verifier is not 43-128 characters of [A-Za-z0-9-._~]
                                    400 invalid_request
                                        "invalid code verifier"
    (a verifier sent for a code with no challenge is not checked)
  success: access_token, refresh_token (only when the authorize scope had
  refresh_token or offline_access: a new one, valid for the refresh grant,
  its rotation and revoke like any other), signature (base64 HMAC-SHA256
  of the client secret over id + issued_at), scope (the requested one),
  instance_url, id, token_type, issued_at (ms).  The token endpoint's
  modes (down, slow...) apply before all of this, as for every grant.

  Stats: "authorize" counts requests (authorize GETs), login_pages,
  logins, login_failures, consents, denials, codes_issued, exchanges_ok,
  exchanges_refused (by reason: client_id, client_secret, unknown_code,
  reused, expired, redirect_uri, verifier_missing, verifier_wrong, down,
  refuse) and refresh_uses (refresh grants that presented a refresh token
  a code exchange issued, or one rotated from it).  "authorize_log" lists
  each authorize request's query, "exchange_log" each code exchange
  (client_id, redirect_uri, has_client_secret, has_code_verifier, user,
  result: "ok" or the refusal's reason); secrets, to look for in logs:
  "issued_codes", "code_refresh_tokens" (issued by exchanges),
  "code_access_tokens", "code_verifiers" (received).

Modes of the token endpoint:

  normal          200 with a new access token
  rotation        200, and a new refresh token each time; the old one dies,
                  and presenting a dead one revokes everything (like
                  Salesforce)
  down            503 with an HTML maintenance page
  slow            like normal after 2 seconds
  hang            never answers (until the mode changes or 120 s)
  hang_once       the next token request hangs like that, the ones after
                  it are answered as in "normal"
  garbage         200 with a body that is not JSON
  huge            200 with a 1 MiB JSON body
  empty           200 with an empty body
  invalid_grant   400 invalid_grant "expired access/refresh token"
  invalid_client  400 invalid_client "invalid client credentials"
  crlf            200 with an access token that holds CR LF
  no_instance     200 with an instance_url that is not http(s)
  leaky           400 whose error_description echoes the client secret and
                  the refresh token (a hostile endpoint)
  leaky_cut_refresh
                  400 invalid_grant whose error_description echoes the
                  refresh token after 236 bytes, so that a cut at 256 bytes
                  leaves its first 20 characters
  leaky_cut_secret
                  400 whose error code echoes the client secret after 44
                  bytes (a cut at 64 leaves 20 characters), and whose
                  error_description does the same after 236 bytes
  leaky_prefix    400 invalid_grant whose error_description echoes the
                  first 20 characters of the refresh token and of the
                  client secret
  leaky_code      400 with the client secret inside the error code and a
                  description Salesforce does not send
  redirect_leaky  302 to a URL whose query echoes the refresh token after
                  236 bytes (a cut at 256 leaves 20 characters)
  leaky_introspect
                  token requests as normal; introspection answers 400 with
                  the access token echoed in the error_description
  deep_json       200 with JSON nested 20000 levels deep
  wrong_types     200 with a number for access_token, a list for
                  instance_url
  nul             200 with an access token that holds \u0000
  slowloris       200 whose body comes one byte a second
  redirect        302 to another URL

API paths with special answers (after the token check):

  ?reject=1                      a 401 even to a valid token (one endpoint
                                 that no refresh cures)
  ?slow401=1                     the 401 is chunked, its last chunk 50 ms late
  ?late401=S                     the 401 comes S seconds after the token
                                 check (a slow endpoint: the token dies
                                 while Salesforce works); for SOAP too,
                                 its INVALID_SESSION_ID fault.  The stats'
                                 "late401_log" lists the path of each such
                                 request once its token was checked, before
                                 the wait
  ?recheck=S                     a live token is checked again S seconds
                                 later, and that check decides (the token
                                 was revoked while the request was on its
                                 way); "late401_log" lists the path before
                                 the wait, as for ?late401
  ?big401=N                      the 401 has a body of N bytes
  ?cache401=1                    the 401 says Cache-Control: max-age=300

  /services/data/chunked?n=N     a chunked response of N chunks
  /services/data/big?bytes=N     a response of N bytes, with Content-Length
  /services/data/image.png       a 20x10 PNG image
  ?accel=URI                     200 with X-Accel-Redirect: URI
  ?ssi=URI                       an HTML page that SSI-includes URI
  ?html=1                        a small HTML page
  ?empty401=1, ?html401=1        a 401 with no body, or with an HTML body
  ?notrest=1                     a valid token gets 401 "This session is not
                                 valid for use with the REST API" (which no
                                 refresh cures; NOT_REST_BODY)

/__mock/stats lists every API request in "api_log": method, path, status,
the SHA-256 of the body received, and the client's port (to see upstream
keepalive); "not_found" counts requests outside /services/ and /echo/.
"token_paths" lists the path of each token request, in order (the
endpoint under a prefix, /PREFIX/services/oauth2/token, shares every
token and refresh token with the plain one, as an org's My Domain and its
login host do).

SOAP (POST; the envelope parsed namespace-aware, any prefix):

  The session is Header/SessionHeader/sessionId in the endpoint's namespace
  (urn:partner.soap.sforce.com for /u/, urn:enterprise... for /c/,
  http://soap.sforce.com/2006/04/metadata for /m/, urn:tooling... for /T/,
  http://soap.sforce.com/schemas/class/NAME for /class/NAME); one in another
  namespace is no session.  Valid means a live access token, as for the
  REST API.  A dead, missing or invalid session is HTTP 500 with
  Salesforce's INVALID_SESSION_ID fault (SOAP_INVALID_SESSION, byte for
  byte).  A request body with Content-Encoding gzip or deflate is inflated
  first (identity: as it is).  A DOCTYPE, XML that does not parse, a body
  that does not inflate, or a root other than a SOAP 1.1 Envelope is a 500
  soapenv:Client fault; fewer bytes than Content-Length within 10 s is a
  400.  Operations (the Body's first child,
  in the endpoint's namespace):

  login (u, c)          no session needed; LoginResult (a session id that
                        is not an access token); records the username and
                        whether a password came in "soap_logins"
  query, queryAll (u, c, T)
                        a QueryResult of 2 Accounts; SOQL containing "bad":
                        500 sf:MALFORMED_QUERY (SOAP_MALFORMED_QUERY),
                        "trap": 500 sf:INVALID_FIELD whose text mentions
                        INVALID_SESSION_ID (SOAP_TRAP_FAULT), "custom500":
                        500 sf:UNKNOWN_EXCEPTION with the headers
                        X-Mock-Fault and Sforce-Limit-Info
  create (u, c)         a SaveResult with an id per sObjects element
  describeSObject (u, c)
                        Account's DescribeSObjectResult; other types 500
                        sf:INVALID_TYPE
  deploy (m)            takes a base64 ZipFile of any size; records in
                        "soap_deploys" the body's length, its SHA-256, the
                        SHA-256 from the Body start tag to the end
                        ("tail"), and the decoded zip's length and SHA-256;
                        answers an AsyncResult id
  anything (T, class)   <opResponse><result>ok</result></opResponse>

  Stats: "soap_calls" (per operation), "soap_session_ids" (every sessionId
  text found in any Header, any namespace), "soap_log" (per call: path,
  op, status, content_length header, accept_encoding, content_encoding,
  body_len (as received), decoded_len, body/tail SHA-256 (of the inflated
  body), header present, the namespaces of the SessionHeaders, the sessionIds, the one
  used, whether it was valid, Authorization headers, error),
  "soap_last_envelope" (the last body; its first 64 KiB when over 1 MiB,
  then "soap_last_truncated").

Bulk API 1.0 (/services/async/V/...; XML jobs, or JSON jobs when the job
was created with Content-Type application/json):

  POST job               create a job (jobInfo XML or JSON): 201
  GET/POST job/ID        job info / close or abort it (state Closed|Aborted)
  POST job/ID/batch      add a batch (CSV or a JSON list): 201, Queued
  GET  job/ID/batch/BID  batch info, Completed
  GET  job/ID/batch/BID/result
                         CSV (text/csv) or JSON results, one id a record

  The session is X-SFDC-Session only (exactly one, a live access token).
  A dead one is HTTP 400 InvalidSessionId (BULK_INVALID_SESSION_XML, or
  BULK_INVALID_SESSION_JSON for JSON), byte for byte.  An unknown job is
  400 InvalidJob with the header X-Mock-Bulk-Error.  Stats: "bulk_log" (per
  call: method, path, status, the X-SFDC-Session values, the Authorization
  headers, content type, accept_encoding, content_encoding, body length
  and SHA-256),
  "bulk_sessions" (every X-SFDC-Session value received).

SOAP and Bulk calls count in "api_requests" and "api_log" too.

The Streaming API (POST /cometd/V, Bayeux over long polling, DESIGN.md
section 11): a JSON array of messages (or one message) in, an array of
replies out, always HTTP 200.  The session is "Authorization: OAuth T" (or
Bearer T), a live access token as for the REST API, checked for every
request.

  /meta/handshake   clientId, supportedConnectionTypes ["long-polling"],
                    advice {"interval":0,"timeout":HOLD*1000,
                    "reconnect":"retry"}.  A dead or missing session:
                    "error":"403::Handshake denied", "ext":{"sfdc":
                    {"failureReason":"401::Authentication invalid"}},
                    advice reconnect "none".  With the daily_limit knob,
                    the failureReason is "403::Organization total events
                    daily limit exceeded"
  /meta/connect     held up to HOLD seconds (the "hold" knob, 10 by
                    default; Salesforce's 110), not held in a batch
                    with other messages (it comes last), answered at once with
                    the events queued for the client, then its reply.  A
                    session dead when it comes, or revoked while it is
                    held (/__mock/revoke wakes it): "401::Authentication
                    invalid" ("401::Request requires authentication"
                    without a token), advice {"reconnect":"none",
                    "interval":0}
  /meta/subscribe, /meta/unsubscribe, /meta/disconnect
                    as Salesforce answers them
  An unknown clientId: "403::Unknown client", advice reconnect
  "handshake".  With the http401 knob, a dead session is an HTTP 401 with
  the REST API's INVALID_SESSION_ID body instead.

  POST /__mock/cometd?hold=S&daily_limit=0|1&http401=0|1&odd=O&split=P
                    the knobs (each one given is set); odd: an answer
                    with a "401::" error is cut short by 2 bytes (not
                    JSON, "truncated") or padded past 9000 bytes in its
                    ext ("big"); "none": as Salesforce answers.
                    split=chunked|length: the next answer that carries
                    events is sent in two halves (of its bytes on the
                    wire, gzip-compressed or not), chunked with no
                    Content-Length or with one; the second half waits
                    for ?release=1 (stats' "cometd_split_state": armed,
                    first_sent, released, done; idle with split=none)
  ?late401=S        on /cometd/: a handshake refused for a dead session
                    ("403::Handshake denied", failureReason "401::") is
                    answered S seconds after the session check, its path
                    in "late401_log" before the wait, as for REST
  POST /__mock/publish?channel=C[&size=N[&random=1]]
                    an event on channel C for every client subscribed to
                    it: the body (JSON) as its payload, or N bytes of
                    "x" (of random hex digits with random=1, which gzip
                    compresses to about half); each gets the next replayId.  Answers how many
                    clients it was queued for.  Any channel can be
                    subscribed and published to: a PushTopic's event
                    (/topic/X) says "type":"created", a platform event's
                    (/event/X__e) names its "schema"
  Stats: "cometd_log" (per request: the channels, the Authorization
  headers, each reply's channel, successful and error, the body's length
  and SHA-256 as sent, before gzip, and "wire_sha256", after it;
  "split_at" for a split answer), "cometd_auths" (every Authorization value),
  "cometd_clients" (the clientIds alive) and "cometd_subscriptions" (per
  clientId).

  GET  /id/ORG_ID/USER_ID        the identity service: who the token's user
                                 is (403 for a token that is not valid, or
                                 after POST /__mock/identity_mode?mode=fail)
  *    /echo/...                 any other host a configuration sends to
                                 (a mirror, an error_page fallback): 200,
                                 and "echo_log" in the stats records the
                                 method, path, Authorization and
                                 accesstoken headers
"""

import argparse
import base64
import gzip
import hashlib
import hmac
import html
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"

# grant_type -> its name in the stats' "grants"
GRANTS = {"refresh_token": "refresh_token", JWT_BEARER: "jwt_bearer",
          "client_credentials": "client_credentials",
          "authorization_code": "authorization_code"}

MODES = ("normal", "rotation", "down", "slow", "hang", "hang_once",
         "hang_released", "garbage", "huge",
         "empty", "invalid_grant", "invalid_client", "crlf", "no_instance",
         "leaky", "deep_json", "wrong_types", "nul", "slowloris", "redirect",
         "leaky_cut_refresh", "leaky_cut_secret", "leaky_prefix",
         "leaky_code", "leaky_introspect", "redirect_leaky")

ORG_ID = "00D5g000004TmoK"   # 15 characters, as a real org id
DEFAULT_USER_ID = "005000000000001"

# The users who can log in on the authorize pages: two orgs, so that a
# reconnect to another org can be tested
USERS = {
    "admin@acme": {"password": "acme-password", "org_id": ORG_ID,
                   "user_id": DEFAULT_USER_ID,
                   "display_name": "Acme Admin"},
    "other@globex": {"password": "globex-password",
                     "org_id": "00D5g000009GlbX",
                     "user_id": "005000000000002",
                     "display_name": "Globex Other"},
}

# The authorize request's fields that the login page carries along
AUTHORIZE_FIELDS = ("response_type", "client_id", "redirect_uri", "scope",
                    "prompt", "state", "code_challenge",
                    "code_challenge_method", "display", "login_hint")

CODE_LIFETIME = 900          # a code lives 15 minutes
EXCHANGE_MODES = ("normal", "down", "slow", "refuse")
PKCE_VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}\Z")
PKCE_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}\Z")

# A REST 401 that no refresh cures (a high-assurance session, IP policy)
NOT_REST_BODY = ('[{"message":"This session is not valid for use with the '
                 'REST API","errorCode":"INVALID_SESSION_ID"}]')

SOAPENV = "http://schemas.xmlsoap.org/soap/envelope/"
XSI = "http://www.w3.org/2001/XMLSchema-instance"

# The namespace of each SOAP endpoint: its SessionHeader and its operations
SOAP_NS = {
    "u": "urn:partner.soap.sforce.com",
    "c": "urn:enterprise.soap.sforce.com",
    "m": "http://soap.sforce.com/2006/04/metadata",
    "T": "urn:tooling.soap.sforce.com",
}
SOBJECT_NS = {
    "u": "urn:sobject.partner.soap.sforce.com",
    "c": "urn:sobject.enterprise.soap.sforce.com",
}

# Salesforce's answer to a dead, missing or invalid session, byte for byte
SOAP_INVALID_SESSION = (
    '<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope '
    'xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
    'xmlns:sf="urn:fault.partner.soap.sforce.com" '
    'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>'
    '<soapenv:Fault><faultcode>sf:INVALID_SESSION_ID</faultcode><faultstring>'
    'INVALID_SESSION_ID: Invalid Session ID found in SessionHeader: Illegal '
    'Session</faultstring><detail><sf:UnexpectedErrorFault '
    'xsi:type="sf:UnexpectedErrorFault"><sf:exceptionCode>INVALID_SESSION_ID'
    '</sf:exceptionCode><sf:exceptionMessage>Invalid Session ID found in '
    'SessionHeader: Illegal Session</sf:exceptionMessage>'
    '</sf:UnexpectedErrorFault></detail></soapenv:Fault></soapenv:Body>'
    '</soapenv:Envelope>')


def xml_escape(text):
    return (str(text).replace("&", "&amp;").replace("<", "&lt;")
            .replace(">", "&gt;").replace('"', "&quot;"))


def soap_fault(code, string, fault_type="UnexpectedErrorFault"):
    """A Salesforce-style SOAP 1.1 fault; code is sf:X or soapenv:X."""
    exc = code.split(":", 1)[1]
    detail = ""
    if code.startswith("sf:"):
        detail = ('<detail><sf:%s xsi:type="sf:%s"><sf:exceptionCode>%s'
                  '</sf:exceptionCode><sf:exceptionMessage>%s'
                  '</sf:exceptionMessage></sf:%s></detail>'
                  % (fault_type, fault_type, exc, xml_escape(string),
                     fault_type))
    return ('<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope '
            'xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
            'xmlns:sf="urn:fault.partner.soap.sforce.com" '
            'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
            '<soapenv:Body><soapenv:Fault><faultcode>%s</faultcode>'
            '<faultstring>%s: %s</faultstring>%s</soapenv:Fault>'
            '</soapenv:Body></soapenv:Envelope>'
            % (code, exc, xml_escape(string), detail))


# Non-session faults with fixed bodies, for byte-for-byte comparisons
SOAP_MALFORMED_QUERY = soap_fault(
    "sf:MALFORMED_QUERY",
    "\nSELECT bad FROM Account\n       ^\nERROR at Row:1:Column:8\n"
    "No such column 'bad' on entity 'Account'.", "MalformedQueryFault")
# mentions INVALID_SESSION_ID in its text, but its faultcode is another
SOAP_TRAP_FAULT = soap_fault(
    "sf:INVALID_FIELD",
    "No such column 'INVALID_SESSION_ID' on entity 'Account'; "
    "<faultcode>sf:INVALID_SESSION_ID</faultcode> is not a field",
    "InvalidFieldFault")
SOAP_UNKNOWN_EXCEPTION = soap_fault(
    "sf:UNKNOWN_EXCEPTION",
    "An unexpected error occurred. Please include this ErrorId if you "
    "contact support: 1234567890-12345 (-1234567890)")

BULK_NS = "http://www.force.com/2009/06/asyncapi/dataload"
BULK_INVALID_SESSION_XML = (
    '<?xml version="1.0" encoding="UTF-8"?><error xmlns="http://www.force.com'
    '/2009/06/asyncapi/dataload"><exceptionCode>InvalidSessionId'
    '</exceptionCode><exceptionMessage>Invalid session id</exceptionMessage>'
    '</error>')
BULK_INVALID_SESSION_JSON = ('{"exceptionCode":"InvalidSessionId",'
                             '"exceptionMessage":"Invalid session id"}')



class State:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Condition()
        self.token_gate = threading.Event()
        self.reset()

    def add_access(self, token):
        """A new access token lives, unless it is to be issued dead
        (/__mock/revoke_issued).  With the lock held."""
        if self.dead_on_issue > 0:
            self.dead_on_issue -= 1
            return
        self.access_tokens.add(token)

    def reset(self):
        self.token_gate.set()
        with self.lock:
            self.args.token_delay = self.args.initial_delay
            self.mode = "normal"
            self.token_requests = 0
            self.token_ok = 0
            self.api_requests = 0
            self.api_limit = 15000
            self.not_found = 0
            self.identity_requests = 0
            self.identity_mode = "normal"
            self.api_401 = 0
            self.api_mode = "normal"
            self.api_log = []
            self.access_tokens = set()
            self.lifetime = 0
            self.absolute = False
            self.fixed_token = ""
            self.refresh_len = 0
            self.token_issued = {}
            self.token_used = {}
            self.introspections = 0
            self.issued_access = []
            self.refresh_tokens = {self.args.refresh_token}
            self.issued_refresh = [self.args.refresh_token]
            self.other_refresh = set()
            self.in_flight = set()
            self.refresh_log = []
            self.token_paths = []
            self.last_token_form = {}
            self.echo_log = []
            self.late401_log = []
            # tokens still to issue dead (POST /__mock/revoke_issued)
            self.dead_on_issue = 0
            self.instance_url = self.args.instance_url
            self.xxe_hits = 0
            self.gzip = False
            self.soap_calls = {}
            self.soap_log = []
            self.soap_session_ids = []
            self.soap_last_envelope = ""
            self.soap_last_truncated = False
            self.soap_logins = []
            self.soap_deploys = []
            self.bulk_log = []
            self.bulk_sessions = []
            self.bulk_jobs = {}
            self.bulk_seq = 0
            self.grants = {"refresh_token": 0, "jwt_bearer": 0,
                           "client_credentials": 0,
                           "authorization_code": 0, "other": 0}
            # the web server flow
            self.revoked_refresh = set()
            self.refresh_revoked_all = False
            self.callbacks = None        # None: the default rule
            self.code_secret = True
            self.exchange_mode = "normal"
            self.exchange_delay = 2.0
            self.deny_error = "access_denied"
            self.tickets = {}            # ticket -> (username, query)
            self.codes = {}              # code -> its authorization
            self.token_user = {}         # access token -> username
            self.refresh_user = {}       # refresh token -> username
            self.code_refresh = set()    # refresh tokens from exchanges
            self.authorize = {"requests": 0, "login_pages": 0, "logins": 0,
                              "login_failures": 0, "consents": 0,
                              "denials": 0, "codes_issued": 0,
                              "exchanges_ok": 0, "exchanges_refused": {},
                              "refresh_uses": 0}
            self.authorize_log = []
            self.exchange_log = []
            self.issued_codes = []
            self.code_refresh_tokens = []
            self.code_access_tokens = []
            self.code_verifiers = []
            self.jwt_key = self.args.jwt_key
            self.jwt_audience = self.args.login_url
            self.jwt_users = {"integration@acme.com": True}
            self.jwt_log = []
            self.jwt_assertions = []
            self.clock_skew = 0.0
            self.cc_user = True
            # the Streaming API (CometD)
            self.cometd_hold = 10.0
            self.cometd_daily_limit = False
            self.cometd_http401 = False
            self.cometd_odd = ""
            self.cometd_clients = {}     # clientId -> {"subs", "queue"}
            self.cometd_log = []
            self.cometd_auths = []
            self.cometd_replay = 0
            self.cometd_split = "none"   # none, chunked, length
            self.cometd_split_state = "idle"
            self.lock.notify_all()

    def now(self):
        """The mock's clock: the real one shifted by clock_skew."""
        return time.time() + self.clock_skew


def png(width, height):
    """A small grey PNG image (a document attachment, say)."""
    import struct
    import zlib

    def chunk(kind, data):
        body = kind + data
        return (struct.pack(">I", len(data)) + body
                + struct.pack(">I", zlib.crc32(body) & 0xffffffff))

    raw = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0,
                                         0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


B64URL = re.compile(r"[A-Za-z0-9_-]+\Z")

# after the configured refresh token and "-": a refresh token of another
# approval of the app (SfTest gives each credential but "crm" one)
OTHER_REFRESH = re.compile(r"-[A-Za-z0-9_.-]{1,64}\Z")


def b64url_decode(part):
    """base64url without padding (RFC 7515); ValueError if it is not."""
    if len(part) % 4 == 1:
        raise ValueError("bad base64url length")
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def verify_rs256(key_path, data, signature):
    """Whether signature is data's RS256 (RSASSA-PKCS1-v1_5, SHA-256)
    signature under the RSA public key, or certificate, in key_path: the
    openssl command line checks it (no crypto in the standard library)."""
    with tempfile.TemporaryDirectory(prefix="mock_sf_jwt_") as d:
        try:
            with open(key_path, encoding="latin-1") as f:
                pem = f.read()
        except OSError:
            return False
        pub = key_path
        if "CERTIFICATE" in pem:
            r = subprocess.run(["openssl", "x509", "-in", key_path,
                                "-pubkey", "-noout"], capture_output=True)
            if r.returncode != 0:
                return False
            pub = os.path.join(d, "pub.pem")
            with open(pub, "wb") as f:
                f.write(r.stdout)
        r = subprocess.run(["openssl", "pkey", "-pubin", "-in", pub,
                            "-noout", "-text"], capture_output=True)
        if r.returncode != 0 or b"Modulus" not in r.stdout:
            return False    # not an RSA public key
        sig_file = os.path.join(d, "sig")
        data_file = os.path.join(d, "data")
        with open(sig_file, "wb") as f:
            f.write(signature)
        with open(data_file, "wb") as f:
            f.write(data)
        r = subprocess.run(["openssl", "dgst", "-sha256", "-verify", pub,
                            "-signature", sig_file, data_file],
                           capture_output=True)
        return r.returncode == 0 and b"Verified OK" in r.stdout


def new_access_token():
    return ORG_ID + "!AR" + secrets.token_urlsafe(60).replace("-", "x")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "MockSalesforce/1.0"

    def log_message(self, fmt, *args):
        if self.server.state.args.verbose:
            sys.stderr.write("mock_sf: " + fmt % args + "\n")

    # -- plumbing -------------------------------------------------------

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                data += self.rfile.read(size)
                self.rfile.readline()
            return data
        return self.rfile.read(n) if n else b""

    # set by the API handlers: gzip this answer (mode on, client accepts)
    gzip_ok = False

    def send(self, status, body, ctype="application/json", headers=()):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        elif isinstance(body, str):
            body = body.encode()
        if self.gzip_ok:
            body = gzip.compress(body, mtime=0)
            headers = list(headers) + [("Content-Encoding", "gzip"),
                                       ("Vary", "Accept-Encoding")]
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        self.route()

    def do_POST(self):
        self.route()

    def do_PUT(self):
        self.route()

    def do_PATCH(self):
        self.route()

    def do_DELETE(self):
        self.route()

    def do_HEAD(self):
        self.route()

    def route(self):
        path = urllib.parse.urlsplit(self.path).path
        self.gzip_ok = ((path.startswith("/services/")
                         and not path.startswith("/services/oauth2/")
                         or path.startswith("/cometd/"))
                        and self.server.state.gzip
                        and "gzip" in self.headers.get("Accept-Encoding", ""))
        if path.startswith("/__mock/"):
            return self.control(path)
        if path == "/services/oauth2/token" or (
                path.endswith("/services/oauth2/token")
                and not path.startswith("/services/")):
            return self.token()
        if path == "/services/oauth2/introspect":
            return self.introspect()
        if path in ("/services/oauth2/authorize",
                    "/services/oauth2/authorize/login",
                    "/services/oauth2/authorize/consent"):
            return self.authorize(path)
        if path.startswith("/services/Soap/"):
            return self.soap(path)
        if path.startswith("/services/async/"):
            return self.bulk(path)
        if path.startswith("/services/"):
            return self.api(path)
        if path.startswith("/cometd/"):
            return self.cometd()
        if path.startswith("/echo/"):
            return self.echo(path)
        if path.startswith("/id/"):
            return self.identity(path)
        with self.server.state.lock:
            self.server.state.not_found += 1
        self.send(404, [{"errorCode": "NOT_FOUND",
                         "message": "The requested resource does not exist"}])

    # -- test hooks -----------------------------------------------------

    def control(self, path):
        st = self.server.state
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        self.last_body = self.body()
        if path == "/__mock/stats":
            with st.lock:
                return self.send(200, {
                    "mode": st.mode,
                    "token_requests": st.token_requests,
                    "token_ok": st.token_ok,
                    "api_requests": st.api_requests,
                    "not_found": st.not_found,
                    "api_401": st.api_401,
                    "valid_refresh_tokens": sorted(st.refresh_tokens),
                    "issued_access_tokens": st.issued_access,
                    "issued_refresh_tokens": st.issued_refresh,
                    "refresh_log": st.refresh_log,
                    "token_paths": st.token_paths,
                    "last_token_form": st.last_token_form,
                    "api_log": st.api_log,
                    "introspections": st.introspections,
                    "echo_log": st.echo_log,
                    "late401_log": st.late401_log,
                    "identity_requests": st.identity_requests,
                    "xxe_hits": st.xxe_hits,
                    "soap_calls": st.soap_calls,
                    "soap_log": st.soap_log,
                    "soap_session_ids": st.soap_session_ids,
                    "soap_last_envelope": st.soap_last_envelope,
                    "soap_last_truncated": st.soap_last_truncated,
                    "soap_logins": st.soap_logins,
                    "soap_deploys": st.soap_deploys,
                    "bulk_log": st.bulk_log,
                    "bulk_sessions": st.bulk_sessions,
                    "grants": st.grants,
                    "jwt_log": st.jwt_log,
                    "jwt_assertions": st.jwt_assertions,
                    "jwt_audience": st.jwt_audience,
                    "clock_skew": st.clock_skew,
                    "authorize": st.authorize,
                    "authorize_log": st.authorize_log,
                    "exchange_log": st.exchange_log,
                    "issued_codes": st.issued_codes,
                    "code_refresh_tokens": st.code_refresh_tokens,
                    "code_access_tokens": st.code_access_tokens,
                    "code_verifiers": st.code_verifiers,
                    "callbacks": st.callbacks,
                    "exchange_mode": st.exchange_mode,
                    "code_secret": st.code_secret,
                    "cometd_log": st.cometd_log,
                    "cometd_auths": st.cometd_auths,
                    "cometd_clients": sorted(st.cometd_clients),
                    "cometd_split_state": st.cometd_split_state,
                    "cometd_subscriptions": {
                        k: sorted(v["subs"])
                        for k, v in st.cometd_clients.items()},
                })
        if path == "/__mock/mode":
            mode = query.get("mode", [""])[0]
            if mode not in MODES:
                return self.send(400, {"error": "unknown mode " + mode})
            with st.lock:
                st.mode = mode
                st.lock.notify_all()
            return self.send(200, {"mode": mode})
        if path == "/__mock/identity_mode":
            with st.lock:
                st.identity_mode = query.get("mode", ["normal"])[0]
            return self.send(200, {"identity_mode": st.identity_mode})
        if path == "/__mock/lifetime":
            with st.lock:
                st.lifetime = float(query.get("seconds", ["0"])[0])
                st.absolute = query.get("absolute", ["0"])[0] == "1"
            return self.send(200, {"lifetime": st.lifetime})
        if path == "/__mock/fixed":
            with st.lock:
                st.fixed_token = query.get("token", [""])[0]
            return self.send(200, {"fixed": st.fixed_token})
        if path == "/__mock/instance_url":
            with st.lock:
                st.instance_url = query.get("url", [st.args.instance_url])[0]
            return self.send(200, {"instance_url": st.instance_url})
        if path == "/__mock/refresh_len":
            with st.lock:
                st.refresh_len = int(query.get("length", ["0"])[0])
            return self.send(200, {"refresh_len": st.refresh_len})
        if path == "/__mock/api_limit":
            with st.lock:
                st.api_limit = int(query.get("limit", ["15000"])[0])
            return self.send(200, {"ok": True})
        if path == "/__mock/delay":
            st.args.token_delay = float(query.get("seconds", ["0.05"])[0])
            return self.send(200, {"delay": st.args.token_delay})
        if path == "/__mock/gate":
            if query.get("open", ["1"])[0] == "0":
                st.token_gate.clear()
            else:
                st.token_gate.set()
            return self.send(200, {"open": st.token_gate.is_set()})
        if path == "/__mock/api_mode":
            with st.lock:
                st.api_mode = query.get("mode", ["normal"])[0]
            return self.send(200, {"api_mode": st.api_mode})
        if path == "/__mock/cometd":
            with st.lock:
                if "hold" in query:
                    st.cometd_hold = float(query["hold"][0])
                if "daily_limit" in query:
                    st.cometd_daily_limit = query["daily_limit"][0] == "1"
                if "http401" in query:
                    st.cometd_http401 = query["http401"][0] == "1"
                if "odd" in query:
                    st.cometd_odd = query["odd"][0]
                if "split" in query:
                    st.cometd_split = query["split"][0]
                    st.cometd_split_state = "armed" \
                        if st.cometd_split != "none" else "idle"
                if "release" in query and \
                        st.cometd_split_state == "first_sent":
                    st.cometd_split_state = "released"
                st.lock.notify_all()
                return self.send(200, {
                    "hold": st.cometd_hold,
                    "daily_limit": st.cometd_daily_limit,
                    "http401": st.cometd_http401,
                    "odd": st.cometd_odd,
                    "split": st.cometd_split,
                    "split_state": st.cometd_split_state})
        if path == "/__mock/publish":
            channel = query.get("channel", ["/topic/Mock"])[0]
            size = int(query.get("size", ["0"])[0])
            with st.lock:
                st.cometd_replay += 1
                payload = ("x" * size if "random" not in query
                           else secrets.token_hex(size // 2 + 1)[:size]) \
                    if size else json.loads(self.last_body or b"{}")
                event = {"data": {"event": {"replayId": st.cometd_replay,
                                            "createdDate":
                                            "2026-12-07T00:00:00.000Z"},
                                  "payload": payload},
                         "channel": channel}
                # a platform event names its schema; a PushTopic's says
                # what happened to the record
                if channel.startswith("/event/"):
                    event["data"]["schema"] = "mock-schema-" + channel[7:]
                elif channel.startswith("/topic/"):
                    event["data"]["event"]["type"] = "created"
                n = 0
                for client in st.cometd_clients.values():
                    if channel in client["subs"]:
                        client["queue"].append(event)
                        n += 1
                st.lock.notify_all()
            return self.send(200, {"queued": n,
                                   "replayId": st.cometd_replay})
        if path == "/__mock/revoke_issued":
            with st.lock:
                st.dead_on_issue = int(query.get("count", ["1"])[0])
            return self.send(200, {"dead_on_issue": st.dead_on_issue})
        if path == "/__mock/revoke":
            with st.lock:
                st.access_tokens.clear()
                st.lock.notify_all()
            return self.send(200, {"revoked": True})
        if path == "/__mock/jwt_key":
            key = query.get("path", [""])[0]
            if key and not os.path.isfile(key):
                return self.send(400, {"error": "no such file " + key})
            with st.lock:
                st.jwt_key = key or None
            return self.send(200, {"jwt_key": st.jwt_key})
        if path == "/__mock/jwt_audience":
            with st.lock:
                st.jwt_audience = query.get("aud", [st.args.login_url])[0]
            return self.send(200, {"jwt_audience": st.jwt_audience})
        if path == "/__mock/jwt_user":
            user = query.get("user", [""])[0]
            if not user:
                return self.send(400, {"error": "no user"})
            with st.lock:
                st.jwt_users[user] = query.get("approved", ["1"])[0] == "1"
                users = dict(st.jwt_users)
            return self.send(200, {"jwt_users": users})
        if path == "/__mock/clock":
            with st.lock:
                st.clock_skew = float(query.get("skew", ["0"])[0])
            return self.send(200, {"clock_skew": st.clock_skew})
        if path == "/__mock/cc_user":
            with st.lock:
                st.cc_user = query.get("enabled", ["1"])[0] == "1"
            return self.send(200, {"cc_user": st.cc_user})
        if path == "/__mock/revoke_refresh":
            with st.lock:
                st.revoked_refresh |= st.refresh_tokens
                st.refresh_tokens.clear()
                st.refresh_revoked_all = True
                st.access_tokens.clear()
            return self.send(200, {"revoked_refresh": True})
        if path == "/__mock/callbacks":
            raw = urllib.parse.urlsplit(self.path).query
            urls = query.get("url")
            if urls is None and raw.startswith(("http:", "https:")):
                urls = [urllib.parse.unquote(raw)]
            with st.lock:
                st.callbacks = urls or None
            return self.send(200, {"callbacks": st.callbacks})
        if path == "/__mock/code_secret":
            with st.lock:
                st.code_secret = query.get("required", ["1"])[0] == "1"
            return self.send(200, {"code_secret": st.code_secret})
        if path == "/__mock/age_codes":
            seconds = float(query.get("seconds", [str(CODE_LIFETIME)])[0])
            with st.lock:
                for c in st.codes.values():
                    c["created"] -= seconds
                n = len(st.codes)
            return self.send(200, {"aged": n})
        if path == "/__mock/exchange_mode":
            mode = query.get("mode", ["normal"])[0]
            if mode not in EXCHANGE_MODES:
                return self.send(400, {"error": "unknown exchange mode "
                                       + mode})
            with st.lock:
                st.exchange_mode = mode
                st.exchange_delay = float(query.get("seconds", ["2"])[0])
            return self.send(200, {"exchange_mode": mode})
        if path == "/__mock/deny_error":
            with st.lock:
                st.deny_error = query.get("error", ["access_denied"])[0]
            return self.send(200, {"deny_error": st.deny_error})
        if path == "/__mock/reset_echo":
            with st.lock:
                st.echo_log = []
            return self.send(200, {"reset_echo": True})
        if path == "/__mock/reset":
            st.reset()
            return self.send(200, {"reset": True})
        if path == "/__mock/gzip":
            with st.lock:
                st.gzip = query.get("on", ["1"])[0] == "1"
            return self.send(200, {"gzip": st.gzip})
        if path == "/__mock/xxe":
            with st.lock:
                st.xxe_hits += 1
            return self.send(200, "xxe-fetched", ctype="text/plain")
        if path == "/__mock/wsdl/partner.wsdl":
            return self.wsdl(query.get("endpoint", [""])[0])
        return self.send(404, {"error": "no such hook"})

    # -- the token endpoint ---------------------------------------------

    def token(self):
        st = self.server.state
        args = st.args
        raw = self.body()
        form = {k: v[0] for k, v in urllib.parse.parse_qs(
            raw.decode("latin-1")).items()}

        auth = self.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            import base64
            cid, _, csec = base64.b64decode(auth[6:]).decode().partition(":")
            form.setdefault("client_id", cid)
            form.setdefault("client_secret", csec)

        grant = GRANTS.get(form.get("grant_type"), "other")
        with st.lock:
            st.token_requests += 1
            # the path each token request came to: /services/oauth2/token,
            # or a prefixed one (a My Domain's or a site's endpoint)
            st.token_paths.append(urllib.parse.urlsplit(self.path).path)
            st.grants[grant] += 1
            if "assertion" in form:
                st.jwt_assertions.append(form["assertion"])
            st.last_token_form = {
                "grant_type": form.get("grant_type"),
                "client_id": form.get("client_id"),
                "has_client_secret": "client_secret" in form,
                "client_secret_ok":
                    form.get("client_secret") == args.client_secret,
                "has_assertion": "assertion" in form,
                "has_refresh_token": "refresh_token" in form,
                "content_type": self.headers.get("Content-Type"),
                "accept": self.headers.get("Accept"),
                "method": self.command,
            }
            mode = st.mode

        if self.command != "POST":
            return self.send(405, "", ctype="text/plain")

        if mode == "down":
            return self.send(503, "<html><body><h1>Down for maintenance"
                                  "</h1></body></html>", ctype="text/html")
        if mode == "hang_once":
            with st.lock:
                st.mode = "hang_released"
            mode = "hang"
        if mode == "hang":
            deadline = time.time() + 120
            with st.lock:
                while (st.mode in ("hang", "hang_released")
                       and time.time() < deadline):
                    st.lock.wait(0.5)
            self.close_connection = True
            return
        if mode == "hang_released":
            mode = "normal"
        if mode == "garbage":
            return self.send(200, "this is { not json", ctype="text/plain")
        if mode == "empty":
            return self.send(200, "")
        if mode == "huge":
            pad = "x" * (1 << 20)
            return self.send(200, {"access_token": "x", "padding": pad})
        if mode == "invalid_grant":
            return self.send(400, {"error": "invalid_grant",
                                   "error_description":
                                   "expired access/refresh token"})
        if mode == "invalid_client":
            return self.send(400, {"error": "invalid_client",
                                   "error_description":
                                   "invalid client credentials"})
        if mode == "leaky":
            return self.send(400, {"error": "invalid_request",
                                   "error_description":
                                   "bad refresh_token %s for secret %s" % (
                                       form.get("refresh_token"),
                                       form.get("client_secret"))})
        rt_sent = form.get("refresh_token") or ""
        secret_sent = form.get("client_secret") or ""
        if mode == "leaky_cut_refresh":
            return self.send(400, {"error": "invalid_grant",
                                   "error_description":
                                   "r" * 236 + rt_sent})
        if mode == "leaky_cut_secret":
            return self.send(400, {"error": "e" * 44 + secret_sent,
                                   "error_description":
                                   "s" * 236 + secret_sent})
        if mode == "leaky_prefix":
            return self.send(400, {"error": "invalid_grant",
                                   "error_description":
                                   "refresh token %s... rejected, client "
                                   "secret %s... unknown" % (
                                       rt_sent[:20], secret_sent[:20])})
        if mode == "redirect_leaky":
            url = "https://login.example.com/services/oauth2/token?x="
            return self.send(302, "", headers=[(
                "Location", url + "q" * (236 - len(url)) + rt_sent)])
        if mode == "leaky_code":
            return self.send(400, {"error": "invalid_" + secret_sent,
                                   "error_description":
                                   "no such thing at Salesforce"})
        if mode == "deep_json":
            return self.send(200, "[" * 20000 + "]" * 20000)
        if mode == "wrong_types":
            return self.send(200, {"access_token": 12345,
                                   "instance_url": ["https://x"],
                                   "issued_at": {"a": 1}})
        if mode == "nul":
            return self.send(200, '{"access_token": "00Dabc\\u0000evil", '
                                  '"instance_url": "https://x.example.com"}')
        if mode == "slowloris":
            body = json.dumps({"access_token": new_access_token(),
                               "instance_url": args.instance_url}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                for i in range(len(body)):
                    self.wfile.write(body[i:i + 1])
                    self.wfile.flush()
                    time.sleep(1)
            except OSError:
                pass
            self.close_connection = True
            return
        if mode == "redirect":
            return self.send(302, "", headers=[(
                "Location", "https://login.example.com/services/oauth2/token")])
        if mode == "slow":
            time.sleep(2)

        if grant == "jwt_bearer":
            return self.jwt_grant(form, mode)
        if grant == "client_credentials":
            return self.client_credentials_grant(form, mode)
        if grant == "authorization_code":
            return self.code_grant(form, mode)
        if form.get("grant_type") != "refresh_token":
            return self.send(400, {"error": "unsupported_grant_type",
                                   "error_description":
                                   "grant type not supported"})
        if not self.client_ok(form):
            return None

        rt = form.get("refresh_token", "")
        with st.lock:
            # another approval's refresh token: the configured one and
            # "-NAME"; valid from its first use until it is rotated out
            if (rt.startswith(args.refresh_token)
                    and OTHER_REFRESH.match(rt[len(args.refresh_token):])
                    and rt not in st.other_refresh
                    and not st.refresh_revoked_all):
                st.other_refresh.add(rt)
                st.refresh_tokens.add(rt)
            # each refresh grant: which issued refresh token (its index,
            # -1 for one never issued), and the verdict
            idx = (st.issued_refresh.index(rt)
                   if rt in st.issued_refresh else -1)
            st.refresh_log.append([idx, "busy" if rt in st.in_flight
                                   else "ok" if rt in st.refresh_tokens
                                   else "revoked"
                                   if rt in st.revoked_refresh
                                   else "reuse" if idx >= 0
                                   else "unknown", time.time()])
            if rt in st.in_flight:
                return self.send(400, {
                    "error": "invalid_grant",
                    "error_description":
                    "token request is already being processed"})
            if rt not in st.refresh_tokens:
                if rt in st.revoked_refresh:
                    # revoked by an admin, not rotated out: no reuse
                    pass
                elif rt in st.issued_refresh or rt in st.other_refresh:
                    # reuse of a rotated-out token: revoke everything
                    st.refresh_tokens.clear()
                    st.access_tokens.clear()
                return self.send(400, {"error": "invalid_grant",
                                       "error_description":
                                       "expired access/refresh token"})
            st.in_flight.add(rt)
            if rt in st.code_refresh:
                st.authorize["refresh_uses"] += 1
            user = st.refresh_user.get(rt)

        try:
            time.sleep(args.token_delay)
            st.token_gate.wait(600)
            token = st.fixed_token or new_access_token()
            if mode == "crlf":
                token = token[:20] + "\r\nX-Injected: 1"
            with st.lock:
                instance = st.instance_url
            if mode == "no_instance":
                instance = "ftp://example.com"
            reply = {
                "access_token": token,
                "signature": secrets.token_urlsafe(32),
                "scope": "refresh_token api",
                "instance_url": instance,
                "id": self.id_url(user),
                "token_type": "Bearer",
                "issued_at": str(int(time.time() * 1000)),
            }
            with st.lock:
                st.token_ok += 1
                st.add_access(token)
                st.token_issued[token] = st.token_used[token] = time.time()
                st.issued_access.append(token)
                if user:
                    st.token_user[token] = user
                if mode == "rotation":
                    new_rt = "5Aep861mock" + secrets.token_urlsafe(40)
                    if st.refresh_len:
                        new_rt = (new_rt * (st.refresh_len // len(new_rt)
                                            + 1))[:st.refresh_len]
                    st.refresh_tokens.discard(rt)
                    st.refresh_tokens.add(new_rt)
                    st.issued_refresh.append(new_rt)
                    if rt in st.code_refresh:
                        st.code_refresh.add(new_rt)
                    if user:
                        st.refresh_user[new_rt] = user
                    reply["refresh_token"] = new_rt
        finally:
            with st.lock:
                st.in_flight.discard(rt)

        return self.send(200, reply)

    def issue_token(self, mode, fields):
        """Answers a successful grant (not the refresh grant's own, which
        rotates): a new access token that the API accepts like any other,
        with instance_url, id and token_type, plus fields."""
        st = self.server.state
        args = st.args
        time.sleep(args.token_delay)
        st.token_gate.wait(600)
        token = st.fixed_token or new_access_token()
        if mode == "crlf":
            token = token[:20] + "\r\nX-Injected: 1"
        with st.lock:
            instance = st.instance_url
        if mode == "no_instance":
            instance = "ftp://example.com"
        reply = {"access_token": token}
        reply.update(fields)
        reply.update({
            "instance_url": instance,
            "id": "%s/id/%s/005000000000001" % (args.login_url, ORG_ID),
            "token_type": "Bearer",
        })
        with st.lock:
            st.token_ok += 1
            st.add_access(token)
            st.token_issued[token] = st.token_used[token] = time.time()
            st.issued_access.append(token)
        return self.send(200, reply)

    def jwt_grant(self, form, mode):
        """The OAuth 2.0 JWT bearer flow, checked as Salesforce does."""
        st = self.server.state
        args = st.args
        entry = None

        def fail(error, description):
            if entry is not None:
                with st.lock:
                    entry["error"] = "%s: %s" % (error, description)
            return self.send(400, {"error": error,
                                   "error_description": description})

        assertion = form.get("assertion") or ""
        parts = assertion.split(".")
        if len(parts) != 3 or not all(B64URL.match(p) for p in parts):
            return fail("invalid_grant", "invalid assertion")
        try:
            header = json.loads(b64url_decode(parts[0]))
            claims = json.loads(b64url_decode(parts[1]))
            signature = b64url_decode(parts[2])
        except ValueError:
            return fail("invalid_grant", "invalid assertion")
        if not isinstance(header, dict) or not isinstance(claims, dict):
            return fail("invalid_grant", "invalid assertion")
        if header.get("alg") != "RS256":
            return fail("invalid_grant", "invalid assertion")
        if claims.get("iss") != args.client_id:
            return fail("invalid_client_id", "client identifier invalid")
        with st.lock:
            key = st.jwt_key
        if not key or not verify_rs256(
                key, (parts[0] + "." + parts[1]).encode(), signature):
            return fail("invalid_grant", "invalid assertion")

        with st.lock:
            now = st.now()
            entry = {"header": header, "claims": claims, "now": now,
                     "error": None}
            st.jwt_log.append(entry)
            audience = st.jwt_audience
            users = dict(st.jwt_users)

        aud = claims.get("aud")
        if audience not in (aud if isinstance(aud, list) else [aud]):
            return fail("invalid_grant", "audience is invalid")
        exp = claims.get("exp")
        if (not isinstance(exp, (int, float)) or isinstance(exp, bool)
                or exp <= now):
            return fail("invalid_grant", "expired authorization code")
        if exp > now + 300:
            return fail("invalid_grant", "invalid assertion")
        sub = claims.get("sub", claims.get("prn"))
        if not isinstance(sub, str) or not users.get(sub):
            return fail("invalid_grant", "user hasn't approved this consumer")

        return self.issue_token(mode, {"scope": "api"})

    # -- the web server flow ---------------------------------------------

    def id_url(self, username=None):
        """The identity URL of a user (the default one: ORG_ID's
        005000000000001), as the token answers carry it in "id"."""
        user = USERS.get(username) or USERS["admin@acme"]
        return "%s/id/%s/%s" % (self.server.state.args.login_url,
                                user["org_id"], user["user_id"])

    def callback_ok(self, uri):
        """Whether uri is a registered callback URL of the app."""
        st = self.server.state
        with st.lock:
            callbacks = st.callbacks
        if callbacks is not None:
            return uri in callbacks
        u = urllib.parse.urlsplit(uri)
        try:
            u.port
        except ValueError:
            return False
        return (u.scheme in ("http", "https")
                and u.hostname in ("127.0.0.1", "localhost")
                and u.path.endswith("/callback") and not u.query
                and not u.fragment and "@" not in u.netloc)

    @staticmethod
    def redirect_to(uri, params):
        """uri with params added to its query (state last, when given)."""
        q = urllib.parse.urlencode([(k, v) for k, v in params
                                    if v is not None])
        return uri + ("&" if "?" in uri else "?") + q

    def html_page(self, status, title, body, headers=()):
        self.send(status, '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
                  '<title>%s</title></head>\n<body>\n<h1>%s</h1>\n%s\n'
                  '</body></html>\n' % (html.escape(title), html.escape(title),
                                        body),
                  ctype="text/html; charset=utf-8",
                  headers=[("Cache-Control", "no-store")] + list(headers))

    def authorize_check(self, q):
        """Checks an authorize request's query as Salesforce does: None when
        it may go on to the login, else it has answered (an error page, or a
        redirect to redirect_uri with the error)."""
        st = self.server.state
        state = q.get("state")

        def back(error, description):
            self.send(302, "", ctype="text/plain", headers=[(
                "Location", self.redirect_to(q["redirect_uri"], [
                    ("error", error), ("error_description", description),
                    ("state", state)]))])

        if q.get("client_id") != st.args.client_id:
            self.html_page(400, "Remote Access Authorization Error",
                           "<p>error=invalid_client_id: client identifier "
                           "invalid</p>")
            return False
        if not q.get("redirect_uri"):
            self.html_page(400, "Remote Access Authorization Error",
                           "<p>error=invalid_request: missing "
                           "redirect_uri</p>")
            return False
        if not self.callback_ok(q["redirect_uri"]):
            back("redirect_uri_mismatch",
                 "redirect_uri must match configuration")
            return False
        if q.get("response_type") != "code":
            back("unsupported_response_type",
                 "response type not supported")
            return False
        if q.get("code_challenge_method") not in (None, "S256"):
            back("invalid_request", "code_challenge_method not supported")
            return False
        if "code_challenge" in q and not PKCE_CHALLENGE.match(
                q["code_challenge"]):
            back("invalid_request", "invalid code_challenge")
            return False
        return None

    def login_page(self, q, error=None):
        st = self.server.state
        with st.lock:
            st.authorize["login_pages"] += 1
        hidden = "".join(
            '<input type="hidden" name="%s" value="%s">\n'
            % (k, html.escape(q[k])) for k in AUTHORIZE_FIELDS if k in q)
        self.html_page(200, "Login | Salesforce", (
            ('<p class="loginError" id="error">%s</p>\n'
             % html.escape(error) if error else "")
            + '<form id="login" name="login" method="post" '
              'action="/services/oauth2/authorize/login">\n' + hidden
            + '<label for="username">Username</label>\n'
              '<input type="text" id="username" name="username" value="'
            + html.escape(q.get("login_hint", "")) + '">\n'
              '<label for="password">Password</label>\n'
              '<input type="password" id="password" name="pw">\n'
              '<input type="submit" id="Login" name="Login" '
              'value="Log In">\n</form>'))

    def consent_page(self, ticket, username):
        self.html_page(200, "Allow Access?", (
            '<p>The app asks to access your data as <b id="user">%s</b>: '
            'access and manage your data (api), perform requests at any '
            'time (refresh_token, offline_access).</p>\n'
            '<form id="consent" name="consent" method="post" '
            'action="/services/oauth2/authorize/consent">\n'
            '<input type="hidden" name="ticket" value="%s">\n'
            '<input type="submit" id="oaapprove" name="approve" '
            'value="Allow">\n'
            '<input type="submit" id="oadeny" name="deny" value="Deny">\n'
            '</form>' % (html.escape(username), html.escape(ticket))))

    def authorize(self, path):
        """The authorize endpoint and its login and consent pages."""
        st = self.server.state
        raw = self.body().decode("latin-1")
        if path == "/services/oauth2/authorize":
            if self.command not in ("GET", "HEAD"):
                return self.send(405, "", ctype="text/plain")
            raw = urllib.parse.urlsplit(self.path).query
        elif self.command != "POST":
            return self.send(405, "", ctype="text/plain")
        q = {k: v[0] for k, v in urllib.parse.parse_qs(
            raw, keep_blank_values=True).items()}

        if path == "/services/oauth2/authorize":
            with st.lock:
                st.authorize["requests"] += 1
                st.authorize_log.append(
                    {k: q[k] for k in AUTHORIZE_FIELDS if k in q})
            if self.authorize_check(q) is None:
                self.login_page(q)
            return None

        if path == "/services/oauth2/authorize/login":
            q = {k: v for k, v in q.items()
                 if k in AUTHORIZE_FIELDS + ("username", "pw")}
            username = q.pop("username", "")
            password = q.pop("pw", "")
            if self.authorize_check(q) is not None:
                return None
            user = USERS.get(username)
            if user is None or not hmac.compare_digest(
                    user["password"].encode(), password.encode()):
                with st.lock:
                    st.authorize["login_failures"] += 1
                return self.login_page(q, "Please check your username and "
                                          "password. If you still can't "
                                          "log in, contact your Salesforce "
                                          "administrator.")
            ticket = secrets.token_urlsafe(24)
            with st.lock:
                st.authorize["logins"] += 1
                st.tickets[ticket] = (username, q)
            return self.consent_page(ticket, username)

        # the consent
        with st.lock:
            entry = st.tickets.pop(q.get("ticket", ""), None)
        if entry is None:
            return self.html_page(400, "Remote Access Authorization Error",
                                  "<p>error=invalid_request: this login "
                                  "is unknown or was used: start again "
                                  "from the app</p>")
        username, aq = entry
        state = aq.get("state")
        if "approve" not in q:
            with st.lock:
                st.authorize["denials"] += 1
                error = st.deny_error
            return self.send(302, "", ctype="text/plain", headers=[(
                "Location", self.redirect_to(aq["redirect_uri"], [
                    ("error", error),
                    ("error_description", "end-user denied authorization"),
                    ("state", state)]))])
        code = "aPrx" + secrets.token_urlsafe(48)
        with st.lock:
            st.authorize["consents"] += 1
            st.authorize["codes_issued"] += 1
            st.codes[code] = {
                "client_id": aq["client_id"],
                "redirect_uri": aq["redirect_uri"],
                "challenge": aq.get("code_challenge"),
                "scope": aq.get("scope") or "api refresh_token",
                "user": username,
                "created": time.time(),
                "used": False,
            }
            st.issued_codes.append(code)
        return self.send(302, "", ctype="text/plain", headers=[(
            "Location", self.redirect_to(aq["redirect_uri"], [
                ("code", code), ("state", state)]))])

    def code_grant(self, form, mode):
        """grant_type=authorization_code: the code exchange."""
        st = self.server.state
        args = st.args
        log = {"client_id": form.get("client_id"),
               "redirect_uri": form.get("redirect_uri"),
               "has_client_secret": "client_secret" in form,
               "has_code_verifier": "code_verifier" in form,
               "user": None, "result": None}

        def refuse(reason, status, error, description, ctype=None):
            with st.lock:
                refused = st.authorize["exchanges_refused"]
                refused[reason] = refused.get(reason, 0) + 1
                log["result"] = reason
            if ctype:
                return self.send(status, description, ctype=ctype)
            return self.send(status, {"error": error,
                                      "error_description": description})

        with st.lock:
            st.exchange_log.append(log)
            if "code_verifier" in form:
                st.code_verifiers.append(form["code_verifier"])
            xmode, delay = st.exchange_mode, st.exchange_delay
            secret_required = st.code_secret
        if xmode == "down":
            return refuse("down", 503, None,
                          "<html><body><h1>Down for maintenance</h1>"
                          "</body></html>", ctype="text/html")
        if xmode == "refuse":
            return refuse("refuse", 400, "invalid_grant",
                          "expired authorization code")
        if xmode == "slow":
            time.sleep(delay)

        if form.get("client_id") != args.client_id:
            return refuse("client_id", 400, "invalid_client_id",
                          "client identifier invalid")
        if ("client_secret" in form or secret_required) and \
                form.get("client_secret") != args.client_secret:
            return refuse("client_secret", 400, "invalid_client",
                          "invalid client credentials")
        with st.lock:
            c = st.codes.get(form.get("code", ""))
            spent = c is not None and c["used"]
            old = c is not None and (
                time.time() - c["created"] >= CODE_LIFETIME)
            if c is not None:
                c["used"] = True
        if c is None:
            return refuse("unknown_code", 400, "invalid_grant",
                          "invalid authorization code")
        if spent or old:
            return refuse("reused" if spent else "expired", 400,
                          "invalid_grant", "expired authorization code")
        log["user"] = c["user"]
        if form.get("redirect_uri") != c["redirect_uri"]:
            return refuse("redirect_uri", 400, "redirect_uri_mismatch",
                          "redirect_uri must match configuration")
        if c["challenge"] is not None:
            verifier = form.get("code_verifier")
            if verifier is None:
                return refuse("verifier_missing", 400, "invalid_grant",
                              "invalid code verifier")
            digest = None
            if PKCE_VERIFIER.match(verifier):
                digest = base64.urlsafe_b64encode(hashlib.sha256(
                    verifier.encode()).digest()).rstrip(b"=").decode()
            if digest is None or \
                    not hmac.compare_digest(digest, c["challenge"]):
                return refuse("verifier_wrong", 400, "invalid_request",
                              "invalid code verifier")

        time.sleep(args.token_delay)
        st.token_gate.wait(600)
        token = st.fixed_token or new_access_token()
        if mode == "crlf":
            token = token[:20] + "\r\nX-Injected: 1"
        with st.lock:
            instance = st.instance_url
        if mode == "no_instance":
            instance = "ftp://example.com"
        identity = self.id_url(c["user"])
        issued_at = str(int(time.time() * 1000))
        reply = {
            "access_token": token,
            "signature": base64.b64encode(hmac.new(
                args.client_secret.encode(), (identity + issued_at).encode(),
                hashlib.sha256).digest()).decode(),
            "scope": c["scope"],
            "instance_url": instance,
            "id": identity,
            "token_type": "Bearer",
            "issued_at": issued_at,
        }
        scopes = c["scope"].split()
        with st.lock:
            if "refresh_token" in scopes or "offline_access" in scopes:
                rt = "5Aep861code" + secrets.token_urlsafe(40)
                st.refresh_tokens.add(rt)
                st.issued_refresh.append(rt)
                st.code_refresh.add(rt)
                st.code_refresh_tokens.append(rt)
                st.refresh_user[rt] = c["user"]
                reply["refresh_token"] = rt
            st.token_ok += 1
            st.add_access(token)
            st.token_issued[token] = st.token_used[token] = time.time()
            st.issued_access.append(token)
            st.code_access_tokens.append(token)
            st.token_user[token] = c["user"]
            st.authorize["exchanges_ok"] += 1
            log["result"] = "ok"
        return self.send(200, reply)

    def client_ok(self, form):
        """The client checks of the refresh and client credentials grants,
        as Salesforce makes them: a wrong client_id is 400
        invalid_client_id, a wrong secret 400 invalid_client.  False when
        it answered so."""
        args = self.server.state.args
        if form.get("client_id") != args.client_id:
            self.send(400, {"error": "invalid_client_id",
                            "error_description": "client identifier invalid"})
            return False
        if form.get("client_secret") != args.client_secret:
            self.send(400, {"error": "invalid_client",
                            "error_description": "invalid client credentials"})
            return False
        return True

    def client_credentials_grant(self, form, mode):
        """The client credentials flow: the app's run-as user's token."""
        st = self.server.state
        args = st.args
        if not self.client_ok(form):
            return None
        with st.lock:
            cc_user = st.cc_user
        if not cc_user:
            return self.send(400, {"error": "invalid_grant",
                                   "error_description":
                                   "no client credentials user enabled"})
        return self.issue_token(mode, {
            "signature": secrets.token_urlsafe(32),
            "scope": "api",
            "issued_at": str(int(time.time() * 1000)),
        })

    def introspect(self):
        st = self.server.state
        form = {k: v[0] for k, v in urllib.parse.parse_qs(
            self.body().decode("latin-1")).items()}
        if (form.get("client_id") != st.args.client_id
                or form.get("client_secret") != st.args.client_secret):
            return self.send(401, {"error": "invalid_client",
                                   "error_description":
                                   "invalid client credentials"})
        token = form.get("token", "")
        now = time.time()
        with st.lock:
            leaky = st.mode == "leaky_introspect"
            if leaky:
                st.introspections += 1
        if leaky:
            return self.send(400, {"error": "invalid_request",
                                   "error_description":
                                   "cannot introspect " + token})
        with st.lock:
            st.introspections += 1
            active = token in st.access_tokens
            exp = now + 7200
            if active and st.lifetime:
                since = st.token_issued[token] if st.absolute \
                    else st.token_used[token]
                exp = since + st.lifetime
                if now > exp:
                    active = False
                    st.access_tokens.discard(token)
        if not active:
            return self.send(200, {"active": False})
        return self.send(200, {
            "active": True, "scope": "api refresh_token",
            "client_id": st.args.client_id, "username": "user@example.com",
            "sub": st.args.login_url + "/id/" + ORG_ID + "/005000000000001",
            "token_type": "access_token", "exp": int(exp),
            "iat": int(st.token_issued.get(token, now)),
            "nbf": int(st.token_issued.get(token, now))})

    # -- the API ----------------------------------------------------------

    def identity(self, path):
        """The identity service: GET /id/ORG_ID/USER_ID with a valid
        access token answers who the user is, as Salesforce does."""
        st = self.server.state
        auths = self.headers.get_all("Authorization") or []
        token = auths[0][7:] if auths and auths[0].startswith("Bearer ") \
            else None
        with st.lock:
            st.identity_requests += 1
            ok = self.session_ok(token) and st.identity_mode != "fail"
            name = st.token_user.get(token)
        parts = path.split("/")
        # a code's token (or one refreshed from its refresh token) is its
        # user's, the others the default user's (any user id of ORG_ID)
        user = USERS.get(name) if name else None
        if not ok or len(parts) != 4 or parts[2] != (
                user["org_id"] if user else ORG_ID) or (
                user and parts[3] != user["user_id"]):
            return self.send(403, "Bad_OAuth_Token", ctype="text/plain")
        base = "http://127.0.0.1:%d" % self.server.server_address[1]
        return self.send(200, {
            "id": base + path,
            "asserted_user": True,
            "user_id": parts[3],
            "organization_id": parts[2],
            "username": name or "integration@mock.example.com",
            "nick_name": "integration",
            "display_name": "Mock <Integration> & Co",
            "email": "integration@mock.example.com",
            "first_name": "Mock",
            "last_name": "Integration",
            "timezone": "America/Los_Angeles",
            "language": "en_US",
            "locale": "en_US",
            "user_type": "STANDARD",
            "active": True,
        })
    def session_ok(self, token):
        """Whether token is a live access token (the caller holds st.lock):
        issued, not revoked, not past the mock's lifetime.  The REST API
        (Bearer), SOAP (sessionId) and Bulk 1.0 (X-SFDC-Session) all ask
        this; a caller that accepts the request calls touch()."""
        st = self.server.state
        now = time.time()
        if token in st.access_tokens and st.lifetime:
            since = st.token_issued[token] if st.absolute \
                else st.token_used[token]
            if now - since > st.lifetime:
                st.access_tokens.discard(token)
        return token is not None and token in st.access_tokens

    def touch(self, token):
        """A use of a live token slides its lifetime (holding st.lock)."""
        self.server.state.token_used[token] = time.time()

    def api(self, path):
        st = self.server.state
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        data = self.body()
        auths = self.headers.get_all("Authorization") or []
        token = auths[0][7:] if auths and auths[0].startswith("Bearer ") \
            else None
        if "recheck" in query:
            with st.lock:
                live = self.session_ok(token)
                if live:
                    st.late401_log.append(self.path)
            if live:
                time.sleep(float(query["recheck"][0]))
        with st.lock:
            st.api_requests += 1
            ok = (self.session_ok(token) and len(auths) == 1
                  and st.api_mode != "reject" and "reject" not in query)
            notrest = ok and "notrest" in query
            if ok:
                self.touch(token)
            if not ok or notrest:
                st.api_401 += 1
            st.api_log.append({
                "method": self.command,
                "path": self.path,
                "status": 200 if ok and not notrest else 401,
                "body_sha256": hashlib.sha256(data).hexdigest(),
                "peer_port": self.client_address[1],
            })
        if not ok:
            if "late401" in query:
                with st.lock:
                    st.late401_log.append(self.path)
                time.sleep(float(query["late401"][0]))
            if "slow401" in query:
                return self.slow401()
            if "big401" in query:
                n = int(query["big401"][0])
                return self.send(401, "x" * n, ctype="text/plain")
            if "cache401" in query:
                return self.send(401, [{"message": "Session expired or invalid",
                                        "errorCode": "INVALID_SESSION_ID"}],
                                 headers=[("Cache-Control", "max-age=300")])
            if "empty401" in query:
                return self.send(401, "")
            if "html401" in query:
                return self.send(401, "<html><body>401</body></html>",
                                 ctype="text/html")
            return self.send(401, [{"message": "Session expired or invalid",
                                    "errorCode": "INVALID_SESSION_ID"}])
        if notrest:
            return self.send(401, NOT_REST_BODY)
        if path == "/services/data/chunked":
            return self.chunked(int(query.get("n", ["10"])[0]))
        if path == "/services/data/big":
            return self.big(int(query.get("bytes", ["1048576"])[0]))
        if "accel" in query:
            return self.send(200, "", ctype="text/plain", headers=[
                ("X-Accel-Redirect", query["accel"][0])])
        if "ssi" in query:
            return self.send(200, '<p><!--# include virtual="%s" --></p>\n'
                             % query["ssi"][0], ctype="text/html")
        if "html" in query:
            return self.send(200, "<html><body>Account Acme</body></html>\n",
                             ctype="text/html")
        if path == "/services/data/image.png":
            return self.send(200, png(20, 10), ctype="image/png")
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() != "authorization"}
        with st.lock:
            usage = "api-usage=%d/%d" % (st.api_requests, st.api_limit)
        return self.send(200, {
            "method": self.command,
            "path": self.path,
            "authorization": auths[0],
            "authorization_count": len(auths),
            "body_sha256": hashlib.sha256(data).hexdigest(),
            "body_length": len(data),
            "headers": headers,
            "peer_port": self.client_address[1],
        }, headers=[("Sforce-Limit-Info",
                     "per-app-api-usage=1/100(appName=mock), " + usage)])

    # -- the Streaming API (CometD) ----------------------------------------

    def cometd(self):
        st = self.server.state
        data = self.body()
        auths = self.headers.get_all("Authorization") or []
        token = None
        if len(auths) == 1:
            for scheme in ("OAuth ", "Bearer "):
                if auths[0].startswith(scheme):
                    token = auths[0][len(scheme):]
        try:
            msgs = json.loads(data)
        except ValueError:
            msgs = None
        if isinstance(msgs, dict):
            msgs = [msgs]
        entry = {"channels": [m.get("channel") for m in msgs or []
                              if isinstance(m, dict)],
                 "authorization": auths, "replies": [], "status": 200}
        with st.lock:
            st.cometd_auths.extend(auths)
            st.cometd_log.append(entry)
            st.api_requests += 1
            ok = self.session_ok(token)
            if ok:
                self.touch(token)
            elif st.cometd_http401:
                st.api_401 += 1
                entry["status"] = 401
        if not isinstance(msgs, list) or not all(isinstance(m, dict)
                                                 for m in msgs):
            entry["status"] = 400
            return self.send(400, [{"successful": False,
                                    "error": "400::Bad request"}])
        if entry["status"] == 401:
            return self.send(401, [{"message": "Session expired or invalid",
                                    "errorCode": "INVALID_SESSION_ID"}])
        # as CometD's server: a connect in a batch comes last, and is not
        # held when the batch has other replies to send
        replies = []
        for m in msgs:
            if m.get("channel") != "/meta/connect":
                replies.extend(self.cometd_message(m, token))
        for m in msgs:
            if m.get("channel") == "/meta/connect":
                replies.extend(self.cometd_message(m, token, not replies))
        for r in replies:
            entry["replies"].append({"channel": r.get("channel"),
                                     "successful": r.get("successful"),
                                     "error": r.get("error")})
        with st.lock:
            odd = st.cometd_odd
        refused = any(str(r.get("error", "")).startswith("401::")
                      for r in replies)
        if refused and odd == "big":
            for r in replies:
                r.setdefault("ext", {})["pad"] = "x" * 9000
        body = json.dumps(replies).encode()
        if refused and odd == "truncated":
            body = body[:-2]
        entry["length"] = len(body)
        entry["sha256"] = hashlib.sha256(body).hexdigest()
        wire = gzip.compress(body, mtime=0) if self.gzip_ok else body
        entry["wire_sha256"] = hashlib.sha256(wire).hexdigest()
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        if "late401" in query and any(
                r.get("error") == "403::Handshake denied"
                and str(r.get("ext", {}).get("sfdc", {})
                        .get("failureReason", "")).startswith("401::")
                for r in replies):
            # a slow handshake: the session checked at once, the refusal
            # sent late
            with st.lock:
                st.late401_log.append(self.path)
            time.sleep(float(query["late401"][0]))
        events = any(not str(r.get("channel", "")).startswith("/meta/")
                     for r in replies)
        with st.lock:
            split = events and st.cometd_split_state == "armed"
            if split:
                st.cometd_split_state = "first_sent"
                entry["split_at"] = len(wire) // 2
        if split:
            return self.cometd_split_send(wire, entry["split_at"])
        return self.send(200, body)

    def cometd_split_send(self, wire, half):
        """Sends WIRE (gzip-compressed already when the client may take
        it) in two parts: the first HALF bytes, then, once the test
        releases it (/__mock/cometd?release=1), the rest; chunked or with
        a Content-Length, as the split knob says."""
        st = self.server.state
        chunked = st.cometd_split == "chunked"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(len(wire)))
        if self.gzip_ok:
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Vary", "Accept-Encoding")
        self.end_headers()
        parts = [wire[:half], wire[half:]]
        try:
            for i, part in enumerate(parts):
                if i == 1:
                    with st.lock:
                        end = time.time() + 120
                        while (st.cometd_split_state != "released"
                               and time.time() < end):
                            st.lock.wait(1)
                        st.cometd_split_state = "done"
                if chunked:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                else:
                    self.wfile.write(part)
                self.wfile.flush()
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass

    def cometd_message(self, m, token, hold=True):
        """The replies to one Bayeux message (events first for a
        connect, held unless "hold" is false)."""
        st = self.server.state
        channel = m.get("channel")
        reply = {"channel": channel, "id": m.get("id")}
        dead = {"reconnect": "none", "interval": 0}
        why = "401::Authentication invalid" if token \
            else "401::Request requires authentication"
        if channel == "/meta/handshake":
            with st.lock:
                ok = self.session_ok(token)
                limit = st.cometd_daily_limit
                hold = st.cometd_hold
                if ok and not limit:
                    cid = secrets.token_hex(12)
                    st.cometd_clients[cid] = {"subs": set(), "queue": []}
            reply["ext"] = {"replay": True, "payload.format": True}
            if not ok or limit:
                reason = why if not ok else \
                    "403::Organization total events daily limit exceeded"
                reply["ext"]["sfdc"] = {"failureReason": reason}
                reply.update({"successful": False,
                              "error": "403::Handshake denied",
                              "advice": {"reconnect": "none"}})
                return [reply]
            reply.update({"successful": True, "clientId": cid,
                          "version": "1.0", "minimumVersion": "1.0",
                          "supportedConnectionTypes": ["long-polling"],
                          "advice": {"interval": 0,
                                     "timeout": int(hold * 1000),
                                     "reconnect": "retry"}})
            return [reply]
        cid = m.get("clientId")
        reply["clientId"] = cid
        with st.lock:
            client = st.cometd_clients.get(cid)
            ok = self.session_ok(token)
        if client is None:
            reply.update({"successful": False,
                          "error": "403::Unknown client",
                          "advice": {"reconnect": "handshake",
                                     "interval": 0}})
            return [reply]
        if not ok:
            reply.update({"successful": False, "error": why,
                          "advice": dead})
            return [reply]
        if channel == "/meta/connect":
            with st.lock:
                deadline = time.time() + (st.cometd_hold if hold else 0)
                while True:
                    if not self.session_ok(token):
                        reply.update({"successful": False, "error": why,
                                      "advice": dead})
                        return [reply]
                    if cid not in st.cometd_clients:
                        reply.update({"successful": False,
                                      "error": "403::Unknown client",
                                      "advice": {"reconnect": "handshake",
                                                 "interval": 0}})
                        return [reply]
                    if client["queue"]:
                        events, client["queue"] = client["queue"], []
                        reply["successful"] = True
                        return events + [reply]
                    left = deadline - time.time()
                    if left <= 0:
                        break
                    st.lock.wait(left)
            reply["successful"] = True
            return [reply]
        if channel in ("/meta/subscribe", "/meta/unsubscribe"):
            sub = m.get("subscription")
            reply["subscription"] = sub
            with st.lock:
                if channel == "/meta/subscribe":
                    client["subs"].add(sub)
                else:
                    client["subs"].discard(sub)
            reply["successful"] = True
            return [reply]
        if channel == "/meta/disconnect":
            with st.lock:
                st.cometd_clients.pop(cid, None)
                st.lock.notify_all()
            reply["successful"] = True
            return [reply]
        reply.update({"successful": False,
                      "error": "403::Publish denied"})
        return [reply]

    # -- SOAP (partner, enterprise, metadata, tooling, Apex classes) -------

    def soap_endpoint(self, path):
        """(kind, namespace) of a SOAP endpoint path, or (None, None)."""
        parts = path.split("/")
        if len(parts) >= 5 and parts[3] in SOAP_NS:
            return parts[3], SOAP_NS[parts[3]]
        if len(parts) >= 5 and parts[3] == "class" and parts[4]:
            return "class", "http://soap.sforce.com/schemas/class/" + parts[4]
        return None, None

    def soap_reply(self, kind, ns, inner, status=200, headers=()):
        sobject = SOBJECT_NS.get(kind, SOBJECT_NS["u"])
        self.send(status, '<?xml version="1.0" encoding="UTF-8"?>'
                  '<soapenv:Envelope xmlns:soapenv="%s" xmlns="%s" '
                  'xmlns:sf="%s" xmlns:xsi="%s"><soapenv:Body>%s'
                  '</soapenv:Body></soapenv:Envelope>'
                  % (SOAPENV, ns, sobject, XSI, inner),
                  ctype="text/xml;charset=UTF-8", headers=headers)

    def soap_read_body(self):
        """The body; None when fewer bytes than Content-Length arrive within
        10 s (a Content-Length that is too large must not hang a test)."""
        self.connection.settimeout(10)
        try:
            return self.body()
        except OSError:
            self.close_connection = True
            return None
        finally:
            try:
                self.connection.settimeout(None)
            except OSError:
                pass

    def decode_body(self, data):
        """A request body as Salesforce reads it: Content-Encoding gzip or
        deflate inflated (identity: as it is).  None when it does not
        inflate or the encoding is unknown."""
        ce = (self.headers.get("Content-Encoding") or "").strip().lower()
        try:
            if ce == "gzip":
                return gzip.decompress(data)
            if ce == "deflate":
                return zlib.decompress(data)
        except (OSError, EOFError, zlib.error):
            return None
        return data if ce in ("", "identity") else None

    def soap(self, path):
        st = self.server.state
        wire = self.soap_read_body()
        data = None if wire is None else self.decode_body(wire)
        kind, ns = self.soap_endpoint(path)
        entry = {
            "method": self.command,
            "path": self.path,
            "namespace": ns,
            "content_length": self.headers.get("Content-Length"),
            "chunked": self.headers.get("Transfer-Encoding", "").lower()
                       == "chunked",
            "content_type": self.headers.get("Content-Type"),
            "soapaction": self.headers.get("SOAPAction"),
            "accept_encoding": self.headers.get("Accept-Encoding"),
            "authorization": self.headers.get_all("Authorization") or [],
            "content_encoding": self.headers.get("Content-Encoding"),
            "body_len": len(wire) if wire is not None else None,
            "decoded_len": len(data) if data is not None else None,
            "body_sha256": hashlib.sha256(data or b"").hexdigest(),
            "tail_sha256": None,
            "op": None,
            "header": False,
            "session_headers": [],
            "session_ids": [],
            "session_id": None,
            "session_valid": False,
            "status": None,
            "error": None,
        }
        status, reply, headers = self.soap_call(kind, ns, data, entry)
        entry["status"] = status
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        if "late401" in query and not entry["session_valid"]:
            # a slow call: the session checked at once, the fault sent late
            with st.lock:
                st.late401_log.append(self.path)
            time.sleep(float(query["late401"][0]))
        with st.lock:
            st.api_requests += 1
            st.api_log.append({"method": self.command, "path": self.path,
                               "status": status,
                               "body_sha256": entry["body_sha256"],
                               "peer_port": self.client_address[1]})
            st.soap_log.append(entry)
            if entry["op"]:
                st.soap_calls[entry["op"]] = \
                    st.soap_calls.get(entry["op"], 0) + 1
            st.soap_session_ids.extend(entry["session_ids"])
            if data is not None:
                st.soap_last_truncated = len(data) > 1 << 20
                st.soap_last_envelope = data[:65536 if len(data) > 1 << 20
                                             else len(data)].decode(
                                                 "utf-8", "replace")
        if isinstance(reply, str) and reply.startswith("<?xml"):
            return self.send(status, reply, ctype="text/xml;charset=UTF-8",
                             headers=headers)
        return self.soap_reply(kind, ns, reply, status, headers)

    def soap_call(self, kind, ns, data, entry):
        """Checks the envelope and the session, runs the operation:
        (status, a whole envelope or a Body's content, extra headers)."""
        st = self.server.state
        if self.command != "POST":
            return 405, soap_fault("soapenv:Client", "POST only"), ()
        if kind is None:
            return 404, soap_fault("soapenv:Client",
                                   "No such SOAP endpoint"), ()
        if entry["body_len"] is None:
            entry["error"] = "short body"
            return 400, soap_fault("soapenv:Client",
                                   "Fewer bytes than Content-Length"), ()
        if data is None:
            entry["error"] = "content encoding"
            return 500, soap_fault("soapenv:Client", "Unable to decode the "
                                   "Content-Encoding of the request"), ()
        m = re.search(rb"<(?:[A-Za-z_][\w.\-]*:)?Body[\s/>]", data)
        if m:
            entry["tail_sha256"] = hashlib.sha256(
                data[m.start():]).hexdigest()
        if re.search(rb"<!DOCTYPE", data, re.I):
            entry["error"] = "doctype"
            return 500, soap_fault("soapenv:Client",
                                   "DOCTYPE is not allowed"), ()
        try:
            root = ET.fromstring(data)
        except ET.ParseError as e:
            entry["error"] = "parse: %s" % e
            return 500, soap_fault("soapenv:Client",
                                   "Unable to parse the envelope: %s" % e), ()
        if root.tag != "{%s}Envelope" % SOAPENV:
            entry["error"] = "not an envelope: " + root.tag
            return 500, soap_fault("soapenv:VersionMismatch",
                                   "Wrong envelope: " + root.tag), ()
        header = root.find("{%s}Header" % SOAPENV)
        body = root.find("{%s}Body" % SOAPENV)
        entry["header"] = header is not None
        if header is not None:
            for el in header.iter():
                local = el.tag.rsplit("}", 1)[-1]
                if local == "SessionHeader":
                    entry["session_headers"].append(
                        el.tag[1:].split("}")[0] if el.tag[0] == "{" else "")
                elif local == "sessionId":
                    entry["session_ids"].append(el.text or "")
            sh = header.findall("{%s}SessionHeader" % ns)
            if len(sh) == 1:
                sid = sh[0].findall("{%s}sessionId" % ns)
                if len(sid) == 1:
                    entry["session_id"] = sid[0].text or ""
        if body is None or len(body) == 0:
            entry["error"] = "no operation"
            return 500, soap_fault("soapenv:Client",
                                   "No operation in the Body"), ()
        op_el = body[0]
        op = op_el.tag.rsplit("}", 1)[-1]
        entry["op"] = op
        if op_el.tag != "{%s}%s" % (ns, op):
            return 500, soap_fault(
                "soapenv:Client", "No operation available for request %s, "
                "please check the WSDL for the service." % op_el.tag), ()

        def text(name):
            el = op_el.find("{%s}%s" % (ns, name))
            return None if el is None else (el.text or "")

        if op == "login" and kind in ("u", "c"):
            username, password = text("username"), text("password")
            with st.lock:
                st.soap_logins.append({"username": username,
                                       "password": bool(password),
                                       "session_header":
                                       bool(entry["session_headers"])})
            if not username or not password:
                return 500, soap_fault(
                    "sf:INVALID_LOGIN", "Invalid username, password, "
                    "security token; or user locked out.", "LoginFault"), ()
            base = st.instance_url or st.args.login_url
            return 200, (
                '<loginResponse><result><metadataServerUrl>%s'
                '/services/Soap/m/59.0/%s</metadataServerUrl>'
                '<passwordExpired>false</passwordExpired><sandbox>false'
                '</sandbox><serverUrl>%s/services/Soap/u/59.0/%s</serverUrl>'
                '<sessionId>%s!LOGIN%s</sessionId><userId>005000000000001AAA'
                '</userId><userInfo><accessibilityMode>false'
                '</accessibilityMode><chatterExternal>false</chatterExternal>'
                '<currencySymbol>$</currencySymbol>'
                '<orgAttachmentFileSizeLimit>5242880'
                '</orgAttachmentFileSizeLimit><orgDefaultCurrencyIsoCode>USD'
                '</orgDefaultCurrencyIsoCode><orgDefaultCurrencyLocale>en_US'
                '</orgDefaultCurrencyLocale><orgDisallowHtmlAttachments>false'
                '</orgDisallowHtmlAttachments><orgHasPersonAccounts>false'
                '</orgHasPersonAccounts><organizationId>%s</organizationId>'
                '<organizationMultiCurrency>false</organizationMultiCurrency>'
                '<organizationName>Mock Org</organizationName><profileId>'
                '00e000000000001AAA</profileId><roleId xsi:nil="true"/>'
                '<sessionSecondsValid>7200</sessionSecondsValid>'
                '<userDefaultCurrencyIsoCode xsi:nil="true"/><userEmail>'
                'integration@example.com</userEmail><userFullName>Integration'
                ' User</userFullName><userId>005000000000001AAA</userId>'
                '<userLanguage>en_US</userLanguage><userLocale>en_US'
                '</userLocale><userName>%s</userName><userTimeZone>'
                'America/Los_Angeles</userTimeZone><userType>Standard'
                '</userType><userUiSkin>Theme3</userUiSkin></userInfo>'
                '</result></loginResponse>'
                % (xml_escape(base), ORG_ID, xml_escape(base), ORG_ID,
                   ORG_ID, secrets.token_hex(16), ORG_ID,
                   xml_escape(username))), ()

        with st.lock:
            token = entry["session_id"]
            entry["session_valid"] = ok = self.session_ok(token)
            if ok:
                self.touch(token)
        if not ok:
            return 500, SOAP_INVALID_SESSION, ()

        if op in ("query", "queryAll") and kind in ("u", "c", "T"):
            soql = text("queryString") or ""
            if "bad" in soql:
                return 500, SOAP_MALFORMED_QUERY, ()
            if "trap" in soql:
                return 500, SOAP_TRAP_FAULT, ()
            if "custom500" in soql:
                return 500, SOAP_UNKNOWN_EXCEPTION, (
                    ("X-Mock-Fault", "unknown-exception"),
                    ("Sforce-Limit-Info", "api-usage=42/15000"))
            records = "".join(
                '<records xsi:type="sf:sObject"><sf:type>Account</sf:type>'
                '<sf:Id>001Mock00000000%d</sf:Id><sf:Name>%s</sf:Name>'
                '</records>' % (i, name)
                for i, name in enumerate(("Acme", "Globex"), 1))
            return 200, ('<%sResponse><result xsi:type="QueryResult"><done>'
                         'true</done><queryLocator xsi:nil="true"/>%s<size>2'
                         '</size></result></%sResponse>'
                         % (op, records, op)), ()
        if op == "create" and kind in ("u", "c"):
            n = len(op_el.findall("{%s}sObjects" % ns))
            with st.lock:
                st.bulk_seq += 1
                seq = st.bulk_seq
            return 200, "<createResponse>%s</createResponse>" % "".join(
                "<result><id>001Mock%08d%d</id><success>true</success>"
                "</result>" % (seq, i) for i in range(n)), ()
        if op == "describeSObject" and kind in ("u", "c"):
            name = text("sObjectType") or ""
            if name != "Account":
                return 500, soap_fault(
                    "sf:INVALID_TYPE", "sObject type '%s' is not supported."
                    % name, "InvalidSObjectFault"), ()
            return 200, (
                '<describeSObjectResponse><result><createable>true'
                '</createable><fields><label>Account ID</label><length>18'
                '</length><name>Id</name><type>id</type></fields><fields>'
                '<label>Account Name</label><length>255</length><name>Name'
                '</name><type>string</type></fields><label>Account</label>'
                '<name>Account</name></result></describeSObjectResponse>'), ()
        if op == "deploy" and kind == "m":
            zipped = text("ZipFile") or ""
            try:
                raw = base64.b64decode(zipped, validate=True)
            except ValueError:
                raw = None
            with st.lock:
                st.soap_deploys.append({
                    "body_len": entry["body_len"],
                    "body_sha256": entry["body_sha256"],
                    "tail_sha256": entry["tail_sha256"],
                    "base64_len": len(zipped),
                    "zip_len": None if raw is None else len(raw),
                    "zip_sha256": None if raw is None
                    else hashlib.sha256(raw).hexdigest(),
                })
            if raw is None:
                return 500, soap_fault("sf:INVALID_ZIP", "ZipFile is not "
                                       "base64", "ApiFault"), ()
            return 200, ('<deployResponse><result><done>false</done><id>'
                         '0AfMock%011d</id><state>Queued</state></result>'
                         '</deployResponse>' % len(st.soap_deploys)), ()
        if kind in ("T", "class"):
            return 200, ("<%sResponse><result>ok</result></%sResponse>"
                         % (op, op)), ()
        return 500, soap_fault(
            "soapenv:Client", "No operation available for request %s, "
            "please check the WSDL for the service." % op_el.tag), ()

    def wsdl(self, endpoint):
        """t/lib/wsdl/partner.wsdl with its service at endpoint."""
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                            "wsdl", "partner.wsdl")
        with open(path, encoding="utf-8") as f:
            doc = f.read()
        if endpoint:
            doc = re.sub(r'(<soap:address location=")[^"]*"',
                         lambda m: m.group(1) + xml_escape(endpoint) + '"',
                         doc)
        return self.send(200, doc, ctype="text/xml;charset=UTF-8")

    # -- Bulk API 1.0 -------------------------------------------------------

    def bulk_send(self, status, as_json, obj, root, headers=()):
        """obj as JSON, or as XML under root in the asyncapi namespace."""
        if as_json:
            return self.send(status, json.dumps(obj, separators=(",", ":")),
                             headers=headers)
        inner = "".join("<%s>%s</%s>" % (k, xml_escape(v), k)
                        for k, v in obj.items())
        return self.send(status, '<?xml version="1.0" encoding="UTF-8"?>'
                         '<%s xmlns="%s">%s</%s>' % (root, BULK_NS, inner,
                                                     root),
                         ctype="application/xml", headers=headers)

    def bulk_error(self, status, as_json, code, message, headers=()):
        return self.bulk_send(status, as_json,
                              {"exceptionCode": code,
                               "exceptionMessage": message}, "error",
                              headers)

    def bulk(self, path):
        st = self.server.state
        wire = self.body()
        data = self.decode_body(wire)
        if data is None:
            data = wire
        parts = [p for p in path.split("/") if p][3:]  # after the version
        sessions = self.headers.get_all("X-SFDC-Session") or []
        ctype = (self.headers.get("Content-Type") or "").lower()
        with st.lock:
            job = st.bulk_jobs.get(parts[1]) if len(parts) > 1 else None
            as_json = "json" in ctype or bool(job and job["json"])
            ok = len(sessions) == 1 and self.session_ok(sessions[0])
            if ok:
                self.touch(sessions[0])
            entry = {
                "method": self.command,
                "path": self.path,
                "sessions": sessions,
                "authorization": self.headers.get_all("Authorization") or [],
                "content_type": self.headers.get("Content-Type"),
                "accept_encoding": self.headers.get("Accept-Encoding"),
                "content_encoding": self.headers.get("Content-Encoding"),
                "body_len": len(wire),
                "body_sha256": hashlib.sha256(data).hexdigest(),
                "status": 400,
            }
            st.api_requests += 1
            st.bulk_log.append(entry)
            st.bulk_sessions.extend(sessions)
            st.api_log.append({"method": self.command, "path": self.path,
                               "status": None,
                               "body_sha256": entry["body_sha256"],
                               "peer_port": self.client_address[1]})
            log = st.api_log[-1]
        if not ok:
            entry["status"] = log["status"] = 400
            if as_json:
                return self.send(400, BULK_INVALID_SESSION_JSON)
            return self.send(400, BULK_INVALID_SESSION_XML,
                             ctype="application/xml")
        status = self.bulk_call(parts, data, job, as_json)
        entry["status"] = log["status"] = status

    def bulk_call(self, parts, data, job, as_json):
        """Runs one Bulk 1.0 call; returns the status it answered."""
        st = self.server.state
        now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())

        def job_info(job):
            return {"id": job["id"], "operation": job["operation"],
                    "object": job["object"],
                    "createdById": "005000000000001AAA",
                    "createdDate": job["created"], "state": job["state"],
                    "concurrencyMode": "Parallel",
                    "contentType": "JSON" if job["json"] else "CSV",
                    "numberBatchesTotal": len(job["batches"]),
                    "numberRecordsProcessed": sum(
                        len(b["ids"]) for b in job["batches"].values()),
                    "apiVersion": "59.0"}

        def batch_info(job, b, state):
            return {"id": b["id"], "jobId": job["id"], "state": state,
                    "createdDate": b["created"],
                    "numberRecordsProcessed": len(b["ids"]),
                    "numberRecordsFailed": 0}

        if parts == ["job"] and self.command == "POST":
            try:
                if as_json:
                    spec = json.loads(data)
                else:
                    root = ET.fromstring(data.strip())
                    spec = {el.tag.rsplit("}", 1)[-1]: el.text
                            for el in root}
                    if root.tag != "{%s}jobInfo" % BULK_NS:
                        raise ValueError(root.tag)
            except (ValueError, ET.ParseError) as e:
                self.bulk_error(400, as_json, "InvalidJob",
                                "Unable to parse the job: %s" % e)
                return 400
            with st.lock:
                st.bulk_seq += 1
                job = {"id": "750Mock%011d" % st.bulk_seq,
                       "operation": spec.get("operation"),
                       "object": spec.get("object"),
                       "json": (spec.get("contentType") or "CSV") == "JSON",
                       "state": "Open", "created": now, "batches": {}}
                st.bulk_jobs[job["id"]] = job
            self.bulk_send(201, job["json"], job_info(job), "jobInfo")
            return 201
        if len(parts) < 2 or parts[0] != "job":
            self.bulk_error(404, as_json, "InvalidUrl",
                            "unknown resource " + self.path)
            return 404
        if job is None:
            self.bulk_error(400, as_json, "InvalidJob",
                            "Invalid job id: " + parts[1],
                            headers=[("X-Mock-Bulk-Error", "InvalidJob")])
            return 400
        if len(parts) == 2:
            if self.command == "POST":
                try:
                    if as_json:
                        state = json.loads(data).get("state")
                    else:
                        state = ET.fromstring(data.strip()).find(
                            "{%s}state" % BULK_NS).text
                except (ValueError, AttributeError, ET.ParseError):
                    state = None
                if state not in ("Closed", "Aborted"):
                    self.bulk_error(400, as_json, "InvalidJobState",
                                    "Invalid state: %s" % state)
                    return 400
                with st.lock:
                    job["state"] = state
            self.bulk_send(200, as_json, job_info(job), "jobInfo")
            return 200
        if parts[2] != "batch":
            self.bulk_error(404, as_json, "InvalidUrl",
                            "unknown resource " + self.path)
            return 404
        if len(parts) == 3 and self.command == "POST":
            if job["state"] != "Open":
                self.bulk_error(400, as_json, "InvalidJobState",
                                "Job not open: " + job["id"])
                return 400
            try:
                if job["json"]:
                    n = len(json.loads(data))
                else:
                    n = max(0, len([l for l in data.decode().splitlines()
                                    if l.strip()]) - 1)
            except ValueError as e:
                self.bulk_error(400, as_json, "InvalidBatch",
                                "Unable to parse the batch: %s" % e)
                return 400
            with st.lock:
                st.bulk_seq += 1
                b = {"id": "751Mock%011d" % st.bulk_seq, "created": now,
                     "ids": ["001Mock%07d%04d" % (st.bulk_seq, i)
                             for i in range(n)],
                     "body_sha256": hashlib.sha256(data).hexdigest()}
                job["batches"][b["id"]] = b
            self.bulk_send(201, job["json"], batch_info(job, b, "Queued"),
                           "batchInfo")
            return 201
        b = job["batches"].get(parts[3]) if len(parts) > 3 else None
        if b is None:
            self.bulk_error(400, as_json, "InvalidBatch",
                            "Invalid batch id: " + "/".join(parts[3:]))
            return 400
        if len(parts) == 4:
            self.bulk_send(200, job["json"],
                           batch_info(job, b, "Completed"), "batchInfo")
            return 200
        if parts[4:] == ["result"]:
            if job["json"]:
                self.send(200, [{"success": True, "created": True,
                                 "id": i, "errors": []} for i in b["ids"]])
            else:
                self.send(200, '"Id","Success","Created","Error"\n' + "".join(
                    '"%s","true","true",""\n' % i for i in b["ids"]),
                    ctype="text/csv")
            return 200
        self.bulk_error(404, as_json, "InvalidUrl",
                        "unknown resource " + self.path)
        return 404

    def echo(self, path):
        st = self.server.state
        data = self.body()
        with st.lock:
            st.echo_log.append({
                "method": self.command,
                "path": self.path,
                "authorization": self.headers.get_all("Authorization") or [],
                "accesstoken": self.headers.get_all("accesstoken") or [],
                "body_length": len(data),
            })
        return self.send(200, {"echo": self.path})

    def slow401(self):
        body = json.dumps([{"message": "Session expired or invalid",
                            "errorCode": "INVALID_SESSION_ID"}]).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(body), body))
            self.wfile.flush()
            time.sleep(0.05)
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass

    def chunked(self, n):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(n):
            chunk = json.dumps({"chunk": i}).encode() + b"\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    def big(self, size):
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        block = bytes(range(256)) * 256
        sent = 0
        while sent < size:
            n = min(len(block), size - sent)
            self.wfile.write(block[:n])
            sent += n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--client-id", default="3MVG9mock.client.id")
    ap.add_argument("--client-secret", default="mock-client-secret-0123456789")
    ap.add_argument("--refresh-token", default="5Aep861mockRefreshToken0123456789")
    ap.add_argument("--instance-url", default=None)
    ap.add_argument("--token-delay", type=float, default=0.05,
                    help="seconds a successful token request takes")
    ap.add_argument("--tls-cert", help="serve HTTPS with this certificate")
    ap.add_argument("--tls-key", help="and this key")
    ap.add_argument("--jwt-key", default=None,
                    help="PEM public key or certificate that verifies JWT "
                         "bearer assertions")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()

    scheme = "https" if args.tls_cert else "http"
    args.login_url = "%s://127.0.0.1:%d" % (scheme, args.port)
    args.initial_delay = args.token_delay
    if args.instance_url is None:
        args.instance_url = args.login_url

    ThreadingHTTPServer.request_queue_size = 1024
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.allow_reuse_address = True
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.state = State(args)
    if args.tls_cert:
        import ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    sys.stderr.write("mock_sf: listening on 127.0.0.1:%d\n" % args.port)
    sys.stderr.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
