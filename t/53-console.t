#!/usr/bin/perl

# The operator console (sf_oauth_console) and credentials that are "not
# connected" (a refresh_token credential configured without a refresh
# token):
#
#   - nginx -t: a credential without a refresh token is refused unless a
#     location has sf_oauth_console, and warned about when its zone has no
#     state=; connect_url is checked; the console needs a prefix location;
#   - the page (HTML) and its JSON (Accept: application/json) for a
#     refresh-token, a JWT bearer, a client-credentials and a not-connected
#     credential: name, grant, zone, state, user and org, token age,
#     generation, last error, API usage, connect_url; the refresh-token
#     one again after its refresh token is refused ("needs
#     authorization"); the fleet's view with a zone in Redis;
#   - a not-connected credential: 502 JSON naming it, sf_oauth_token_held
#     1, sf_oauth_info's state "not connected", no token request, and the
#     same after a reload;
#   - the safety headers on every answer (200, HEAD, JSON, 404, 405), the
#     CSP's style hash that of the page's style;
#   - no secret (tokens, refresh tokens, the client secret) in the page,
#     the JSON or the logs.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use RedisTest;
use Digest::SHA qw(sha256);
use JSON::PP;
use MIME::Base64 qw(encode_base64);
use Test::More;

my $USER = 'integration@acme.com';
my $CONNECT = 'https://proxy.acme.internal/sf_oauth/callback';

my $t = SfTest->new;
my $dir = $t->dir;
$t->start_mock;

SfTest::openssl('genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048',
        "-out $dir/jwt.key");
SfTest::openssl("pkey -in $dir/jwt.key -pubout -out $dir/jwt.pub");
chmod 0600, "$dir/jwt.key";
$t->write_file('state.key', ('c3' x 32) . "\n");

# a credential block against the mock; a refresh grant by default
sub cred {
    my ($s, $name, %opt) = @_;

    my %line = (
        zone => 'sf',
        token_url => $s->mock_url . '/services/oauth2/token',
        client_id => $SfTest::CLIENT_ID,
        client_secret => $SfTest::CLIENT_SECRET,
        refresh_token => $name eq 'crm' ? $SfTest::REFRESH_TOKEN
                                        : "$SfTest::REFRESH_TOKEN-$name",
        %opt,
    );
    if (($line{grant} // '') eq 'jwt_bearer') {
        delete $line{client_secret};
        $line{username} = $USER;
        $line{private_key} = "$dir/jwt.key";
    }

    my $block = "    sf_oauth_credential $name {\n";
    for my $k (qw(zone token_url grant client_id client_secret
                  refresh_token refresh_token_file username private_key
                  connect_url))
    {
        next unless defined $line{$k};
        $block .= "        $k $line{$k};\n";
    }
    return $block . "    }\n";
}

# the server: a location per credential, sf_oauth_info, and the console
# (unless $console is false)
sub server {
    my ($console) = @_;

    my $s = <<'EOF';
    server {
        listen 127.0.0.1:%%PORT%% reuseport default_server;

        location = /sf_oauth_info {
            sf_oauth_info;
        }
EOF
    for my $c (qw(crm jwt cc new)) {
        my $path = $c eq 'crm' ? '/services/' : "/$c/";
        $s .= <<"EOF";
        location $path {
            sf_oauth $c;
            proxy_pass http://127.0.0.1:%%MOCK%%/services/;
        }
EOF
    }
    $s .= <<'EOF' if $console // 1;
        location /sf_oauth/ {
            allow 127.0.0.1;
            deny all;
            sf_oauth_console;
        }
EOF
    return $s . "    }\n";
}

my $zone = "    sf_oauth_zone zone=sf:1m state=$dir/state/sf.state key=$dir/state.key;\n";
my $creds = cred($t, 'crm', connect_url => $CONNECT)
    . cred($t, 'jwt', grant => 'jwt_bearer', refresh_token => undef)
    . cred($t, 'cc', grant => 'client_credentials', refresh_token => undef)
    . cred($t, 'new', refresh_token => undef);

# -- nginx -t -------------------------------------------------------------------

$t->conf_check('not connected, no console', $zone . $creds . server(0),
    qr/sf_oauth_credential "new" in \S+nginx\.conf:\d+ has no refresh_token: set refresh_token or refresh_token_file, or add an sf_oauth_console location to connect it/,
    [$SfTest::CLIENT_SECRET]);

{
    $t->write_conf("    sf_oauth_zone zone=sf:1m;\n" . $creds . server());
    my ($rc, $out) = $t->test_conf;
    is($rc, 0, 'not connected, a console, no state=: accepted') or diag($out);
    like($out, qr/\[warn\].*the refresh token a connection gets for credential "new" is lost at restart: set state= on sf_oauth_zone "sf"/,
         'no state=: warned');
    unlike($out, qr/connection gets for credential "crm"/,
           'no state=: no warning for a configured refresh token');

    $t->write_conf($zone . $creds . server());
    ($rc, $out) = $t->test_conf;
    is($rc, 0, 'with state=: accepted') or diag($out);
    unlike($out, qr/lost at restart/, 'with state=: no warning');
}

$t->conf_check('connect_url not a URL',
    $zone . cred($t, 'crm', connect_url => 'proxy/callback') . server(),
    qr/invalid connect_url "proxy\/callback" in sf_oauth_credential "crm": it must start with https:\/\/ or http:\/\//);

$t->conf_check('connect_url without a host',
    $zone . cred($t, 'crm', connect_url => 'https:///callback') . server(),
    qr/invalid connect_url "https:\/\/\/callback" in sf_oauth_credential "crm"/);

$t->conf_check('connect_url with the JWT grant',
    $zone . cred($t, 'crm', grant => 'jwt_bearer', refresh_token => undef,
                 connect_url => $CONNECT) . server(),
    qr/sf_oauth_credential "crm" has "connect_url", which "grant jwt_bearer" does not use: remove it/);

$t->conf_check('sf_oauth_console in a regex location',
    $zone . cred($t, 'crm') . <<'EOF',
    server {
        listen 127.0.0.1:%%PORT%%;
        location ~ ^/console/ {
            sf_oauth_console;
        }
    }
EOF
    qr/"sf_oauth_console" must be in a prefix or exact location/);

# -- the running console ----------------------------------------------------------

$t->mock('jwt_key', "path=$dir/jwt.pub");
$t->mock('api_limit', 'limit=5000');
$t->write_conf($zone . $creds . server());
$t->start;

my @answers;

# the headers every answer of the console has; the CSP allows the page's
# own style (by its hash) and nothing else, but the 303 of its Connect
# forms to the authorize origin (t/54-connect.t)
sub safety {
    my ($r, $what) = @_;

    push @answers, $r;
    my $h = $r->{headers};
    is($h->{'cache-control'}, 'no-store', "$what: Cache-Control no-store");
    is($h->{'referrer-policy'}, 'no-referrer', "$what: Referrer-Policy");
    is($h->{'x-frame-options'}, 'DENY', "$what: X-Frame-Options DENY");
    is($h->{'x-content-type-options'}, 'nosniff', "$what: nosniff");
    like($h->{'content-security-policy'} // '',
         qr/^default-src 'none'; style-src 'sha256-[A-Za-z0-9+\/]{43}='; form-action 'self'(?: \Q${\ $t->mock_url}\E)?; frame-ancestors 'none'; base-uri 'none'$/,
         "$what: Content-Security-Policy");
}

# the console's page; its style is the one the CSP's hash allows
sub page {
    my ($what) = @_;

    my $r = $t->get('/sf_oauth/');
    is($r->{status}, 200, "$what: the page, 200");
    like($r->{headers}{'content-type'}, qr{^text/html; charset=utf-8$},
         "$what: text/html");
    safety($r, "$what: the page");

    my ($style) = $r->{content} =~ m{<style>(.*?)</style>}s;
    my $hash = encode_base64(sha256($style // ''), '');
    my ($csp) = ($r->{headers}{'content-security-policy'} // '')
        =~ /'sha256-([^']+)'/;
    is($csp, $hash, "$what: the CSP names the hash of the page's style");

    return $r->{content};
}

# the console's JSON, by credential name
sub console_json {
    my ($what) = @_;

    my $r = $t->get('/sf_oauth/',
                    headers => { Accept => 'text/html;q=0.5, application/json' });
    is($r->{status}, 200, "$what: the JSON, 200");
    like($r->{headers}{'content-type'}, qr{^application/json}, "$what: JSON");
    is($r->{headers}{vary}, 'Accept', "$what: Vary: Accept");
    safety($r, "$what: the JSON");

    return { map { $_->{name} => $_ } @{ $r->{json}{credentials} || [] } };
}

# a row of the page: the cells of the credential NAME
sub row {
    my ($html, $name) = @_;

    my ($row) = $html =~ m{<tr><td><b>\Q$name\E</b></td>(.*?)</tr>}s;
    return $row // '';
}

for my $path ('/services/data/', '/jwt/data/', '/cc/data/') {
    is($t->get($path)->{status}, 200, "$path: 200");
}

# -- a credential that is not connected ---------------------------------------------

my $before = $t->token_requests;
my $r = $t->get('/new/data/');
push @answers, $r;
is($r->{status}, 502, 'not connected: 502');
is($r->{json}{error}, 'sf_oauth_token_unavailable', 'not connected: the JSON error');
is($r->{json}{credential}, 'new', 'not connected: the credential named');
like($r->{json}{error_description} // '',
     qr/credential "new" is not connected: connect it from the sf_oauth_console page/,
     'not connected: says so, and what to do')
    or diag(explain($r->{json}));
is($t->get('/new/data/')->{status}, 502, 'not connected: 502 again');

# each API in its own shape: a SOAP fault, the Bulk API's error
$r = $t->soap('/new/services/Soap/u/59.0',
              '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
              . 'xmlns:urn="urn:partner.soap.sforce.com"><soapenv:Header>'
              . '<urn:SessionHeader><urn:sessionId>bogus</urn:sessionId>'
              . '</urn:SessionHeader></soapenv:Header><soapenv:Body><urn:query>'
              . '<urn:queryString>SELECT Id FROM Account</urn:queryString>'
              . '</urn:query></soapenv:Body></soapenv:Envelope>');
push @answers, $r;
is($r->{status}, 502, 'not connected, SOAP: 502');
like($r->{content},
     qr{<faultcode>soapenv:Server</faultcode><faultstring>sf_oauth: sf_oauth_token_unavailable: credential &quot;new&quot;: credential &quot;new&quot; is not connected},
     'not connected, SOAP: a soapenv:Server fault that says so')
    or diag($r->{content});

$r = $t->http('POST', '/new/services/async/59.0/job',
              body => '<?xml version="1.0" encoding="UTF-8"?>'
                    . '<jobInfo xmlns="http://www.force.com/2009/06/asyncapi/dataload">'
                    . '<operation>insert</operation><object>Account</object>'
                    . '<contentType>CSV</contentType></jobInfo>',
              headers => { 'Content-Type' => 'application/xml; charset=UTF-8',
                           'X-SFDC-Session' => 'bogus' });
push @answers, $r;
is($r->{status}, 502, 'not connected, Bulk: 502');
like($r->{content},
     qr{<exceptionCode>sf_oauth_token_unavailable</exceptionCode><exceptionMessage>sf_oauth_token_unavailable: credential &quot;new&quot;: credential &quot;new&quot; is not connected},
     'not connected, Bulk: the Bulk API\'s error that says so')
    or diag($r->{content});
is($t->token_requests, $before, 'not connected: no token request');

my $prom = $t->get('/sf_oauth_info?format=prometheus')->{content};
like($prom, qr/^sf_oauth_token_held\{credential="new",zone="sf"\} 1$/m,
     'not connected: sf_oauth_token_held 1');
like($prom, qr/^sf_oauth_token_held\{credential="crm",zone="sf"\} 0$/m,
     'connected: sf_oauth_token_held 0');
{
    # scope=zone counts it apart from the credentials on hold
    my $zone = $t->get('/sf_oauth_info?format=prometheus&scope=zone')
               ->{content} // '';
    my %state = $zone =~ /^sf_oauth_credentials\{zone="sf",state="(\w+)"\}
                          \x20(\d+)$/mgx;
    is($state{not_connected}, 1,
       'scope=zone: sf_oauth_credentials{state="not_connected"} 1');
    is($state{held}, 0, 'scope=zone: not counted as held');
}
is($t->cred_info('new')->{state}, 'not connected',
   'sf_oauth_info: state "not connected"');

# -- the page and the JSON -------------------------------------------------------------

# the API usage reaches the zone when a worker flushes its metrics
SfTest::wait_event(10, 'the API usage in the console', sub {
    my $c = $t->get('/sf_oauth/', headers => { Accept => 'application/json' });
    my ($crm) = grep { $_->{name} eq 'crm' }
                @{ ($c->{json} || {})->{credentials} || [] };
    return $crm && $crm->{api_usage};
});

my $html = page('connected');

like(row($html, 'crm'),
     qr{^<td>refresh_token</td><td>sf</td><td class="valid">valid</td><td>org <code>00D5g000004TmoK</code><br>user <code>005000000000001</code></td><td>generation \d+<br>age \d+s<br>token <code>[0-9a-f]{8}</code><br>refresh token <code>[0-9a-f]{8}</code></td><td></td><td>\d+ of 5000</td><td>&ndash;</td><td><form method="post" action="/sf_oauth/connect">.*<button type="submit">Reconnect</button></form></td>$},
     'page: the refresh-token credential') or diag($html);
like(row($html, 'jwt'), qr{^<td>jwt_bearer</td><td>sf</td><td class="valid">valid</td><td>org <code>00D5g000004TmoK</code>},
     'page: the JWT credential');
like(row($html, 'cc'), qr{^<td>client_credentials</td><td>sf</td><td class="valid">valid</td>},
     'page: the client-credentials credential');
like(row($html, 'new'),
     qr{^<td>refresh_token</td><td>sf</td><td class="not-connected">not connected</td><td>&ndash;</td><td>generation \d+</td><td>credential &quot;new&quot; is not connected: connect it from the sf_oauth_console page</td>},
     'page: the not-connected credential, its message escaped');
like($html, qr/^<!DOCTYPE html>\n<html lang="en">.*<title>sf_oauth console<\/title>.*<\/html>\n$/s,
     'page: a whole HTML document');

my $j = console_json('connected');
is_deeply([sort keys %$j], [qw(cc crm jwt new)], 'JSON: every credential');

my $crm = $j->{crm};
is($crm->{grant}, 'refresh_token', 'JSON crm: grant');
is($crm->{zone}, 'sf', 'JSON crm: zone');
is($crm->{state}, 'valid', 'JSON crm: valid');
is_deeply($crm->{user}, { org_id => '00D5g000004TmoK',
                          user_id => '005000000000001', username => undef },
          'JSON crm: the org and user of the token');
ok($crm->{token_age} >= 0, 'JSON crm: a token age');
ok($crm->{generation} >= 1, 'JSON crm: a generation');
is($crm->{error}, '', 'JSON crm: no error');
is($crm->{api_usage}{limit}, 5000, 'JSON crm: the API limit');
ok($crm->{api_usage}{used} >= 1, 'JSON crm: the API usage');
is($crm->{fleet}, undef, 'JSON crm: no fleet');
is($crm->{connect_url}, $CONNECT, 'JSON crm: connect_url');
like($crm->{token_fp}, qr/^[0-9a-f]{8}$/, 'JSON crm: the token fingerprint');

is($j->{jwt}{grant}, 'jwt_bearer', 'JSON jwt: grant');
is($j->{jwt}{state}, 'valid', 'JSON jwt: valid');
is($j->{jwt}{connect_url}, undef, 'JSON jwt: no connect_url');
is($j->{jwt}{refresh_token_fp}, '-' x 8, 'JSON jwt: no refresh token');
is($j->{cc}{grant}, 'client_credentials', 'JSON cc: grant');
is($j->{cc}{state}, 'valid', 'JSON cc: valid');

is($j->{new}{state}, 'not connected', 'JSON new: not connected');
is($j->{new}{token_age}, -1, 'JSON new: no token');
like($j->{new}{error},
     qr/^credential "new" is not connected: connect it from the sf_oauth_console page$/,
     'JSON new: the error says so');
is_deeply($j->{new}{user}, { org_id => '', user_id => '', username => undef },
          'JSON new: no user');

# HEAD: the headers alone
$r = $t->http('HEAD', '/sf_oauth/');
is($r->{status}, 200, 'HEAD: 200');
is($r->{content} // '', '', 'HEAD: no body');
safety($r, 'HEAD');

# -- 404 and 405 ---------------------------------------------------------------------------

for my $path ('/sf_oauth/x/', '/sf_oauth/connectx', '/sf_oauth/x/callback') {
    $r = $t->get($path);
    is($r->{status}, 404, "$path: 404");
    like($r->{content}, qr/<h1>Not found<\/h1>/, "$path: a page of the console");
    safety($r, "$path: 404");
}

# the web server flow's routes (t/54-connect.t): pages of their own
$r = $t->get('/sf_oauth/connect');
is($r->{status}, 405, 'GET /sf_oauth/connect: 405, the flow starts with a POST');
safety($r, '/sf_oauth/connect: 405');
$r = $t->get('/sf_oauth/callback?code=x');
is($r->{status}, 400, '/sf_oauth/callback without a state: 400');
safety($r, '/sf_oauth/callback: 400');

for my $m ('POST', 'PUT', 'DELETE') {
    $r = $t->http($m, '/sf_oauth/', body => 'credential=crm');
    is($r->{status}, 405, "$m: 405");
    is($r->{headers}{allow}, 'GET, HEAD', "$m: Allow");
    safety($r, "$m: 405");
}

# the access rules of the location apply: here 127.0.0.1 only, allowed

# -- a refresh token refused: needs authorization ----------------------------------------

$t->mode('invalid_grant');
$t->mock('revoke');
$r = $t->get('/services/data/');
push @answers, $r;
is($r->{status}, 502, 'refresh token refused: 502');

$html = page('needs authorization');
like(row($html, 'crm'),
     qr{<td class="needs-authorization">needs authorization</td>.*invalid_grant}s,
     'page: needs authorization, with the error');

$j = console_json('needs authorization');
is($j->{crm}{state}, 'needs authorization', 'JSON crm: needs authorization');
like($j->{crm}{error}, qr/invalid_grant: expired access\/refresh token/,
     'JSON crm: the error in the module\'s words');
like($t->get('/sf_oauth_info?format=prometheus')->{content},
     qr/^sf_oauth_token_held\{credential="crm",zone="sf"\} 1$/m,
     'refresh token refused: sf_oauth_token_held 1');

# -- a reload keeps "not connected", and makes no token request --------------------------

$t->mode('normal');
$before = $t->token_requests;
$t->reload;
is($t->get('/new/data/')->{status}, 502, 'after a reload: still not connected');
is(console_json('after a reload')->{new}{state}, 'not connected',
   'after a reload: the console says so');
is($t->token_requests, $before, 'after a reload: no token request for it');

# -- no secret anywhere ---------------------------------------------------------------------

my $st = $t->stats;
my @secrets = (@{ $st->{issued_access_tokens} || [] },
               @{ $st->{issued_refresh_tokens} || [] },
               $SfTest::CLIENT_SECRET, $SfTest::REFRESH_TOKEN,
               "$SfTest::REFRESH_TOKEN-new");
ok(@{ $st->{issued_access_tokens} || [] } >= 3, 'tokens were issued');
$t->no_token_in(\@answers, \@secrets);

$t->finish;

# -- the fleet's view ---------------------------------------------------------------------

{
    my $f = SfTest->new;
    $f->start_mock;
    my $redis = RedisTest->new(dir => $f->dir);
    $redis->start;
    my $key = RedisTest::write_key($f);

    $f->write_conf($redis->conf_block
                   . "    sf_oauth_zone zone=sf:1m key=$key redis=fleet;\n"
                   . cred($f, 'crm') . <<'EOF');
    server {
        listen 127.0.0.1:%%PORT%% reuseport default_server;
        location /services/ {
            sf_oauth crm;
            proxy_pass http://127.0.0.1:%%MOCK%%;
        }
        location /sf_oauth/ {
            sf_oauth_console;
        }
    }
EOF
    $f->start;
    is($f->get('/services/data/')->{status}, 200, 'fleet: 200');

    my $fleet;
    SfTest::wait_event(10, 'the fleet connected in the console', sub {
        my $c = $f->get('/sf_oauth/', headers => { Accept => 'application/json' });
        ($fleet) = map { $_->{fleet} } @{ ($c->{json} || {})->{credentials} || [] };
        return $fleet && $fleet->{connected} && $fleet->{fleet_generation};
    });
    is($fleet->{redis}, 'fleet', 'fleet: its sf_oauth_redis');
    ok($fleet->{fleet_generation} >= 1, 'fleet: the fleet generation');
    ok(exists $fleet->{lease_owner}, 'fleet: the last lease owner');

    my $p = $f->get('/sf_oauth/')->{content};
    like($p, qr{<td>redis fleet connected<br>fleet generation [1-9]\d*},
         'fleet: on the page');

    RedisTest::finish_all($redis, $f);
}

done_testing;
