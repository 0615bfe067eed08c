#!/usr/bin/env node
// jsforce's streaming client, unmodified, through a proxy (nginx) across
// several revokes, subscribed to a PushTopic and to a platform event
// channel at once:
//
//   NODE_PATH=build/node/node_modules \
//       node t/lib/cometd_jsforce_revokes.js URL MOCK REVOKES
//
// URL is the proxy's base (the Connection's instanceUrl), MOCK the mock
// Salesforce's (its /__mock/ hooks).  jsforce holds a stale access token
// of its own ("jsforce-bogus-session"): the proxy replaces it.  The Faye
// client is jsforce's own (conn.streaming.createClient, its documented
// way to add extensions) with jsforce's AuthFailure extension, as an
// application that wants to hear of a dead session uses it, and an
// extension that records every incoming Bayeux message before anything
// else sees it.  Both channels are subscribed on that client.
//
// Each step waits for the mock's record of the one before, not for a
// time: once subscribed (a successful handshake, both subscribes, then a
// connect held), an event is published on each channel and must arrive;
// then, REVOKES times: the session is revoked while a connect is held,
// Faye handshakes again by itself and subscribes again, and once it is
// subscribed again, one more event on each channel must arrive.
//
// What the application is told of errors, with jsforce 3 (Faye 1.4): the
// AuthFailure callback (a handshake or connect with advice "reconnect":
// "none"), a rejected subscription (its errback), an "error" from the
// client, an uncaught exception or unhandled rejection.  Faye's
// "transport:down" is a transport event, not an error: it is counted.
//
// Prints one JSON object: {"ok", "events", "incoming_failures",
// "handshake_denied", "auth_failures", "subscribe_errors",
// "client_errors", "uncaught", "transport_down", "handshakes"} or
// {"ok": false, "error", "step"}.
'use strict';

const http = require('http');
const jsforce = require('jsforce');
const { StreamingExtension } = require('jsforce/api/streaming');

const [url, mock, revokesArg] = process.argv.slice(2);
const REVOKES = parseInt(revokesArg || '5', 10);
const CHANNELS = { topic: '/topic/SomeTopic', event: '/event/Foo__e' };
let step = 'start';

const uncaught = [];
process.on('uncaughtException', (e) => uncaught.push(String(e && e.message)));
process.on('unhandledRejection', (e) => uncaught.push(String(e && e.message)));

function hook(name, query, body) {
  return new Promise((resolve, reject) => {
    const req = http.request(`${mock}/__mock/${name}${query ? '?' + query : ''}`,
      { method: name === 'stats' ? 'GET' : 'POST' }, (res) => {
        let data = '';
        res.on('data', (c) => { data += c; });
        res.on('end', () => {
          try { resolve(JSON.parse(data)); } catch (e) { reject(e); }
        });
      });
    req.on('error', reject);
    req.end(body || '');
  });
}

function delay(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// polls COND (async) every 50 ms, up to 20 s (200 s under valgrind)
const SCALE = process.env.SF_TEST_VALGRIND ? 10 : 1;

async function until(what, cond) {
  const end = Date.now() + 20000 * SCALE;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > end) throw new Error(`gave up waiting: ${what}`);
    await delay(50);
  }
}

function hasReply(e, channel) {
  return e.replies.some((r) => r.channel === channel && r.successful);
}

// The mock's stats once, after the entry FROM of its log, a handshake
// succeeded, both channels' subscribes succeeded after it, and a connect
// sent after the handshake is held; else null.
async function subscribedSince(from) {
  const st = await hook('stats');
  const log = st.cometd_log.slice(from);
  const hs = log.findIndex((e) => hasReply(e, '/meta/handshake'));
  if (hs < 0) return null;
  // Faye may batch the subscribes with the handshake's first connect
  let subs = 0;
  log.forEach((e, i) => {
    if (i >= hs) {
      subs += e.replies.filter((r) => r.channel === '/meta/subscribe'
                                      && r.successful).length;
    }
  });
  if (subs < 2) return null;
  const held = log.some((e, i) => i > hs
                        && e.channels.includes('/meta/connect')
                        && e.replies.length === 0);
  return held ? st : null;
}

async function main() {
  const conn = new jsforce.Connection({
    instanceUrl: url,
    accessToken: 'jsforce-bogus-session',
    version: '59.0',
  });
  const incoming = [];
  const authFailures = [];
  const subscribeErrors = [];
  const clientErrors = [];
  const received = [];
  let transportDown = 0;

  const recorder = {
    incoming(message, callback) {
      incoming.push(JSON.parse(JSON.stringify(message)));
      callback(message);
    },
  };
  const authFailure = new StreamingExtension.AuthFailure((message) => {
    authFailures.push({ channel: message.channel, error: message.error });
  });
  const client = conn.streaming.createClient([recorder, authFailure]);
  client.on('transport:down', () => { transportDown += 1; });
  client.bind('error', (e) => clientErrors.push(String(e && e.message)));

  step = 'subscribe';
  const subs = Object.entries(CHANNELS).map(([kind, channel]) => {
    const sub = client.subscribe(channel, (data) => {
      received.push({ kind, channel, n: data.payload && data.payload.n,
                      schema: data.schema || null,
                      type: (data.event && data.event.type) || null });
    });
    sub.errback((e) => subscribeErrors.push(String(e && e.message)));
    return sub;
  });
  await Promise.all(subs);

  // publishes event N on both channels and waits for both
  let published = 0;
  async function publishBoth(n) {
    for (const [kind, channel] of Object.entries(CHANNELS)) {
      await hook('publish', `channel=${encodeURIComponent(channel)}`,
                 JSON.stringify({ n, kind }));
      published += 1;
    }
    await until(`event ${n} on both channels`, () =>
      Object.keys(CHANNELS).every(
        (k) => received.some((e) => e.kind === k && e.n === n)));
  }

  step = 'first events';
  await until('subscribed', () => subscribedSince(0));
  await publishBoth(0);

  for (let i = 1; i <= REVOKES; i++) {
    step = `revoke ${i}`;
    await until('a connect held', () => subscribedSince(0));
    const from = (await hook('stats')).cometd_log.length;
    await hook('revoke');
    step = `subscribed again after revoke ${i}`;
    await until('a handshake, both subscribes and a connect',
                () => subscribedSince(from));
    step = `events after revoke ${i}`;
    await publishBoth(i);
  }

  step = 'end';
  const st = await hook('stats');
  const handshakes = st.cometd_log.filter(
    (e) => e.channels.includes('/meta/handshake')).length;
  client.disconnect();
  return {
    ok: true,
    published,
    events: received,
    incoming_failures: incoming.filter((m) => m.successful === false)
      .map((m) => ({ channel: m.channel, error: m.error,
                     advice: m.advice || null })),
    handshake_denied: incoming.filter(
      (m) => m.error === '403::Handshake denied').length,
    incoming: incoming.length,
    auth_failures: authFailures,
    subscribe_errors: subscribeErrors,
    client_errors: clientErrors,
    uncaught,
    transport_down: transportDown,
    handshakes,
  };
}

main().then((res) => {
  process.stdout.write(JSON.stringify(res) + '\n');
  process.exit(0);
}).catch(async (err) => {
  // the mock's record, for the test's diagnostics (without the tokens)
  const st = await hook('stats').catch(() => ({}));
  const log = (st.cometd_log || []).map((e) => ({
    channels: e.channels, status: e.status, replies: e.replies }));
  process.stdout.write(JSON.stringify({ ok: false, step,
                                        error: String(err.message),
                                        log }) + '\n');
  process.exit(0);
});
