#!/usr/bin/env node
// A legacy jsforce app that logs in with a username and password (SOAP
// login() without OAuth settings), then calls REST (a GET, and create,
// retrieve, update and delete of a record), SOAP (a partner create) and
// Bulk 1.0 with the session it got: through a proxy that answers login()
// itself (sf_oauth_soap_login on).
//
//   NODE_PATH=build/node/node_modules node t/lib/jsforce_login.js URL USER PASS
//
// Prints one JSON object: "ok", "instanceUrl", "accessToken" (the session
// login() gave), "userInfo", "rest" (what the mock echoed of the REST call:
// path and whether an Authorization header came), "crud" (the paths and
// methods the mock echoed for the record calls), "soap" (the SaveResult of
// the SOAP create), "bulk" (the results of a 2-record insert), or "error".
'use strict';

const jsforce = require('jsforce');

const [url, user, pass] = process.argv.slice(2);

(async () => {
  const out = { ok: false };
  try {
    const conn = new jsforce.Connection({ loginUrl: url, version: '59.0' });
    out.userInfo = await conn.login(user, pass);
    out.instanceUrl = conn.instanceUrl;
    out.accessToken = conn.accessToken;
    const echo = await conn.request('/services/data/v59.0/sobjects');
    out.rest = { path: echo.path, authorization_count: echo.authorization_count };
    const acct = conn.sobject('Account');
    const made = await acct.create({ Name: 'Acme' });
    const got = await acct.retrieve('001000000000001AAA');
    const upd = await acct.update({ Id: '001000000000001AAA', Name: 'Acme 2' });
    const del = await acct.destroy('001000000000001AAA');
    out.crud = [made, got, upd, del].map((r) => ({ method: r.method, path: r.path }));
    out.soap = await conn.soap.create([{ type: 'Account', Name: 'Soapy' }]);
    conn.bulk.pollInterval = 50;
    out.bulk = await conn.bulk.load('Account', 'insert', [{ Name: 'A' }, { Name: 'B' }]);
    out.ok = true;
  } catch (err) {
    out.error = { name: err.name, errorCode: err.errorCode, message: String(err.message) };
  }
  process.stdout.write(JSON.stringify(out) + '\n');
})();
