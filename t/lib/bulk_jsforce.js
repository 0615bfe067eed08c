#!/usr/bin/env node
// A real Bulk API 1.0 client for the tests: jsforce's conn.bulk.load (XML
// job, CSV batch, polling, results, close) through a proxy (nginx).
//
//   NODE_PATH=build/node/node_modules node t/lib/bulk_jsforce.js URL [N] [SESSION]
//
// URL is the proxy's base (the Connection's instanceUrl), N the records to
// insert (default 3), SESSION the access token jsforce holds (default a
// stale "jsforce-bogus-session": the proxy replaces it in X-SFDC-Session).
// jsforce is given no refresh token: it cannot cure a dead session itself.
// Prints one JSON object: {"ok", "results"} or {"ok": false, "error"}.
'use strict';

const jsforce = require('jsforce');

const [url, n = '3', session = 'jsforce-bogus-session'] = process.argv.slice(2);

const conn = new jsforce.Connection({
  instanceUrl: url,
  accessToken: session,
  version: '59.0',
});
conn.bulk.pollInterval = 50;
conn.bulk.pollTimeout = 20000;

const records = Array.from({ length: Number(n) }, (_, i) => ({
  Name: `Acme ${i}`,
}));

conn.bulk
  .load('Account', 'insert', records)
  .then((results) => {
    process.stdout.write(JSON.stringify({ ok: true, results }) + '\n');
  })
  .catch((err) => {
    process.stdout.write(JSON.stringify({
      ok: false,
      error: { name: err.name, errorCode: err.errorCode,
               message: String(err.message) },
    }) + '\n');
  });
