#!/usr/bin/perl

# The server-to-server grants: "grant jwt_bearer" signs an RS256 JWT with
# private_key and trades it for a token, "grant client_credentials" sends
# the consumer key and secret.  Their tokens are cached, shared by both
# workers, replayed after a 401 and kept in the state file like the
# refresh grant's; Salesforce's errors give a 502, an error line with a
# hint and a backoff; nginx -t refuses bad keys and bad combinations; no
# key, assertion or token reaches a log.  The mock checks each assertion
# as Salesforce does (signature, iss, aud, exp, an approved sub).

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use JSON::PP;
use Test::More;
use Time::HiRes qw(time sleep);

my $JWT_BEARER = 'urn:ietf:params:oauth:grant-type:jwt-bearer';
my $USER = 'integration@acme.com';

my $t = SfTest->new;
my $dir = $t->dir;
$t->start_mock;

# -- keys ------------------------------------------------------------------

SfTest::openssl('genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048',
        "-out $dir/jwt.key");
SfTest::openssl("pkey -in $dir/jwt.key -pubout -out $dir/jwt.pub");
SfTest::openssl("pkey -in $dir/jwt.key -traditional -out $dir/jwt-pkcs1.key");
SfTest::openssl('genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048',
        "-out $dir/other.key");
SfTest::openssl("pkey -in $dir/other.key -pubout -out $dir/other.pub");
SfTest::openssl('genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256',
        "-out $dir/ec.key");
SfTest::openssl("pkey -in $dir/jwt.key -aes256 -passout pass:pass-phrase",
        "-out $dir/encrypted.key");
$t->write_file('garbage.key', "this is not a PEM key\n" x 3);
$t->write_file('open.key', $t->slurp('jwt.key'), 0644);
chmod 0600, map { "$dir/$_" }
    qw(jwt.key jwt-pkcs1.key other.key ec.key encrypted.key);

like($t->slurp('jwt.key'), qr/^-----BEGIN PRIVATE KEY-----/, 'a PKCS#8 key');
like($t->slurp('jwt-pkcs1.key'), qr/^-----BEGIN RSA PRIVATE KEY-----/,
     'a PKCS#1 key');

# -- configuration -----------------------------------------------------------

# A credential block; grant jwt_bearer with the key and user by default.
sub cred {
    my ($s, %opt) = @_;

    my $name = delete $opt{name} // 'crm';
    my %line = (
        zone => 'sf',
        token_url => $s->mock_url . '/services/oauth2/token',
        grant => 'jwt_bearer',
        client_id => $SfTest::CLIENT_ID,
        %opt,
    );
    if (($line{grant} // '') eq 'jwt_bearer') {
        $line{username} = $USER unless exists $opt{username};
        $line{private_key} = "$dir/jwt.key" unless exists $opt{private_key};
    }

    my $block = "    sf_oauth_credential $name {\n";
    for my $k (qw(zone token_url grant client_id client_secret
                  client_secret_file refresh_token refresh_token_file
                  username private_key audience allow_world_readable
                  timeout))
    {
        next unless defined $line{$k};
        $block .= "        $k $line{$k};\n";
    }
    return $block . "    }\n";
}

# nginx.conf with the zone, the credential "crm" behind /services/ and,
# with rt => 1, a refresh-grant credential "rt" behind /rt/.
sub conf {
    my ($s, %opt) = @_;

    my $zone = delete $opt{zone} // 'sf_oauth_zone zone=sf:1m;';
    my $rt = delete $opt{rt};

    my $http = "    $zone\n" . cred($s, %opt);
    my $rt_location = '';
    if ($rt) {
        # the only refresh grant: the mock's configured refresh token
        $http .= $s->credential(name => 'rt',
                                refresh_token => $SfTest::REFRESH_TOKEN);
        $rt_location = <<'EOF';
        location /rt/ {
            sf_oauth rt;
            add_header X-SF-OAuth-Status $sf_oauth_status always;
            proxy_pass http://127.0.0.1:%%MOCK%%/services/;
        }
EOF
    }

    $s->write_conf($http . <<'EOF' . $rt_location . <<'EOF2');
    server {
        listen 127.0.0.1:%%PORT%% reuseport default_server;

        location /services/ {
            sf_oauth crm;
            add_header X-SF-OAuth-Status $sf_oauth_status always;
            proxy_pass http://127.0.0.1:%%MOCK%%;
        }

        location = /sf_oauth_info {
            sf_oauth_info;
        }
EOF
    }
EOF2
}

sub info {
    my ($s, $name) = @_;
    return $s->cred_info($name) // {};
}

sub jwt_key {
    my ($s, $file) = @_;
    $s->mock('jwt_key', "path=$dir/$file");
}

sub error_lines {
    my ($s) = @_;
    return grep { /\[error\].*sf_oauth/ } split /\n/, $s->error_log;
}

# -- nginx -t ----------------------------------------------------------------

{
    my $c = SfTest->new;

    my $check = sub {
        my ($name, $block, $expect) = @_;

        $c->write_conf("    sf_oauth_zone zone=sf:1m;\n" . $block . <<'EOF');
    server {
        listen 127.0.0.1:%%PORT%%;
        location / {
            sf_oauth crm;
            proxy_pass http://127.0.0.1:%%MOCK%%;
        }
    }
EOF
        # no terminal and no stdin: a key that wants a passphrase must not
        # make nginx -t wait for one
        my $cd = $c->dir;
        my $out = `setsid -w timeout 30 $SfTest::NGINX -t -p $cd/ -c $cd/nginx.conf </dev/null 2>&1`;
        my $rc = $? >> 8;
        isnt($rc, 124, "nginx -t: $name: does not hang");
        if (!defined $expect) {
            is($rc, 0, "nginx -t: $name: accepted") or diag($out);
            return;
        }
        isnt($rc, 0, "nginx -t: $name: rejected");
        $expect = [$expect] unless ref $expect eq 'ARRAY';
        like($out, $_, "nginx -t: $name: says why ($_)") or diag($out)
            for @$expect;
    };

    my $login = 'https://login.salesforce.com/services/oauth2/token';
    my $test = 'https://test.salesforce.com/services/oauth2/token';
    my $mydomain = 'https://acme.my.salesforce.com/services/oauth2/token';

    $check->('jwt_bearer with a PKCS#8 key', cred($c), undef);
    $check->('jwt_bearer with a PKCS#1 key',
             cred($c, private_key => "$dir/jwt-pkcs1.key"), undef);
    $check->('jwt_bearer against login.salesforce.com',
             cred($c, token_url => $login), undef);
    $check->('jwt_bearer with an audience',
             cred($c, audience => 'https://login.salesforce.com'), undef);
    $check->('client_credentials on a My Domain host',
             cred($c, grant => 'client_credentials', token_url => $mydomain,
                  client_secret => $SfTest::CLIENT_SECRET), undef);
    $check->('grant refresh_token said outright',
             $c->credential =~ s/(client_id [^;]+;)/$1 grant refresh_token;/r,
             undef);
    $check->('a world-readable key, allowed',
             cred($c, private_key => "$dir/open.key",
                  allow_world_readable => 'on'), undef);

    $check->('missing key file', cred($c, private_key => "$dir/no-such.key"),
             qr/\Q$dir\E\/no-such\.key/);
    $check->('a key file that is not PEM',
             cred($c, private_key => "$dir/garbage.key"),
             qr/\Q$dir\E\/garbage\.key/);
    $check->('a key with a passphrase',
             cred($c, private_key => "$dir/encrypted.key"),
             qr/\Q$dir\E\/encrypted\.key/);
    $check->('an EC key', cred($c, private_key => "$dir/ec.key"),
             [qr/\Q$dir\E\/ec\.key/, qr/RSA/]);
    $check->('a world-readable key', cred($c, private_key => "$dir/open.key"),
             [qr/\Q$dir\E\/open\.key/, qr/allow_world_readable/]);
    $check->('jwt_bearer without private_key', cred($c, private_key => undef),
             qr/private_key/);
    $check->('jwt_bearer without username', cred($c, username => undef),
             qr/username/);
    $check->('refresh_token with jwt_bearer',
             cred($c, refresh_token => $SfTest::REFRESH_TOKEN),
             qr/refresh_token/);
    $check->('refresh_token_file with jwt_bearer',
             cred($c, refresh_token_file => "$dir/jwt.key"),
             qr/refresh_token_file/);
    $check->('client_secret with jwt_bearer',
             cred($c, client_secret => $SfTest::CLIENT_SECRET),
             qr/client_secret/);
    $check->('refresh_token with client_credentials',
             cred($c, grant => 'client_credentials', token_url => $mydomain,
                  client_secret => $SfTest::CLIENT_SECRET,
                  refresh_token => $SfTest::REFRESH_TOKEN),
             qr/refresh_token/);
    $check->('client_credentials without a secret',
             cred($c, grant => 'client_credentials', token_url => $mydomain),
             qr/client_secret/);
    $check->('client_credentials on login.salesforce.com',
             cred($c, grant => 'client_credentials', token_url => $login,
                  client_secret => $SfTest::CLIENT_SECRET),
             [qr/My Domain/, qr/login\.salesforce\.com/]);
    $check->('client_credentials on test.salesforce.com',
             cred($c, grant => 'client_credentials', token_url => $test,
                  client_secret => $SfTest::CLIENT_SECRET),
             [qr/My Domain/, qr/test\.salesforce\.com/]);
    $check->('an unknown grant', cred($c, grant => 'password'),
             [qr/grant/, qr/password/]);
    $check->('username with the refresh grant',
             $c->credential =~ s/(client_id [^;]+;)/$1 username $USER;/r,
             qr/username/);
    $check->('private_key with client_credentials',
             cred($c, grant => 'client_credentials', token_url => $mydomain,
                  client_secret => $SfTest::CLIENT_SECRET,
                  private_key => "$dir/jwt.key"),
             qr/private_key/);
    $check->('an audience that is not a URL',
             cred($c, audience => 'login.salesforce.com'),
             qr/audience/);

    $c->finish;
}

my $cc = { grant => 'client_credentials', client_secret => $SfTest::CLIENT_SECRET };

# -- jwt_bearer: a cold start, the hot path, next to a refresh grant -----------

jwt_key($t, 'jwt.pub');
conf($t, rt => 1);
$t->start;

is($t->token_requests, 0, 'no token request before the first API request');

my $t0 = time;
my $r = $t->get('/services/data/v59.0/sobjects');
my $t1 = time;
is($r->{status}, 200, 'jwt_bearer: cold start: 200') or diag($r->{content});
is($r->{headers}{'x-sf-oauth-status'}, 'WAIT', 'jwt_bearer: cold start: WAIT');

my $stats = $t->stats;
is($stats->{token_requests}, 1, 'jwt_bearer: one token request');
is($stats->{grants}{jwt_bearer}, 1, 'jwt_bearer: it is a JWT bearer grant');
is($r->{json}{authorization}, "Bearer $stats->{issued_access_tokens}[0]",
   'jwt_bearer: the token the mock issued is injected');

my $form = $stats->{last_token_form};
is($form->{method}, 'POST', 'jwt_bearer: POST');
is($form->{grant_type}, $JWT_BEARER, 'jwt_bearer: grant_type');
ok($form->{has_assertion}, 'jwt_bearer: an assertion');
ok(!$form->{has_client_secret}, 'jwt_bearer: no client_secret sent');
ok(!$form->{has_refresh_token}, 'jwt_bearer: no refresh_token sent');
like($form->{content_type} // '', qr{^application/x-www-form-urlencoded},
     'jwt_bearer: form-encoded');

my @jwts = @{ $stats->{jwt_log} };
is(scalar @jwts, 1, 'jwt_bearer: the mock verified the signature of one JWT');
my $jwt = $jwts[0] // {};
is($jwt->{error}, undef, 'jwt_bearer: the mock accepted the JWT');
is($jwt->{header}{alg}, 'RS256', 'JWT header: alg RS256');
ok(!defined $jwt->{header}{typ} || $jwt->{header}{typ} eq 'JWT',
   'JWT header: typ JWT or none');
my $claims = $jwt->{claims} // {};
is($claims->{iss}, $SfTest::CLIENT_ID, 'JWT: iss is client_id');
is($claims->{sub}, $USER, 'JWT: sub is username');
is($claims->{aud}, $t->mock_url,
   "JWT: aud defaults to token_url's scheme://host:port");
my $left = ($claims->{exp} // 0) - ($jwt->{now} // 0);
ok($left > 0 && $left <= 180, "JWT: exp is at most 180 s ahead ($left)");
ok(($claims->{exp} // 0) <= $t1 + 180,
   'JWT: exp is at most 180 s after the request');
if (defined $claims->{iat}) {
    ok($claims->{iat} >= $t0 - 60 && $claims->{iat} <= $t1 + 1,
       'JWT: iat is now');
}

my $assertion = $stats->{jwt_assertions}[0] // '';
like($assertion, qr/^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/,
     'the assertion is three base64url parts without padding');

is(info($t, 'crm')->{grant}, 'jwt_bearer', 'sf_oauth_info: grant jwt_bearer');
is(info($t, 'rt')->{grant}, 'refresh_token', 'sf_oauth_info: grant refresh_token');

my %status;
for (1 .. 20) {
    my $r = $t->get('/services/data/v59.0/limits');
    $status{"$r->{status} " . ($r->{headers}{'x-sf-oauth-status'} // '')}++;
}
is_deeply(\%status, { '200 HIT' => 20 }, 'jwt_bearer: 20 HITs');
is($t->token_requests, 1, 'jwt_bearer: the hot path makes no token request');

# the refresh grant next to it, in the same nginx
$r = $t->get('/rt/data/v59.0/');
is($r->{status}, 200, 'refresh_token credential next to jwt_bearer: 200');
$stats = $t->stats;
is($stats->{grants}{refresh_token}, 1, 'the refresh grant for "rt"');
is($stats->{grants}{jwt_bearer}, 1, 'no jwt grant for "rt"');
is($r->{json}{authorization}, "Bearer $stats->{issued_access_tokens}[1]",
   '"rt" has its own token');
is($t->get('/services/data/')->{json}{authorization},
   "Bearer $stats->{issued_access_tokens}[0]", '"crm" keeps its token');

# -- jwt_bearer: the 401 replay ----------------------------------------------

$t->mock('revoke');
$r = $t->get('/services/data/v59.0/replayed');
is($r->{status}, 200, 'jwt_bearer: after a revoke: 200');
is($r->{headers}{'x-sf-oauth-status'}, 'RETRY', 'jwt_bearer: replayed');
$stats = $t->stats;
is($stats->{grants}{jwt_bearer}, 2, 'jwt_bearer: one more JWT grant');
is($r->{json}{authorization}, "Bearer $stats->{issued_access_tokens}[-1]",
   'jwt_bearer: the replay has the new token');
is(scalar @{ $stats->{jwt_log} }, 2, 'a second JWT verified');
is($stats->{jwt_log}[1]{error}, undef, 'and accepted');

$t->mock('revoke');
my @status = $t->parallel(50, '/services/data/v59.0/burst');
is(scalar(grep { $_ == 200 } @status), 50, 'jwt_bearer: 50 at once after a revoke: 200');
$stats = $t->stats;
is($stats->{grants}{jwt_bearer}, 3, 'jwt_bearer: 50 at once cost one token request');
is($stats->{grants}{refresh_token}, 1, 'and no refresh grant');

$t->stop;

# -- jwt_bearer: a configured audience -----------------------------------------

$t->mock('reset');
jwt_key($t, 'jwt.pub');
$t->mock('jwt_audience', 'aud=https://acme.example.com/portal');
conf($t, audience => 'https://acme.example.com/portal');
$t->start;
$r = $t->get('/services/data/');
is($r->{status}, 200, 'a configured audience: 200') or diag($r->{content});
$stats = $t->stats;
is($stats->{jwt_log}[0]{claims}{aud}, 'https://acme.example.com/portal',
   'a configured audience: it is the aud');
$t->stop;

# -- jwt_bearer: an Experience Cloud site's token_url: aud is the site's URL ----

$t->mock('reset');
jwt_key($t, 'jwt.pub');
$t->mock('jwt_audience', 'aud=' . $t->mock_url . '/portal');
conf($t, token_url => $t->mock_url . '/portal/services/oauth2/token');
$t->start;
$r = $t->get('/services/data/');
is($r->{status}, 200, 'a site token_url: 200') or diag($r->{content});
is($t->stats->{jwt_log}[0]{claims}{aud}, $t->mock_url . '/portal',
   "a site token_url: aud is token_url without /services/oauth2/token");
$t->stop;

# -- a reload that changes who the token is for drops it -----------------------

$t->mock('reset');
jwt_key($t, 'jwt.pub');
$t->mock('jwt_user', 'user=other@acme.com&approved=1');
conf($t);
$t->start;
my $first = $t->get('/services/data/')->{json}{authorization};
ok($first, 'reload: a token for integration@acme.com');

conf($t, timeout => '5s');
$t->reload;
$r = $t->get('/services/data/');
is($r->{json}{authorization}, $first, 'reload: another timeout keeps the token');
is($t->token_requests, 1, 'reload: no token request');

conf($t, username => 'other@acme.com');
$t->reload;
$r = $t->get('/services/data/');
is($r->{status}, 200, 'reload: another username: 200');
isnt($r->{json}{authorization}, $first, 'reload: another username: a new token');
$stats = $t->stats;
is($stats->{token_requests}, 2, 'reload: another username: one token request');
is($stats->{jwt_log}[-1]{claims}{sub}, 'other@acme.com',
   'reload: the new JWT is for the new username');
my $second = $r->{json}{authorization};

conf($t, %$cc);
$t->reload;
$r = $t->get('/services/data/');
is($r->{status}, 200, 'reload: to client_credentials: 200');
isnt($r->{json}{authorization}, $second, 'reload: to client_credentials: a new token');
is($t->stats->{grants}{client_credentials}, 1,
   'reload: to client_credentials: a client credentials grant');
is(info($t, 'crm')->{grant}, 'client_credentials',
   'reload: sf_oauth_info says client_credentials');
$t->stop;

# -- Salesforce's errors: a 502, an error line with a hint, a backoff ----------


my @cases = (
    [ 'unapproved user', {}, [ jwt_user => "user=$USER&approved=0" ],
      qr/invalid_grant: user hasn't approved this consumer/, qr/pre-authoriz/ ],
    [ 'unknown user', { username => 'someone@acme.com' }, [],
      qr/invalid_grant: user hasn't approved this consumer/, qr/pre-authoriz/ ],
    [ 'wrong audience', { audience => 'https://login.salesforce.com' }, [],
      qr/invalid_grant: audience is invalid/, qr/audience/ ],
    [ 'clock skew', {}, [ clock => 'skew=600' ],
      qr/invalid_grant: expired authorization code/, qr/clock/ ],
    [ 'a key Salesforce does not know', {}, [ jwt_key => "path=$dir/other.pub" ],
      qr/invalid_grant: invalid assertion/, qr/./ ],
    [ 'wrong client id', { client_id => '3MVG9wrong' }, [],
      qr/invalid_client_id: client identifier invalid/, qr/client_id/ ],
    [ 'client_credentials: wrong secret',
      { %$cc, client_secret => 'wrong-secret' }, [],
      qr/invalid_client: invalid client credentials/, qr/client_secret/ ],
    [ 'client_credentials: no run-as user', $cc, [ cc_user => 'enabled=0' ],
      qr/invalid_grant: no client credentials user enabled/, qr/./ ],
);

for my $case (@cases) {
    my ($name, $cred, $mock, $desc, $hint) = @$case;

    $t->mock('reset');
    jwt_key($t, 'jwt.pub');
    $t->mock(@$mock) if @$mock;
    truncate "$dir/error.log", 0;
    conf($t, %$cred);
    $t->start;

    my $r = $t->get('/services/data/v59.0/sobjects');
    is($r->{status}, 502, "$name: 502");
    like($r->{headers}{'content-type'} // '', qr{^application/json}, "$name: JSON");
    is(($r->{json} // {})->{error}, 'sf_oauth_token_unavailable', "$name: error code");
    is(($r->{json} // {})->{credential}, 'crm', "$name: names the credential");
    like(($r->{json} // {})->{error_description} // '', $desc, "$name: says why")
        or diag($r->{content});
    is($t->token_requests, 1, "$name: one token request");

    my @lines = error_lines($t);
    is(scalar @lines, 1, "$name: one error line") or diag(join "\n", @lines);
    like($lines[0] // '', qr/sf_oauth: credential "crm": .*$desc.*; .*$hint/,
         "$name: the line says the error and what to do") or diag($lines[0]);

    # the backoff: the next requests make no token request
    is($t->get('/services/data/v59.0/')->{status}, 502, "$name: right after: 502");
    my @status = $t->parallel(10, '/services/data/v59.0/');
    is(scalar(grep { $_ == 502 } @status), 10, "$name: a burst: 502");
    is($t->token_requests, 1, "$name: backoff: no second token request");

    $t->stop;
}

# -- client_credentials --------------------------------------------------------

$t->mock('reset');
truncate "$dir/error.log", 0;
conf($t, %$cc);
$t->start;

$r = $t->get('/services/data/v59.0/sobjects');
is($r->{status}, 200, 'client_credentials: cold start: 200') or diag($r->{content});
$stats = $t->stats;
is($stats->{token_requests}, 1, 'client_credentials: one token request');
is($stats->{grants}{client_credentials}, 1, 'client_credentials: the grant');
$form = $stats->{last_token_form};
is($form->{grant_type}, 'client_credentials', 'client_credentials: grant_type');
is($form->{client_id}, $SfTest::CLIENT_ID, 'client_credentials: client_id');
ok($form->{client_secret_ok}, 'client_credentials: the client secret');
ok(!$form->{has_refresh_token}, 'client_credentials: no refresh_token');
ok(!$form->{has_assertion}, 'client_credentials: no assertion');
is($r->{json}{authorization}, "Bearer $stats->{issued_access_tokens}[0]",
   'client_credentials: the token is injected');
is(info($t, 'crm')->{grant}, 'client_credentials',
   'sf_oauth_info: grant client_credentials');

$t->mock('revoke');
$r = $t->get('/services/data/v59.0/replayed');
is($r->{status}, 200, 'client_credentials: after a revoke: 200');
is($r->{headers}{'x-sf-oauth-status'}, 'RETRY', 'client_credentials: replayed');
is($t->token_requests, 2, 'client_credentials: one more token request');
is($r->{json}{authorization}, "Bearer " . $t->stats->{issued_access_tokens}[-1],
   'client_credentials: the replay has the new token');

is(scalar(error_lines($t)), 0, 'client_credentials: no error line');
$t->stop;

# -- the state file keeps a jwt token across a restart ---------------------------

# "rt", a refresh grant with rotation, shares the state file: a restart
# that lost its rotated refresh token would present a dead one, and
# Salesforce would revoke everything
$t->mock('reset');
jwt_key($t, 'jwt.pub');
$t->mode('rotation');
$t->write_file('state.key', ('c3' x 32) . "\n");
my $state = "$dir/state/sf.state";
conf($t, zone => "sf_oauth_zone zone=sf:1m state=$state key=$dir/state.key;",
     rt => 1);
truncate "$dir/error.log", 0;
$t->start;

$r = $t->get('/services/data/');
is($r->{status}, 200, 'state: first request: 200');
my $token = $r->{json}{authorization} // '';
my $rt_r = $t->get('/rt/data/');
is($rt_r->{status}, 200, 'state: "rt" first request: 200');
my $rt_token = $rt_r->{json}{authorization} // '';
is($t->token_requests, 2, 'state: two token requests');
for (1 .. 50) {
    last if -s $state;
    sleep 0.1;
}
ok(-s $state, 'state: the state file is written');
unlike($t->slurp('state/sf.state'), qr/\Q${\ substr($token, 7)}\E/,
       'state: no token in clear in the state file');

$t->stop;
truncate "$dir/error.log", 0;
$t->start;

my @ignored = grep { /state file .* is ignored/ } split /\n/, $t->error_log;
ok(!@ignored, 'state: the state file is not ignored') or diag(@ignored);
like($t->error_log, qr/restored 2 credentials from the state file/,
     'state: both credentials restored');

$r = $t->get('/services/data/');
is($r->{status}, 200, 'state: after a restart: 200');
is($r->{headers}{'x-sf-oauth-status'}, 'HIT', 'state: after a restart: HIT');
is($r->{json}{authorization}, $token, 'state: after a restart: the same token');
$rt_r = $t->get('/rt/data/');
is($rt_r->{headers}{'x-sf-oauth-status'}, 'HIT',
   'state: after a restart: "rt" HIT');
is($rt_r->{json}{authorization}, $rt_token,
   'state: after a restart: "rt" has the same token');
is($t->token_requests, 2, 'state: after a restart: no token request');

$t->mock('revoke');
$r = $t->get('/services/data/');
is($r->{status}, 200, 'state: after a restart and a revoke: 200');
$rt_r = $t->get('/rt/data/');
is($rt_r->{status}, 200,
   'state: after a restart and a revoke: "rt" refreshes with its rotated token');
$stats = $t->stats;
is($stats->{grants}{jwt_bearer}, 2, 'state: a new JWT grant');
is(scalar @{ $stats->{valid_refresh_tokens} }, 1,
   'state: Salesforce did not revoke the refresh token (no reuse of a dead one)');
$t->stop;

$t->finish;

# -- no key, assertion, secret or token in any log or answer, at debug level ----

{
    my $d = SfTest->new(log_level => 'debug');
    $d->start_mock;
    $d->mock('jwt_key', "path=$dir/jwt.pub");

    # crm: jwt_bearer with the PKCS#1 form of the key; cc: client_credentials
    conf($d, private_key => "$dir/jwt-pkcs1.key");
    my $conf = $d->slurp('nginx.conf');
    my $cc_block = cred($d, name => 'cc', %$cc);
    $conf =~ s/(    server \{)/$cc_block$1/;
    $conf =~ s{(        location = /sf_oauth_info)}{        location /cc/ {
            sf_oauth cc;
            proxy_pass http://127.0.0.1:${\ $d->mock_port}/services/;
        }

$1};
    open my $fh, '>', $d->dir . '/nginx.conf' or die;
    print $fh $conf;
    close $fh;
    $d->start;

    # ?html=1: the mock answers a page, not its usual echo of the request
    # (which holds the token it received)
    my @answers;
    for my $path ('/services/data/a?html=1', '/services/data/b?html=1',
                  '/cc/data/a?html=1', '/cc/data/b?html=1', '/sf_oauth_info')
    {
        push @answers, $d->get($path);
    }
    $d->mock('revoke');
    push @answers, $d->get('/services/data/c?html=1'),
                   $d->get('/cc/data/c?html=1'), $d->get('/sf_oauth_info');
    like($answers[0]{content}, qr/Account Acme/, 'debug: the API answered');
    is(scalar(grep { $_->{status} == 200 } @answers), 8,
       'debug: every request answered 200 (the PKCS#1 key signs)');

    # a failing JWT grant too: its error lines
    $d->mock('clock', 'skew=600');
    $d->mock('revoke');
    push @answers, $d->get('/services/data/d?html=1');
    is($answers[-1]{status}, 502, 'debug: a refused JWT: 502');

    $d->stop;

    my $s = $d->mock('stats');
    my @assertions = @{ $s->{jwt_assertions} };
    is(scalar @assertions, 3, 'debug: three assertions sent');
    is($s->{grants}{client_credentials}, 2, 'debug: two client credentials grants');

    my @key_lines = grep { !/-----/ && length > 40 } split /\n/, $t->slurp('jwt.key');
    my @pkcs1_lines = grep { !/-----/ && length > 40 } split /\n/, $t->slurp('jwt-pkcs1.key');
    ok(@key_lines >= 20 && @pkcs1_lines >= 20, 'debug: the key bodies to look for');

    my @secrets = (@assertions,
                   (map { (split /\./)[2] // () } @assertions),
                   @key_lines, @pkcs1_lines,
                   $SfTest::CLIENT_SECRET,
                   @{ $s->{issued_access_tokens} });

    ok(length $d->error_log > 10000, 'debug: the debug log was written');
    $d->no_token_in(\@answers, \@secrets);
    my $stderr = $d->slurp('stderr.log');
    ok(!grep({ index($stderr, $_) >= 0 } @secrets), 'debug: stderr holds no secret');

    $d->finish;
}

done_testing;
