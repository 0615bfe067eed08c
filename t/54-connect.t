#!/usr/bin/perl

# The web server flow with PKCE from the console (sf_oauth_console): the
# Connect button of a refresh-token credential, the 303 to the mock's
# authorize URL, its login and consent pages, the callback, the code
# exchange under the lease, and the tokens stored as the newest generation
# (requests work at once, with the exchange's own token); a reconnect to
# another user waits for a confirmation; every refusal and error is a page
# and stores nothing; no secret of the flow in any log (debug level) or
# page; the connected refresh token kept across a restart with state=.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use Test::More;

my $t = SfTest->new(log_level => 'debug');
$t->start_mock;

my $dir = $t->dir;
my $api = '/services/data/v59.0/sobjects';
my $console = 'http://127.0.0.1:' . $t->port . '/sf_oauth/';
my $callback = "${console}callback";
my %acme = %{ $SfTest::USERS{'admin@acme'} };
my %globex = %{ $SfTest::USERS{'other@globex'} };

$t->write_file('key', ('c3' x 32) . "\n");

# crm: a refresh token that the mock does not know (a revoked one): held
# until connected; erp: a working one; ops: none, "not connected"; svc:
# client credentials (no button)
sub conf {
    my (%opt) = @_;

    my $zone = $opt{zone} // 'zone=sf:1m';
    my $mock = $t->mock_url;
    $t->write_conf(
        "    sf_oauth_zone $zone;\n"
        . $t->credential(refresh_token => 'revoked-before-the-test',
                         timeout => '2s')
        . $t->credential(name => 'erp')
        . $t->credential(name => 'ops', refresh_token => undef)
        . <<"EOF" . <<'EOF2');
    sf_oauth_credential svc {
        zone sf;
        grant client_credentials;
        token_url $mock/services/oauth2/token;
        client_id $SfTest::CLIENT_ID;
        client_secret $SfTest::CLIENT_SECRET;
    }
EOF
    server {
        listen 127.0.0.1:%%PORT%% reuseport default_server;

        location /services/ {
            sf_oauth crm;
            proxy_pass http://127.0.0.1:%%MOCK%%;
        }

        location /ops/ {
            sf_oauth ops;
            proxy_pass http://127.0.0.1:%%MOCK%%/services/;
        }

        location = /sf_oauth_info {
            sf_oauth_info;
        }

        location /sf_oauth/ {
            sf_oauth_console;
        }
    }
EOF2
}

# the console's JSON state of credential NAME
sub console_state {
    my ($name) = @_;
    my $r = $t->get('/sf_oauth/', headers => { Accept => 'application/json' });
    my ($c) = grep { $_->{name} eq $name } @{ ($r->{json} || {})->{credentials}
                                             || [] };
    return $c ? $c->{state} : '';
}

sub generation { ($t->cred_info($_[0] // 'crm') || {})->{generation} // -1 }
sub exchanges { $t->stats->{grants}{authorization_code} // 0 }

my @pages;
sub keep { push @pages, map { @{ $_->{steps} || [$_] } } @_; $_[0] }

conf();
$t->start;

# -- the held credential ----------------------------------------------------

is($t->get($api)->{status}, 502, 'crm: its refresh token is refused: 502');
SfTest::wait_event(10, 'the hold', sub {
    console_state('crm') eq 'needs authorization' });

my $page = keep($t->get('/sf_oauth/'));
is($page->{status}, 200, 'the console');
my @forms = SfTest::html_forms($page->{content});
my %button = map { my %h = map { @$_ } SfTest::form_hidden($_);
                   ($h{credential} => $_) }
             grep { ($_->{action} // '') eq '/sf_oauth/connect' } @forms;
ok($button{crm} && $button{erp}, 'a Connect form for each refresh-token '
   . 'credential');
ok(!$button{svc}, 'none for the client credentials one');
like($page->{content}, qr/>Reconnect</, 'Reconnect: it has a refresh token');
like($page->{headers}{'content-security-policy'} // '',
     qr/form-action 'self' \Q${\ $t->mock_url}\E;/,
     'the console\'s CSP lets its forms\' 303 go to the authorize origin');
my %hidden = map { @$_ } SfTest::form_hidden($button{crm});
like($hidden{form} // '', qr/^[A-Za-z0-9_-]{43}$/, 'the form token');

# -- connect ---------------------------------------------------------------

my $requests = $t->token_requests;
my $gen = generation();

my $f = keep($t->connect_flow(credential => 'crm'));
is($f->{status}, 200, 'the flow: the callback page') or diag($f->{flow_error});
my $cb = SfTest::step($f, 'callback') || {};
like($cb->{content} // '', qr/<h1>Connected</, 'it says connected');

my $q = $f->{authorize_query} || {};
is($q->{response_type}, 'code', 'authorize: response_type=code');
is($q->{client_id}, $SfTest::CLIENT_ID, 'authorize: client_id');
is($q->{redirect_uri}, $callback, 'authorize: redirect_uri from the '
   . 'console request');
is($q->{scope}, 'api refresh_token', 'authorize: scope');
is($q->{prompt}, 'login consent', 'authorize: prompt');
is($q->{code_challenge_method}, 'S256', 'authorize: S256');
like($q->{code_challenge} // '', qr/^[A-Za-z0-9_-]{43}$/,
     'authorize: a SHA-256 challenge');
like($q->{state} // '', qr/^[A-Za-z0-9_-]{22}$/, 'authorize: 128-bit state');
like($f->{authorize_url}, qr{^\Q${\ $t->mock_url}\E/services/oauth2/authorize\?},
     'authorize: the token URL\'s origin');

my $c = SfTest::step($f, 'connect') || {};
is($c->{status}, 303, 'connect: 303');
my $cookie = $c->{headers}{'set-cookie'} // '';
like($cookie, qr/^sf_oauth_connect=[A-Za-z0-9_-]{22}; Path=\/sf_oauth\/; /,
     'connect: the flow\'s cookie, on the console\'s path');
like($cookie, qr/; HttpOnly/, 'HttpOnly');
like($cookie, qr/; SameSite=Lax/, 'SameSite=Lax');
unlike($cookie, qr/Secure/, 'not Secure over http');
like($c->{headers}{'content-security-policy'} // '',
     qr/form-action 'self' \Q${\ $t->mock_url}\E;/,
     'connect: the CSP lets the form go to the authorize origin');
is($c->{headers}{'cache-control'}, 'no-store', 'connect: no-store');
is($cb->{headers}{'referrer-policy'}, 'no-referrer',
   'callback: no referrer');
is($cb->{headers}{'x-frame-options'}, 'DENY', 'callback: no frame');

is($t->token_requests, $requests + 1, 'one token request: the exchange');
is(exchanges(), 1, 'an authorization_code grant');
is(generation(), $gen + 1, 'the newest generation');
is(console_state('crm'), 'valid', 'the hold ended: valid');

my $r = $t->get($api);
is($r->{status}, 200, 'a request works at once, with no reload');
is($t->token_requests, $requests + 1, '... with the exchange\'s token: no '
   . 'second token request');

my $audit = qr/\[notice\].*sf_oauth: credential "crm" connected /
    . qr/from the console: user \Q$acme{user_id}\E, org \Q$acme{org_id}\E, /
    . qr/generation \d+, access token fp:[0-9a-f]{8}, by client 127\.0\.0\.1, /
    . qr/remote user "-"/;
like($t->error_log, qr/$audit/, 'the audit line');

$page = keep($t->get('/sf_oauth/'));
like($page->{content}, qr/>Reconnect</, 'the console: Reconnect');

# -- a credential that was never connected ----------------------------

$r = $t->get('/ops/data/v59.0/sobjects');
is($r->{status}, 502, 'ops, not connected: 502');
like($r->{content}, qr/ops\\?" is not connected/, 'ops: the 502 names it');
like($t->get('/sf_oauth/')->{content},
     qr/not connected.*?>Connect</s, 'ops: the console offers Connect');
$requests = $t->token_requests;
$f = keep($t->connect_flow(credential => 'ops'));
is($f->{status}, 200, 'ops: connected') or diag($f->{flow_error});
is($t->get('/ops/data/v59.0/sobjects')->{status}, 200,
   'ops: a request works at once, no reload');
is($t->token_requests, $requests + 1, 'ops: one token request, the '
   . 'exchange');
is($t->cred_info('ops')->{state}, 'valid', 'ops: sf_oauth_info says valid');

# -- refusals: nothing stored, no exchange ----------------------------------

sub refused {
    my ($name, $want, %opt) = @_;

    my $gen = generation();
    my $ex = exchanges();
    my $f = keep($t->connect_flow(credential => 'crm', %opt));
    is($f->{status}, $want, "$name: $want");
    is(exchanges(), $ex, "$name: no code exchange");
    is(generation(), $gen, "$name: nothing stored");
    return $f;
}

$f = refused('no cookie at the callback', 403, drop_cookie => 1);
like(SfTest::step($f, 'callback')->{content}, qr/cookie is missing/,
     'no cookie: the page says so');

$f = refused('a cross-site POST to connect', 403, cross_site => 1);
like(SfTest::step($f, 'connect')->{content}, qr/did not come from the console/,
     'cross-site: the page says so');
refused('a foreign Origin', 403, origin => 'http://evil.example');
refused('a forged form token', 403, form => { form => 'x' x 43 });
refused('no form token', 403, form => { form => undef });

# a valid form token, but neither Origin nor Sec-Fetch-Site: a non-browser
%hidden = map { @$_ } SfTest::form_hidden($button{crm});
$gen = generation();
$r = keep(HTTP::Tiny->new(max_redirect => 0)->request('POST',
    "${console}connect", {
        headers => { 'Content-Type' => 'application/x-www-form-urlencoded' },
        content => SfTest::form_encode([[credential => 'crm'],
                                        [form => $hidden{form}]]) }));
is($r->{status}, 403, 'no Origin and no Sec-Fetch-Site: 403');
ok(!$r->{headers}{location}, 'no Origin and no Sec-Fetch-Site: no redirect');

# a replayed state: the first callback connects, the second is refused
$gen = generation();
$f = keep($t->connect_flow(credential => 'crm', replay => 1));
is(SfTest::step($f, 'callback')->{status}, 200, 'replay: the first callback');
is($f->{status}, 400, 'replay: the second one is refused');
like(SfTest::step($f, 'replay')->{content}, qr/unknown or was used/,
     'replay: the page says so');
is(generation(), $gen + 1, 'replay: stored once');

# another browser's state: A's callback URL in B's browser
my $fa = keep($t->connect_flow(credential => 'crm', stop_before => 'callback'));
my $fb = keep($t->connect_flow(credential => 'erp', stop_before => 'callback'));
$gen = generation('erp');
my $ex = exchanges();
my $s = SfTest::flow_step($fa, 'foreign', 'GET', $fb->{callback_url});
keep($s);
is($s->{status}, 403, 'another browser\'s state: 403');
is(exchanges(), $ex, 'another browser\'s state: no exchange');
is(generation('erp'), $gen, 'another browser\'s state: nothing stored');

# Chromium's Origin: null with Sec-Fetch-Site: same-origin
$f = keep($t->connect_flow(credential => 'erp', origin => 'null'));
is($f->{status}, 200, 'Origin: null from the same origin connects');

# -- errors of the flow: pages, nothing stored ---------------------------

$gen = generation();
$ex = exchanges();

$f = keep($t->connect_flow(credential => 'crm', deny => 1));
is($f->{status}, 403, 'consent denied: 403');
like(SfTest::step($f, 'callback')->{content}, qr/login was denied/,
     'access_denied: its page');

$t->mock('deny_error', 'error=access-denied');
$f = keep($t->connect_flow(credential => 'crm', deny => 1));
like(SfTest::step($f, 'callback')->{content}, qr/login was denied/,
     'access-denied: the same page');
$t->mock('deny_error', 'error=access_denied');

$t->mock('callbacks', 'url=' . SfTest::form_encode([['x',
         'https://proxy.example/sf_oauth/callback']]) =~ s/^x=//r);
$f = keep($t->connect_flow(credential => 'crm'));
$s = SfTest::step($f, 'authorize') || {};
is($s->{status}, 302, 'redirect_uri_mismatch: the mock redirects at once');
$s = keep(SfTest::flow_step($f, 'callback', 'GET',
                            SfTest::resolve_url($s->{url},
                                                $s->{headers}{location})));
is($s->{status}, 400, 'redirect_uri_mismatch: 400');
like($s->{content},
     qr{<code>\Q$callback\E</code>}, 'redirect_uri_mismatch: the exact URL '
     . 'to register');
$t->mock('callbacks');

is(exchanges(), $ex, 'the authorize errors: no exchange');

for my $case ([refuse => 502, qr/expired authorization code/],
              [down => 502, qr/HTTP 503/],
              [slow => 504, qr/timed out/i])
{
    my ($mode, $want, $says) = @$case;
    $t->mock('exchange_mode', "mode=$mode&seconds=4");
    $f = keep($t->connect_flow(credential => 'crm'));
    is($f->{status}, $want, "the token endpoint $mode: $want");
    like(SfTest::step($f, 'callback')->{content} // '', $says,
         "the token endpoint $mode: the page says why");
}
$t->mock('exchange_mode', 'mode=normal');

$f = keep($t->connect_flow(credential => 'crm', stop_before => 'callback'));
$t->mock('age_codes', 'seconds=900');
$s = keep(SfTest::flow_step($f, 'callback', 'GET', $f->{callback_url}));
is($s->{status}, 502, 'an expired code: 502');
like($s->{content}, qr/expired authorization code/, 'an expired code: why');

$s = keep($t->get('/sf_oauth/callback?state=' . ('A' x 22) . '&code=x'));
is($s->{status}, 400, 'an unknown state: 400');
is($t->http('HEAD', '/sf_oauth/callback?code=x&state=y')->{status}, 405,
   'HEAD of the callback: 405 (a callback spends its state)');
is($t->http('GET', '/sf_oauth/connect')->{status}, 405, 'GET connect: 405');
$s = keep($t->get('/sf_oauth/callback?code=x'));
is($s->{status}, 400, 'no state: 400');
$s = keep($t->get('/sf_oauth/callback?error=inactive_org'));
like($s->{content}, qr/<code>inactive_org<\/code>/, 'another error: named');

is(generation(), $gen, 'the errors stored nothing');
is($t->get($api)->{status}, 200, 'and the token still serves');

# -- a refresh under way: the callback waits for nothing, 503 ----------

$f = keep($t->connect_flow(credential => 'crm', stop_before => 'callback'));
$t->mode('hang_once');
$t->mock('revoke');
$gen = generation();
$ex = exchanges();
my $stuck = HTTP::Tiny->new(timeout => 0.3)->get("http://127.0.0.1:${\ $t->port}$api");
SfTest::wait_event(10, 'the refresh under way', sub {
    console_state('crm') eq 'refreshing' });
$s = keep(SfTest::flow_step($f, 'callback', 'GET', $f->{callback_url}));
is($s->{status}, 503, 'a refresh under way: 503');
like($s->{content}, qr/A token refresh of this credential is running/,
     'a refresh under way: the page says to reload in a moment');
is(exchanges(), $ex, 'a refresh under way: no exchange');
$t->mode('normal');
$s = SfTest::wait_event(20, 'the callback taken again after the refresh',
    sub {
        my $s = SfTest::flow_step($f, 'again', 'GET', $f->{callback_url});
        return $s->{status} == 503 ? undef : $s;
    });
is($s->{status}, 200, 'reloaded after the refresh: the state was given '
   . 'back, connected') or diag($s->{content});
is(exchanges(), $ex + 1, 'reloaded: one exchange');
is($t->get($api)->{status}, 200, 'reloaded: requests work');

# -- a client that goes away during the exchange --------------------------

$f = keep($t->connect_flow(credential => 'crm', stop_before => 'callback'));
$t->mock('exchange_mode', 'mode=slow&seconds=1');
$gen = generation();
$s = HTTP::Tiny->new(timeout => 0.3, max_redirect => 0,
                     cookie_jar => $f->{jar})->get($f->{callback_url});
is($s->{status}, 599, 'the client went away during the exchange');
SfTest::wait_event(10, 'the exchange stored with its client gone',
                   sub { generation() == $gen + 1 });
pass('the exchange is stored all the same');
like($t->slurp('access.log'), qr{"GET /sf_oauth/callback\?[^"]*" 499 },
     'the request was gone (499) before the exchange ended');
$t->mock('exchange_mode', 'mode=normal');
is($t->get($api)->{status}, 200, 'and requests use it');

# -- another user or org: stored on confirmation only ---------------------

$gen = generation();
my $before = $t->cred_info('crm');
$f = keep($t->connect_flow(credential => 'crm', user => 'other@globex'));
is($f->{status}, 200, 'another org: a page');
$cb = SfTest::step($f, 'callback');
like($cb->{content}, qr/Another user or org/, 'another org: it says so');
like($cb->{content}, qr/\Q$acme{org_id}\E.*\Q$globex{org_id}\E/s,
     'another org: old and new side by side');
ok((grep { ($_->{action} // '') =~ /confirm$/ } @{ $f->{forms} }),
   'another org: a confirm form');
is(generation(), $gen, 'another org: nothing stored yet');

$f = keep($t->connect_flow(credential => 'crm', user => 'other@globex',
                           confirm => 1));
is($f->{status}, 200, 'confirmed');
like(SfTest::step($f, 'confirm')->{content}, qr/<h1>Connected</,
     'confirmed: connected');
is(generation(), $gen + 1, 'confirmed: stored');
$audit = qr/credential "crm" connected from the console: user /
    . qr/\Q$globex{user_id}\E, org \Q$globex{org_id}\E/;
like($t->error_log, qr/$audit/,
     'confirmed: the audit line names the new user');
is($t->get($api)->{status}, 200, 'confirmed: requests work');

# a confirmation from another browser (no cookie) stores nothing
$f = keep($t->connect_flow(credential => 'crm', user => 'admin@acme'));
my ($confirm) = grep { ($_->{action} // '') =~ /confirm$/ } @{ $f->{forms} };
ok($confirm, 'back to acme: a confirm form');
$gen = generation();
$s = HTTP::Tiny->new->request('POST', "${console}confirm", {
    headers => { 'Content-Type' => 'application/x-www-form-urlencoded',
                 'Sec-Fetch-Site' => 'same-origin' },
    content => SfTest::form_encode([SfTest::form_hidden($confirm)]) });
keep($s);
is($s->{status}, 400, 'a confirmation without the cookie: 400');
is(generation(), $gen, 'a confirmation without the cookie: nothing stored');

# -- no secret of the flow anywhere ----------------------------------------

my $st = $t->stats;
my @secrets = grep { defined && length > 8 }
              (@{ $st->{issued_access_tokens} || [] },
               @{ $st->{issued_refresh_tokens} || [] },
               $SfTest::CLIENT_SECRET);
my @flow_secrets;
for my $step (@pages) {
    next unless ref $step eq 'HASH' && $step->{url};
    my $q = SfTest::parse_query($step->{url});
    push @flow_secrets, grep { defined && length >= 8 }
        @{$q}{qw(code state)};
    push @flow_secrets, $1
        while ($step->{headers}{'set-cookie'} // '')
              =~ /sf_oauth_connect=([A-Za-z0-9_-]{22})/g;
}
ok(@flow_secrets > 20, scalar(@flow_secrets) . ' codes, states and cookies '
   . 'seen');
ok(@secrets > 5, scalar(@secrets) . ' tokens and secrets');

my $log = $t->error_log . $t->slurp('access.log');
like($log, qr/\[debug\]/, 'the log is at debug level');
like($log, qr/http request line: "GET \/sf_oauth\/callback\?code=\*\*\*/,
     'nginx\'s request line of a callback: masked');
like($t->slurp('access.log'), qr/"GET \/sf_oauth\/callback\?code=\*{8,}&state=\*{22} /,
     'the access log\'s callback: masked');
my @leaks = grep { index($log, $_) >= 0 } @secrets, @flow_secrets;
is(scalar @leaks, 0, 'no secret of the flow in the debug log or the '
   . 'access log')
    or diag("leaked: @leaks[0 .. ($#leaks > 3 ? 3 : $#leaks)]");

my $answers = join "\n", map {
    my $a = $_;
    ($a->{content} // '') . join("\n", map { "$_: " . ($a->{headers}{$_} // '') }
                                  keys %{ $a->{headers} || {} })
} grep { ref $_ eq 'HASH' && ($_->{url} // '') =~ m{/sf_oauth/} } @pages;
@leaks = grep { index($answers, $_) >= 0 } @secrets;
is(scalar @leaks, 0, 'no token or secret in a page of the console');

# -- with state=: the connected refresh token survives a restart ---------

conf(zone => "zone=sf:1m state=$dir/state/sf.state key=$dir/key");
$t->stop;
unlike($t->error_log, qr/\[(?:alert|crit|emerg)\]/,
       'no alert, crit or emerg before the restart');
$t->restart;
is($t->get($api)->{status}, 502, 'state=: a new zone, the configured '
   . '(revoked) refresh token: 502');
$f = keep($t->connect_flow(credential => 'crm'));
is($f->{status}, 200, 'state=: connected');
$requests = $t->token_requests;
$t->stop;
unlike($t->error_log, qr/\[(?:alert|crit|emerg)\]/,
       'no alert, crit or emerg before the restart');
$t->restart;
is($t->get($api)->{status}, 200, 'state=: after a restart, 200');
is($t->token_requests, $requests, 'state=: 0 token requests (the file)');
$t->mock('revoke');
is($t->get($api)->{status}, 200, 'state=: the access token revoked, the '
   . 'connected refresh token gets a new one');
is($t->token_requests, $requests + 1, 'state=: one refresh');

$t->finish;
done_testing;
