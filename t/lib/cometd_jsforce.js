#!/usr/bin/env node
// A real Streaming API client for the tests: jsforce's conn.streaming (Faye,
// long polling) through a proxy (nginx), across a revoked session.
//
//   NODE_PATH=build/node/node_modules node t/lib/cometd_jsforce.js URL MOCK
//
// URL is the proxy's base (the Connection's instanceUrl), MOCK the mock
// Salesforce's (its /__mock/ hooks).  jsforce holds a stale access token of
// its own ("jsforce-bogus-session", sent as "Authorization: OAuth ..."): the
// proxy replaces it.  The steps, each waiting for the mock's record of the
// one before, not for a time:
//   1. subscribe to /topic/Mock; once a connect is held, an event is
//      published and must arrive;
//   2. the session is revoked while a connect is held: Faye gets the
//      proxy's advice, handshakes again by itself and subscribes again;
//   3. once the new connect is held, a second event is published and must
//      arrive.
// Prints one JSON object: {"ok", "events", "handshakes", "clients"} or
// {"ok": false, "error", "step"}.
'use strict';

const http = require('http');
const jsforce = require('jsforce');

const [url, mock] = process.argv.slice(2);
const TOPIC = '/topic/Mock';
let step = 'start';

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

// whether the mock holds a connect sent after the entry FROM of its log
async function connectHeld(from) {
  const st = await hook('stats');
  const log = st.cometd_log.slice(from);
  const i = log.findIndex((e) => e.channels.includes('/meta/connect')
                                 && e.replies.length === 0);
  return i >= 0 ? st : null;
}

async function main() {
  const conn = new jsforce.Connection({
    instanceUrl: url,
    accessToken: 'jsforce-bogus-session',
    version: '59.0',
  });
  const events = [];

  step = 'subscribe';
  const sub = conn.streaming.topic(TOPIC).subscribe((msg) => {
    events.push(msg);
  });
  await sub;

  step = 'first event';
  let st = await until('a connect held', () => connectHeld(0));
  await hook('publish', `channel=${encodeURIComponent(TOPIC)}`,
             JSON.stringify({ n: 1 }));
  await until('the first event', () => events.length >= 1);

  step = 'revoke';
  st = await until('a connect held again', () => connectHeld(0));
  const from = st.cometd_log.length;
  await hook('revoke');

  step = 're-handshake';
  st = await until('a new handshake, subscribe and connect', async () => {
    const s = await hook('stats');
    const log = s.cometd_log.slice(from);
    const hs = log.findIndex((e) => e.replies.some(
      (r) => r.channel === '/meta/handshake' && r.successful));
    const sb = log.findIndex((e, i) => i > hs && e.replies.some(
      (r) => r.channel === '/meta/subscribe' && r.successful));
    if (hs < 0 || sb < 0) return null;
    return (await connectHeld(from + sb + 1)) || null;
  });

  step = 'second event';
  await hook('publish', `channel=${encodeURIComponent(TOPIC)}`,
             JSON.stringify({ n: 2 }));
  await until('the second event', () => events.length >= 2);

  st = await hook('stats');
  const handshakes = st.cometd_log.filter(
    (e) => e.channels.includes('/meta/handshake')).length;
  const client = conn.streaming._fayeClients.pushTopic;
  if (client) client.disconnect();
  return { ok: true, events: events.map((e) => e.payload), handshakes,
           clients: st.cometd_clients.length };
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
