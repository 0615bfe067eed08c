#!/usr/bin/perl

# The mock Salesforce's web server flow, driven directly (no nginx): the
# authorize endpoint's checks, its login and consent pages (their forms, as
# a browser reads them), the redirects with code and state or the error,
# and the authorization_code grant as Salesforce checks it: the client,
# redirect_uri byte for byte, PKCE, a code used once within 15 minutes.
# The tokens it issues work with the API, the identity service, the refresh
# grant, rotation and revoke; the stats count every step.  SfTest's
# browser-like client (authorize_flow) does the clicking.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use Test::More;
use Digest::SHA qw(hmac_sha256);
use HTTP::Tiny;
use JSON::PP;
use MIME::Base64 qw(encode_base64);
use Time::HiRes qw(time);

# the mock alone, no nginx: nothing for valgrind to check
plan skip_all => 'no module code runs here: nothing for valgrind to check'
    if $ENV{SF_TEST_VALGRIND};

my $t = SfTest->new;
$t->start_mock;

my $mock = $t->mock_url;
my $cb = 'http://127.0.0.1:' . $t->port . '/sf_oauth/callback';
my $ORG_B = '00D5g000009GlbX';

# an authorize URL of the mock with these query fields (PKCE S256 with a
# new verifier unless given); returns (url, verifier)
sub authorize_url {
    my (%q) = @_;

    my ($verifier, $challenge) = SfTest::pkce();
    my %f = (response_type => 'code', client_id => $SfTest::CLIENT_ID,
             redirect_uri => $cb, scope => 'api refresh_token',
             prompt => 'login consent', state => 'st-' . int(rand 1e9),
             code_challenge => $challenge, code_challenge_method => 'S256',
             %q);
    delete @f{ grep { !defined $f{$_} } keys %f };
    return ("$mock/services/oauth2/authorize?" . SfTest::form_encode(\%f),
            $verifier);
}

# a code for USER (admin@acme): (flow, verifier)
sub get_code {
    my (%opt) = @_;

    my $user = delete $opt{user};
    my ($url, $verifier) = authorize_url(%opt);
    my $f = $t->authorize_flow(url => $url, user => $user);
    die "no code: " . ($f->{flow_error} // $f->{error} // '?')
        unless defined $f->{code};
    return ($f, $verifier);
}

sub plain {
    my ($method, $url, %args) = @_;
    return HTTP::Tiny->new(max_redirect => 0, timeout => 30)
        ->request($method, $url, \%args);
}

sub refused {
    my ($res, $status, $error, $desc, $name) = @_;

    is($res->{status}, $status, "$name: HTTP $status");
    is($res->{json} && $res->{json}{error}, $error, "$name: $error");
    is($res->{json} && $res->{json}{error_description}, $desc,
       "$name: \"$desc\"") if defined $desc;
    ok(!($res->{json} && $res->{json}{access_token}), "$name: no token");
}

my %refused;    # what the stats must count, by reason

# -- the login page ----------------------------------------------------------

my $odd_state = q{a b&c"<x>'=%2F+};
my ($url, $verifier) = authorize_url(state => $odd_state,
                                     login_hint => 'admin@acme');
my $r = plain('GET', $url);
is($r->{status}, 200, 'authorize: the login page');
like($r->{headers}{'content-type'}, qr{^text/html}, 'login page: HTML');
my ($login) = SfTest::html_forms($r->{content});
ok($login, 'login page: a form') or BAIL_OUT('no login form');
is($login->{id}, 'login', 'login form: id "login"');
is($login->{method}, 'post', 'login form: POST');
is($login->{action}, '/services/oauth2/authorize/login',
   'login form: posts to the mock\'s login');
my %hidden = map { @$_ } SfTest::form_hidden($login);
my $q = SfTest::parse_query($url);
is_deeply(\%hidden, $q, 'login form: the query in hidden fields, exactly');
is($hidden{state}, $odd_state, 'login form: an odd state kept byte for byte');
my %in = map { ($_->{id} // '') => $_ } @{ $login->{inputs} };
is($in{username}{name}, 'username', 'login form: a username field');
is($in{username}{value}, 'admin@acme', 'login form: login_hint filled in');
is($in{password}{type}, 'password', 'login form: a password field');
is($in{password}{name}, 'pw', 'login form: the password is "pw"');
is($in{Login}{type}, 'submit', 'login form: a Log In button');

my $stats = $t->stats;
is($stats->{authorize}{requests}, 1, 'stats: 1 authorize request');
is($stats->{authorize}{login_pages}, 1, 'stats: 1 login page');
is_deeply($stats->{authorize_log}[0], $q,
          'stats: the authorize request\'s query logged');

# -- logging in: wrong, then right; consent ------------------------------------

$r = plain('POST', "$mock/services/oauth2/authorize/login",
           headers => { 'Content-Type' => 'application/x-www-form-urlencoded' },
           content => SfTest::form_encode([SfTest::form_hidden($login),
                                           [username => 'admin@acme'],
                                           [pw => 'wrong']]));
is($r->{status}, 200, 'wrong password: the login page again');
like($r->{content}, qr/Please check your username and password/,
     'wrong password: says so');
ok(!grep({ ($_->{id} // '') eq 'consent' } SfTest::html_forms($r->{content})),
   'wrong password: no consent form');
ok(grep({ ($_->{id} // '') eq 'login' } SfTest::html_forms($r->{content})),
   'wrong password: the login form again');

my $f = $t->authorize_flow(url => $url, user => 'nobody@acme',
                           password => 'x');
is($f->{error_step}, 'login', 'unknown user: stops at the login');

$f = $t->authorize_flow(url => $url);
is($f->{flow_error}, undef, 'admin@acme: login and consent go through')
    or diag($f->{flow_error});
my $consent_page = SfTest::step($f, 'login');
like($consent_page->{headers}{'content-type'}, qr{^text/html},
     'consent page: HTML');
my ($consent) = SfTest::html_forms($consent_page->{content});
is($consent->{id}, 'consent', 'consent form: id "consent"');
is($consent->{method}, 'post', 'consent form: POST');
is($consent->{action}, '/services/oauth2/authorize/consent',
   'consent form: posts to the mock\'s consent');
my %btn = map { ($_->{id} // '') => $_ } @{ $consent->{inputs} };
is($btn{oaapprove}{type}, 'submit', 'consent form: an Allow button');
is($btn{oaapprove}{value}, 'Allow', 'consent form: it says Allow');
is($btn{oadeny}{type}, 'submit', 'consent form: a Deny button');
is($btn{oadeny}{value}, 'Deny', 'consent form: it says Deny');
my @tickets = SfTest::form_hidden($consent);
is(scalar(@tickets), 1, 'consent form: one hidden field');
is($tickets[0][0], 'ticket', 'consent form: the login\'s ticket');
like($consent_page->{content}, qr/admin\@acme/,
     'consent page: names the user');

my $consent_step = SfTest::step($f, 'consent');
is($consent_step->{status}, 302, 'Allow: a 302');
like($f->{redirect}, qr{^\Q$cb\E\?code=[^&]+&state=[^&]+$},
     'Allow: to redirect_uri with code and state');
is($f->{state}, $odd_state, 'Allow: the state back, byte for byte');
ok(length($f->{code}) >= 40, 'Allow: a code');
is($f->{error}, undef, 'Allow: no error');

# the ticket is spent
$r = plain('POST', "$mock/services/oauth2/authorize/consent",
           headers => { 'Content-Type' => 'application/x-www-form-urlencoded' },
           content => SfTest::form_encode([[ticket => $tickets[0][1]],
                                           [approve => 'Allow']]));
is($r->{status}, 400, 'a spent consent ticket: 400');
like($r->{content}, qr/unknown or was used/, 'a spent ticket: says so');
ok(!$r->{headers}{location}, 'a spent ticket: no redirect');

# -- the code exchange ----------------------------------------------------------

my $code = $f->{code};
my $t0 = time;
$r = $t->code_exchange(code => $code, redirect_uri => $cb,
                       code_verifier => $verifier);
is($r->{status}, 200, 'exchange: 200') or diag($r->{content});
my $tok = $r->{json} || {};
like($tok->{access_token}, qr/^00D5g000004TmoK!/, 'exchange: an access token');
like($tok->{refresh_token}, qr/^5Aep861/, 'exchange: a refresh token');
is($tok->{instance_url}, $mock, 'exchange: instance_url');
is($tok->{id}, "$mock/id/00D5g000004TmoK/005000000000001",
   'exchange: id names org A and admin@acme');
is($tok->{token_type}, 'Bearer', 'exchange: token_type');
is($tok->{scope}, 'api refresh_token', 'exchange: the requested scope');
like($tok->{issued_at}, qr/^\d{13}$/, 'exchange: issued_at in ms');
ok(abs($tok->{issued_at} / 1000 - $t0) < 30, 'exchange: issued_at is now');
is($tok->{signature},
   encode_base64(hmac_sha256($tok->{id} . $tok->{issued_at},
                             $SfTest::CLIENT_SECRET), ''),
   'exchange: signature = base64 HMAC-SHA256(secret, id + issued_at)');
ok(!exists $tok->{expires_in}, 'exchange: no expires_in, as Salesforce');

$stats = $t->stats;
ok((grep { $_ eq $tok->{refresh_token} } @{ $stats->{valid_refresh_tokens} }),
   'the new refresh token is valid');
ok((grep { $_ eq $tok->{refresh_token} } @{ $stats->{issued_refresh_tokens} }),
   'the new refresh token is issued');
is_deeply($stats->{code_refresh_tokens}, [$tok->{refresh_token}],
          'stats: code_refresh_tokens');
is_deeply($stats->{issued_codes}, [$code], 'stats: issued_codes');
is($stats->{grants}{authorization_code}, 1, 'stats: an authorization_code grant');
is($stats->{exchange_log}[0]{result}, 'ok', 'exchange_log: ok');
is($stats->{exchange_log}[0]{user}, 'admin@acme', 'exchange_log: the user');

# the token works: the API and the identity service
my $api = HTTP::Tiny->new(timeout => 30);
$r = $api->get("$mock/services/data/v59.0/sobjects",
               { headers => { Authorization => "Bearer $tok->{access_token}" } });
is($r->{status}, 200, 'the exchange\'s access token: the API answers');
$r = $api->get($tok->{id},
               { headers => { Authorization => "Bearer $tok->{access_token}" } });
is($r->{status}, 200, 'identity: 200');
is(eval { decode_json($r->{content})->{username} }, 'admin@acme',
   'identity: the user who logged in');

# used once
$r = $t->code_exchange(code => $code, redirect_uri => $cb,
                       code_verifier => $verifier);
refused($r, 400, 'invalid_grant', 'expired authorization code',
        'the code again');
$refused{reused}++;

# the refresh grant with the new refresh token, rotation, its count
my $refresh = sub {
    my ($rt) = @_;
    return $t->code_exchange(grant_type => 'refresh_token',
                             refresh_token => $rt);
};
$r = $refresh->($tok->{refresh_token});
is($r->{status}, 200, 'the refresh grant takes the new refresh token');
is($r->{json}{id}, $tok->{id}, 'refresh: the same user\'s id');
$t->mode('rotation');
$r = $refresh->($tok->{refresh_token});
my $rotated = $r->{json}{refresh_token};
ok($rotated && $rotated ne $tok->{refresh_token}, 'rotation: a new one');
is($r->{json}{id}, $tok->{id}, 'rotation: the same user\'s id');
$r = $refresh->($rotated);
is($r->{status}, 200, 'rotation: the rotated one works');
my $rotated2 = $r->{json}{refresh_token};
$t->mode('normal');
is($t->stats->{authorize}{refresh_uses}, 3,
   'stats: 3 refresh grants with the code\'s refresh tokens');

# -- each refusal of the exchange ------------------------------------------------

($f, $verifier) = get_code();
refused($t->code_exchange(code => $f->{code}, redirect_uri => $cb,
                          code_verifier => $verifier,
                          client_id => '3MVG9other'),
        400, 'invalid_client_id', 'client identifier invalid',
        'another client_id');
$refused{client_id}++;
refused($t->code_exchange(code => $f->{code}, redirect_uri => $cb,
                          code_verifier => $verifier,
                          client_secret => 'wrong'),
        400, 'invalid_client', 'invalid client credentials', 'a wrong secret');
$refused{client_secret}++;
refused($t->code_exchange(code => $f->{code}, redirect_uri => $cb,
                          code_verifier => $verifier,
                          client_secret => undef),
        400, 'invalid_client', 'invalid client credentials', 'no secret');
$refused{client_secret}++;
# the client checks come first: the code is still good
$r = $t->code_exchange(code => $f->{code}, redirect_uri => $cb,
                       code_verifier => $verifier);
is($r->{status}, 200, 'after client refusals, the code still works');

refused($t->code_exchange(code => 'aPrxNoSuchCode', redirect_uri => $cb,
                          code_verifier => $verifier),
        400, 'invalid_grant', 'invalid authorization code', 'an unknown code');
$refused{unknown_code}++;

# redirect_uri byte for byte
for my $other ("$cb/", "${cb}?x=1", 'http://localhost:' . $t->port
               . '/sf_oauth/callback', uc($cb) =~ s/^HTTP/http/r) {
    ($f, $verifier) = get_code();
    refused($t->code_exchange(code => $f->{code}, redirect_uri => $other,
                              code_verifier => $verifier),
            400, 'redirect_uri_mismatch',
            'redirect_uri must match configuration',
            "redirect_uri $other");
    $refused{redirect_uri}++;
    refused($t->code_exchange(code => $f->{code}, redirect_uri => $cb,
                              code_verifier => $verifier),
            400, 'invalid_grant', 'expired authorization code',
            'that code afterwards: spent');
    $refused{reused}++;
}
($f, $verifier) = get_code();
refused($t->code_exchange(code => $f->{code}, code_verifier => $verifier),
        400, 'redirect_uri_mismatch', undef, 'no redirect_uri');
$refused{redirect_uri}++;

# PKCE
($f, $verifier) = get_code();
my ($other_verifier) = SfTest::pkce();
refused($t->code_exchange(code => $f->{code}, redirect_uri => $cb,
                          code_verifier => $other_verifier),
        400, 'invalid_request', 'invalid code verifier', 'a wrong verifier');
$refused{verifier_wrong}++;
($f, $verifier) = get_code();
refused($t->code_exchange(code => $f->{code}, redirect_uri => $cb),
        400, 'invalid_grant', undef, 'no verifier');
$refused{verifier_missing}++;
($f, $verifier) = get_code();
refused($t->code_exchange(code => $f->{code}, redirect_uri => $cb,
                          code_verifier => $verifier . '=' ),
        400, 'invalid_request', undef, 'the verifier with padding');
$refused{verifier_wrong}++;

# 43 and 128 characters (the limits), a challenge with no method (jsforce)
for my $v ('a' x 43, substr(join('', ('A'..'Z', 'a'..'z', 0..9,
                                          qw(- . _ ~)) x 2), 0, 128)) {
    my (undef, $ch) = SfTest::pkce($v);
    ($f) = get_code(code_challenge => $ch, code_challenge_method => undef);
    $r = $t->code_exchange(code => $f->{code}, redirect_uri => $cb,
                           code_verifier => $v);
    is($r->{status}, 200, 'a verifier of ' . length($v)
                          . ' characters, no method');
}
my (undef, $short_ch) = SfTest::pkce('a' x 42);
($f) = get_code(code_challenge => $short_ch);
refused($t->code_exchange(code => $f->{code}, redirect_uri => $cb,
                          code_verifier => 'a' x 42),
        400, 'invalid_request', undef, 'a verifier of 42 characters');
$refused{verifier_wrong}++;

# no challenge: no verifier needed
($f) = get_code(code_challenge => undef, code_challenge_method => undef);
$r = $t->code_exchange(code => $f->{code}, redirect_uri => $cb);
is($r->{status}, 200, 'no challenge at authorize: no verifier needed');

# 15 minutes
($f, $verifier) = get_code();
$t->mock('age_codes', 'seconds=840');
$r = $t->code_exchange(code => $f->{code}, redirect_uri => $cb,
                       code_verifier => $verifier);
is($r->{status}, 200, 'a code 14 minutes old works');
($f, $verifier) = get_code();
$t->mock('age_codes', 'seconds=900');
refused($t->code_exchange(code => $f->{code}, redirect_uri => $cb,
                          code_verifier => $verifier),
        400, 'invalid_grant', 'expired authorization code',
        'a code 15 minutes old');
$refused{expired}++;

# an app that does not require the secret
$t->mock('code_secret', 'required=0');
($f, $verifier) = get_code();
$r = $t->code_exchange(code => $f->{code}, redirect_uri => $cb,
                       code_verifier => $verifier, client_secret => undef);
is($r->{status}, 200, 'secret not required: none needed');
($f, $verifier) = get_code();
refused($t->code_exchange(code => $f->{code}, redirect_uri => $cb,
                          code_verifier => $verifier, client_secret => 'no'),
        400, 'invalid_client', undef, 'secret not required: a wrong one');
$refused{client_secret}++;
$t->mock('code_secret', 'required=1');

# no refresh_token in the scope: no refresh token
($f, $verifier) = get_code(scope => 'api');
$r = $t->code_exchange(code => $f->{code}, redirect_uri => $cb,
                       code_verifier => $verifier);
is($r->{status}, 200, 'scope api: 200');
ok(!exists $r->{json}{refresh_token}, 'scope api: no refresh token');
is($r->{json}{scope}, 'api', 'scope api: says so');
($f, $verifier) = get_code(scope => 'api offline_access');
$r = $t->code_exchange(code => $f->{code}, redirect_uri => $cb,
                       code_verifier => $verifier);
ok($r->{json}{refresh_token}, 'scope offline_access: a refresh token');

# -- the exchange's own knobs: down, refuse, slow ---------------------------------

($f, $verifier) = get_code();
$t->mock('exchange_mode', 'mode=down');
$r = $t->code_exchange(code => $f->{code}, redirect_uri => $cb,
                       code_verifier => $verifier);
is($r->{status}, 503, 'exchange down: 503');
like($r->{headers}{'content-type'}, qr{^text/html}, 'exchange down: HTML');
$refused{down}++;
is($refresh->($SfTest::REFRESH_TOKEN)->{status}, 200,
   'exchange down: the refresh grant still works');
$t->mock('exchange_mode', 'mode=refuse');
refused($t->code_exchange(code => $f->{code}, redirect_uri => $cb,
                          code_verifier => $verifier),
        400, 'invalid_grant', 'expired authorization code',
        'exchange refused');
$refused{refuse}++;
$t->mock('exchange_mode', 'mode=slow&seconds=1.5');
$t0 = time;
$r = $t->code_exchange(code => $f->{code}, redirect_uri => $cb,
                       code_verifier => $verifier);
is($r->{status}, 200, 'exchange slow: then 200 (down and refuse spent '
                      . 'no code)');
ok(time - $t0 >= 1.4, 'exchange slow: 1.5 s');
$t->mock('exchange_mode', 'mode=normal');
eval { $t->mock('exchange_mode', 'mode=bogus') };
like($@, qr/400/, 'an unknown exchange mode: 400');

# -- Deny ------------------------------------------------------------------------

($url) = authorize_url(state => 'deny-1');
$f = $t->authorize_flow(url => $url, deny => 1);
is(SfTest::step($f, 'consent')->{status}, 302, 'Deny: a 302');
like($f->{redirect}, qr{^\Q$cb\E\?error=access_denied&}, 'Deny: to redirect_uri');
is($f->{error}, 'access_denied', 'Deny: error=access_denied');
is($f->{error_description}, 'end-user denied authorization',
   'Deny: its description');
is($f->{state}, 'deny-1', 'Deny: the state');
is($f->{code}, undef, 'Deny: no code');
$t->mock('deny_error', 'error=access-denied');
$f = $t->authorize_flow(url => $url, deny => 1);
is($f->{error}, 'access-denied', 'Deny: the other spelling on demand');
$t->mock('deny_error', 'error=access_denied');

# -- another org's user ----------------------------------------------------------

($f, $verifier) = get_code(user => 'other@globex');
like(SfTest::step($f, 'login')->{content}, qr/other\@globex/,
     'other@globex: the consent names them');
$r = $t->code_exchange(code => $f->{code}, redirect_uri => $cb,
                       code_verifier => $verifier);
my $tok_b = $r->{json} || {};
is($tok_b->{id}, "$mock/id/$ORG_B/005000000000002",
   'other@globex: id names org B and their user');
$r = $api->get($tok_b->{id}, { headers =>
                   { Authorization => "Bearer $tok_b->{access_token}" } });
is($r->{status}, 200, 'other@globex: identity 200');
is(eval { decode_json($r->{content})->{organization_id} }, $ORG_B,
   'other@globex: identity says org B');
is(eval { decode_json($r->{content})->{username} }, 'other@globex',
   'other@globex: identity says who');
$r = $api->get("$mock/id/00D5g000004TmoK/005000000000002", { headers =>
                   { Authorization => "Bearer $tok_b->{access_token}" } });
is($r->{status}, 403, 'other@globex: not in org A\'s identity');
$r = $refresh->($tok_b->{refresh_token});
is($r->{json}{id}, $tok_b->{id}, 'other@globex: the refresh grant names them');
$r = $refresh->($SfTest::REFRESH_TOKEN);
is($r->{json}{id}, "$mock/id/00D5g000004TmoK/005000000000001",
   'the configured refresh token: still the default user');

# -- the authorize endpoint's refusals ---------------------------------------------

for my $case ([ 'an unknown client_id', client_id => '3MVG9nobody' ],
              [ 'no client_id', client_id => undef ]) {
    my ($name, %q) = @$case;
    ($url) = authorize_url(%q);
    $r = plain('GET', $url);
    is($r->{status}, 400, "$name: 400");
    ok(!$r->{headers}{location}, "$name: no redirect");
    like($r->{content}, qr/invalid_client_id/, "$name: says invalid_client_id");
    like($r->{headers}{'content-type'}, qr{^text/html}, "$name: a page");
}
($url) = authorize_url(redirect_uri => undef);
$r = plain('GET', $url);
is($r->{status}, 400, 'no redirect_uri: 400');
ok(!$r->{headers}{location}, 'no redirect_uri: no redirect');

my $redirect = sub {
    my ($name, $to, $error, %q) = @_;
    ($url) = authorize_url(state => 'x y', %q);
    $r = plain('GET', $url);
    is($r->{status}, 302, "$name: 302");
    my $loc = $r->{headers}{location} // '';
    like($loc, qr{^\Q$to\E[?&]}, "$name: to the redirect_uri");
    my $lq = SfTest::parse_query($loc);
    is($lq->{error}, $error, "$name: error=$error");
    is($lq->{state}, 'x y', "$name: the state");
    ok(!exists $lq->{code}, "$name: no code");
};
my $elsewhere = 'http://127.0.0.1:' . $t->port . '/elsewhere';
$redirect->('an unregistered redirect_uri', $elsewhere,
            'redirect_uri_mismatch', redirect_uri => $elsewhere);
$redirect->('response_type token', $cb, 'unsupported_response_type',
            response_type => 'token');
$redirect->('code_challenge_method plain', $cb, 'invalid_request',
            code_challenge_method => 'plain');
$redirect->('a short code_challenge', $cb, 'invalid_request',
            code_challenge => 'abc');
for my $bad ('http://example.com/sf_oauth/callback',
             'http://127.0.0.1:1/callback?x=1',
             'http://evil@127.0.0.1:1/callback') {
    $redirect->("default rule: $bad", $bad, 'redirect_uri_mismatch',
                redirect_uri => $bad);
}

# registered callbacks, exactly
my $reg = $t->mock('callbacks', $cb);
is_deeply($reg->{callbacks}, [$cb], 'callbacks: a bare URL registers it');
my $cb2 = 'http://127.0.0.1:' . ($t->port + 1) . '/sf_oauth/callback';
$redirect->('callbacks: another port', $cb2, 'redirect_uri_mismatch',
            redirect_uri => $cb2);
($f, $verifier) = get_code();
is(SfTest::step($f, 'authorize')->{status}, 200,
   'callbacks: the registered one gets the login page');
$t->mock('callbacks', 'url=' . SfTest::form_encode([['u', $cb2]])
                     =~ s/^u=//r . '&url=https://proxy.example/cb');
($f) = get_code(redirect_uri => 'https://proxy.example/cb');
ok($f->{code}, 'callbacks: a registered https URL of another host');
$redirect->('callbacks: no longer the first', $cb, 'redirect_uri_mismatch');
$t->mock('callbacks');
($f) = get_code();
ok($f->{code}, 'callbacks: no url, the default rule again');

# -- revoke_refresh -------------------------------------------------------------------

$r = $refresh->($rotated2);
is($r->{status}, 200, 'before revoke_refresh: the code\'s refresh token works');
$t->mock('revoke_refresh');
refused($refresh->($rotated2), 400, 'invalid_grant',
        'expired access/refresh token', 'revoked: the code\'s refresh token');
refused($refresh->($SfTest::REFRESH_TOKEN), 400, 'invalid_grant', undef,
        'revoked: the configured one');
refused($refresh->("$SfTest::REFRESH_TOKEN-never"), 400, 'invalid_grant',
        undef, 'revoked: a "-NAME" one never used');
$r = $api->get("$mock/services/data/v59.0/sobjects",
               { headers => { Authorization => "Bearer $tok->{access_token}" } });
is($r->{status}, 401, 'revoked: access tokens too');
($f, $verifier) = get_code();
$r = $t->code_exchange(code => $f->{code}, redirect_uri => $cb,
                       code_verifier => $verifier);
my $new_rt = $r->{json}{refresh_token};
is($refresh->($new_rt)->{status}, 200, 'after revoke: a new connection works');
refused($refresh->($rotated2), 400, 'invalid_grant', undef,
        'the revoked one presented again');
is($refresh->($new_rt)->{status}, 200,
   'and that revoked nothing more (not a rotated-out reuse)');
is($refresh->($rotated)->{status}, 400,
   'a rotated-out code refresh token: refused');
is($refresh->($new_rt)->{status}, 400,
   'and its reuse revoked everything, as Salesforce does');

# -- the stats at the end --------------------------------------------------------------

$stats = $t->stats;
my $az = $stats->{authorize};
is_deeply($az->{exchanges_refused}, \%refused,
          'stats: every refusal counted by reason')
    or diag(explain($az->{exchanges_refused}));
my $ok = grep { ($_->{result} // '') eq 'ok' } @{ $stats->{exchange_log} };
is($az->{exchanges_ok}, $ok, "stats: $ok exchanges ok");
is($az->{codes_issued}, scalar @{ $stats->{issued_codes} },
   'stats: codes_issued');
is($az->{consents}, $az->{codes_issued}, 'stats: one code a consent');
is($az->{denials}, 2, 'stats: 2 denials');
is($az->{logins}, $az->{consents} + $az->{denials}, 'stats: logins');
is($az->{login_failures}, 2, 'stats: 2 login failures');
ok($az->{requests} >= $az->{logins} + 10, 'stats: the authorize requests');
is(scalar @{ $stats->{authorize_log} }, $az->{requests},
   'stats: one authorize_log entry a request');
ok(scalar(@{ $stats->{code_verifiers} }) > 10, 'stats: the verifiers');

$t->mock('reset');
$stats = $t->stats;
is($stats->{authorize}{requests}, 0, 'reset: the counters');
is_deeply($stats->{issued_codes}, [], 'reset: the codes');

# -- SfTest's connect_flow, against a stand-in console -----------------------------
#
# t/lib/fake_console.py speaks the module's console contract (Connect
# forms, connect, callback, confirm): it tests the client here, not the
# module (t/54 and t/55 drive the module with it).

$t->mock('reset');
my $console = $t->start_fake_console('crm', 'sales');
my $fstate = sub {
    decode_json(HTTP::Tiny->new->get($console . '__state')->{content});
};

$f = $t->connect_flow(console => $console, credential => 'crm');
is($f->{flow_error}, undef, 'connect_flow: every step as a browser expects')
    or diag($f->{flow_error});
is_deeply([map { $_->{name} } @{ $f->{steps} }],
          [qw(console connect authorize login consent callback)],
          'connect_flow: console, connect, authorize, login, consent, '
          . 'callback');
is($f->{status}, 200, 'connect_flow: the callback\'s page');
like(SfTest::step($f, 'callback')->{content}, qr/connected as 00D5g000004TmoK/,
     'connect_flow: connected as admin@acme\'s org');
my $post = SfTest::step($f, 'connect');
is($post->{request_headers}{Origin}, $console =~ s{/sf_oauth/$}{}r,
   'connect_flow: the POST\'s Origin is the console\'s');
is($post->{request_headers}{'Sec-Fetch-Site'}, 'same-origin',
   'connect_flow: Sec-Fetch-Site: same-origin');
like($post->{request_body}, qr/(^|&)credential=crm(&|$)/,
     'connect_flow: the form\'s credential');
like($post->{request_body}, qr/(^|&)form=[0-9a-f]{64}(&|$)/,
     'connect_flow: the form\'s token');
is($post->{status}, 303, 'connect_flow: the 303');
is($f->{authorize_query}{response_type}, 'code', 'connect_flow: authorize URL');
is($f->{state}, $f->{authorize_query}{state}, 'connect_flow: its state');
is_deeply($f->{cookies}, ['sf_oauth_connect'], 'connect_flow: the cookie set');
my ($jc) = $f->{jar}->cookies;
ok($jc->{httponly} && $jc->{samesite} eq 'Lax' && $jc->{path} eq '/sf_oauth/',
   'connect_flow: the jar keeps its attributes');
like(SfTest::step($f, 'callback')->{request_headers}{Accept}, qr/html/,
     'connect_flow: a browser\'s Accept');
is($fstate->()->{creds}{crm}{connections}, 1, 'the console stored it');

$f = $t->connect_flow(console => $console, credential => 'crm',
                      origin => 'null');
is($f->{status}, 200, 'connect_flow: Origin null (Chromium, no-referrer)');

$f = $t->connect_flow(console => $console, credential => 'crm',
                      drop_cookie => 1);
is($f->{status}, 403, 'drop_cookie: the callback refused');
ok(!$f->{jar}->cookie_header($f->{callback_url}), 'drop_cookie: none sent');

$f = $t->connect_flow(console => $console, credential => 'crm', replay => 1);
is(SfTest::step($f, 'callback')->{status}, 200, 'replay: the first is fine');
is($f->{status}, 400, 'replay: the state again, refused');

$f = $t->connect_flow(console => $console, credential => 'crm',
                      cross_site => 1);
is($f->{error_step}, 'connect', 'cross_site: stops at the connect');
is($f->{status}, 403, 'cross_site: 403');
is(SfTest::step($f, 'connect')->{request_headers}{'Sec-Fetch-Site'},
   'cross-site', 'cross_site: Sec-Fetch-Site: cross-site');

$f = $t->connect_flow(console => $console, credential => 'crm',
                      form => { form => 'forged' });
is($f->{status}, 403, 'form: a forged form token refused');

$f = $t->connect_flow(console => $console, credential => 'nope');
like($f->{flow_error}, qr/no Connect form for "nope"/,
     'an unknown credential: no Connect form');

$f = $t->connect_flow(console => $console, credential => 'crm', deny => 1);
is($f->{status}, 400, 'deny: the callback says so');
like(SfTest::step($f, 'callback')->{url}, qr/error=access_denied/,
     'deny: the callback had error=access_denied');

# another credential's state: two flows, the second's callback with the
# first's state (and the second browser's cookie)
my $f1 = $t->connect_flow(console => $console, credential => 'sales',
                          stop_before => 'callback');
ok($f1->{callback_url} && !SfTest::step($f1, 'callback'),
   'stop_before: no callback yet');
$f = $t->connect_flow(console => $console, credential => 'crm',
                      state => $f1->{state});
like(SfTest::step($f, 'callback')->{url},
     qr/state=\Q@{[ SfTest::form_encode([[x => $f1->{state}]]) =~ s!^x=!!r ]}\E/,
     'state: the callback carries the other state');
is($f->{status}, 403, 'another flow\'s state: refused (not its cookie)');

# another user: the confirm
$f = $t->connect_flow(console => $console, credential => 'crm',
                      user => 'other@globex');
is($f->{status}, 200, 'other@globex: a page');
ok((grep { $_->{action} =~ /confirm$/ } @{ $f->{forms} }),
   'other@globex: it has a confirm form');
like($fstate->()->{creds}{crm}{user}, qr/^00D5g000004TmoK/,
     'other@globex: not stored before the confirm');
$f = $t->connect_flow(console => $console, credential => 'crm',
                      user => 'other@globex', confirm => 1);
is($f->{status}, 200, 'confirm: posted');
like($fstate->()->{creds}{crm}{user}, qr/^$ORG_B/, 'confirm: org B stored');
is(SfTest::step($f, 'confirm')->{request_headers}{'Sec-Fetch-Site'},
   'same-origin', 'confirm: same-origin headers');

# the cookie jar: paths, hosts, deletion, Secure
my $jar = SfTest::CookieJar->new;
$jar->add('http://h:1/a/b', 'x=1; Path=/a/; HttpOnly');
$jar->add('http://h:1/a/b', 'y=2');
$jar->add('https://h/a/', 's=3; Secure');
is($jar->cookie_header('http://h:2/a/c'), 'x=1; y=2',
   'jar: by host and path, not port; Secure only over https');
is($jar->cookie_header('https://h/a/'), 'x=1; y=2; s=3', 'jar: https');
is($jar->cookie_header('http://h/ab'), '', 'jar: /a/ is no prefix of /ab');
is($jar->cookie_header('http://other/a/'), '', 'jar: another host');
$jar->add('http://h/a/b', 'x=; Path=/a/; Max-Age=0');
is($jar->cookie_header('http://h/a/'), 'y=2', 'jar: Max-Age=0 deletes');

$t->finish;
done_testing;
