#!/usr/bin/perl

# A change of token_url alone (the login host to the org's My Domain,
# which takes the same refresh token) keeps the credential's record: the
# refresh token Salesforce rotated into it, its access token, its
# generation.  The mock rotates the refresh token at every refresh and
# revokes everything when a rotated-out one is presented again; its token
# endpoint under /mydomain/ shares every token with the plain one.
#
#   - a reload that keeps the zone, one that resizes it, a restart with
#     state=: then a revoke makes one token request, to the new token_url,
#     with the rotated refresh token; no reuse
#   - a fleet of 2 nodes whose token_url changes one node at a time, with
#     a revoke before, between and after: each node takes the records the
#     other wrote with the other token_url, one token request a revoke, no
#     reuse
#   - a change of the configured refresh token (with the token_url) still
#     starts again from the configured refresh token

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use RedisTest;
use Test::More;
use Time::HiRes ();

my $PLAIN = '/services/oauth2/token';
my $MYDOMAIN = '/mydomain/services/oauth2/token';
my $S = SfTest::time_scale();

my $t = SfTest->new;
my $dir = $t->dir;
$t->start_mock;
$t->mode('rotation');

$t->write_file('key', ('c3' x 32) . "\n");

# the standard configuration with token_url at PATH of the mock, in a zone
# of SIZE, maybe with a state file; the other options are credential()'s
sub conf {
    my (%opt) = @_;

    my $path = delete $opt{path} // $PLAIN;
    my $size = delete $opt{size} // '1m';
    my $state = delete $opt{state};
    my $zone = "zone=sf:$size"
               . ($state ? " state=$dir/state/sf.state key=$dir/key" : '');

    $t->simple_conf(%opt, token_url => $t->mock_url . $path,
                    zone_params => $zone);
}

# The live refresh token's index among those the mock issued (0: the
# configured one), and how many token requests it saw.
sub live {
    my $s = $t->stats;
    return (scalar @{ $s->{issued_refresh_tokens} } - 1, $s->{token_requests});
}

# After a revoke: one request gets 200 through one token request, made to
# PATH with the refresh token of index RT (-1: one the mock never issued,
# the configured one of another approval), and the mock revoked nothing.
sub revoke_and_check {
    my ($what, $path, $rt) = @_;

    my (undef, $before) = live();
    $t->mock('revoke');

    my $r = $t->get('/services/data/v59.0/after-revoke');
    is($r->{status}, 200, "$what: 200 after a revoke");

    my $s = $t->stats;
    is($s->{token_requests}, $before + 1, "$what: exactly one token request");
    is($s->{token_paths}[-1], $path, "$what: made to the new token_url");
    is_deeply($s->{refresh_log}[-1] && [ @{ $s->{refresh_log}[-1] }[0, 1] ],
              [ $rt, 'ok' ],
              "$what: it presented the live refresh token ($rt)");
    my @bad = grep { $_->[1] ne 'ok' } @{ $s->{refresh_log} };
    is(scalar @bad, 0, "$what: no rotated-out refresh token ever presented")
        or diag(explain $s->{refresh_log});
    is_deeply($s->{valid_refresh_tokens}, [ $s->{issued_refresh_tokens}[-1] ],
              "$what: the mock revoked nothing");
    is($t->get('/services/data/v59.0/next')->{headers}{'x-sf-oauth-status'},
       'HIT', "$what: the next request is a HIT");
}

# -- a reload that keeps the zone ---------------------------------------------

conf();
$t->start;

is($t->get('/services/data/v59.0/')->{status}, 200, 'a first token');
my ($rt, $n) = live();
is($rt, 1, 'the mock rotated the refresh token');
my $token = $t->get('/services/data/v59.0/')->{json}{authorization};

my $mark = $t->log_mark;
conf(path => $MYDOMAIN);
$t->reload;

ok($t->wait_log(qr/credential "crm" changed its token_url: its refresh token is kept/,
                $mark, 5 * $S),
   'reload: the notice says the refresh token is kept');
unlike($t->error_log_since($mark), qr/its cached token is dropped/,
       'reload: nothing dropped');

my $r = $t->get('/services/data/v59.0/');
is($r->{headers}{'x-sf-oauth-status'}, 'HIT',
   'reload: the access token is kept');
is($r->{json}{authorization}, $token, 'reload: the same access token');
is($t->token_requests, $n, 'reload: no token request');

revoke_and_check('zone kept', $MYDOMAIN, $rt);

# -- a reload that resizes the zone, and back to the login host ---------------

($rt, $n) = live();
$mark = $t->log_mark;
conf(path => $PLAIN, size => '2m');
$t->reload;

ok($t->wait_log(qr/its record was carried over/, $mark, 5 * $S),
   'resize: the record is carried over');
like($t->error_log_since($mark),
     qr/credential "crm" changed its token_url: its refresh token is kept/,
     'resize: the notice says the refresh token is kept');
is($t->get('/services/data/v59.0/')->{headers}{'x-sf-oauth-status'}, 'HIT',
   'resize: the access token is kept');
is($t->token_requests, $n, 'resize: no token request');

revoke_and_check('zone resized', $PLAIN, $rt);

# -- a wrong token_url, then fixed: the backoff ends at once ------------------

# a long backoff, so that only the reload can end it
sub conf_backoff {
    conf(@_);
    $t->edit_conf(sub {
        s/(        client_id )/        backoff 60s 60s;\n$1/
            or die 'no client_id';
    });
}

($rt, $n) = live();
conf_backoff(path => '/nowhere/oauth2/token', size => '2m');
$t->reload;
$t->mock('revoke');

# the mock answers 404 there, and counts it as not found
my $lost = $t->stats->{not_found};
$r = $t->get('/services/data/v59.0/wrong');
is($r->{status}, 502, 'wrong token_url: 502');
is($t->stats->{not_found}, $lost + 1, 'wrong token_url: one token request');
is($t->get('/services/data/v59.0/wrong')->{status}, 502,
   'wrong token_url: 502 again');
is($t->stats->{not_found}, $lost + 1,
   'wrong token_url: in backoff, no token request');
is($t->token_requests, $n, 'wrong token_url: none reached the token endpoint');

$mark = $t->log_mark;
conf_backoff(path => $MYDOMAIN, size => '2m');
$t->reload;
ok($t->wait_log(qr/credential "crm" changed its token_url: its refresh token is kept/,
                $mark, 5 * $S),
   'token_url fixed: the notice');

$r = $t->get('/services/data/v59.0/fixed');
is($r->{status}, 200, 'token_url fixed: 200 at once, the backoff ended');
my $s = $t->stats;
is($s->{token_requests}, $n + 1, 'token_url fixed: one token request');
is($s->{token_paths}[-1], $MYDOMAIN, 'token_url fixed: to the new token_url');
is($s->{refresh_log}[-1][0], $rt,
   'token_url fixed: with the live refresh token');
is_deeply($s->{valid_refresh_tokens}, [ $s->{issued_refresh_tokens}[-1] ],
          'token_url fixed: the mock revoked nothing');

# -- a restart with a state file ----------------------------------------------

# from a new zone and a new chain of refresh tokens
$t->stop;
$t->mock('reset');
$t->mode('rotation');
conf(path => $PLAIN, state => 1);
$t->start;

# a token, rotated: the state file is written once it is stored (renamed
# into place whole: once it is there, it holds the token)
is($t->get('/services/data/v59.0/')->{status}, 200, 'state: a token');
SfTest::wait_event(10, 'the state file is written',
                   sub { -s "$dir/state/sf.state" });
($rt, $n) = live();
is($rt, 1, 'state: the mock rotated the refresh token');

conf(path => $MYDOMAIN, state => 1);
$t->restart;

like($t->error_log,
     qr/credential "crm" changed its token_url since the state file was written: its refresh token is kept/,
     'state: the notice says the refresh token is kept');
like($t->error_log, qr/restored 1 credentials from the state file/,
     'state: the record is restored');
is($t->get('/services/data/v59.0/')->{headers}{'x-sf-oauth-status'}, 'HIT',
   'state: the access token is kept');
is($t->token_requests, $n, 'state: no token request');

revoke_and_check('state file', $MYDOMAIN, $rt);

# -- a state file of an earlier version, without rt_fp ------------------------

# The state file's JSON in clear (AES-256-GCM, the magic as associated
# data: see ngx_http_sf_oauth_codec.c), with Python's cryptography: the
# keys of its first record, as JSON; with STRIP, the file is written again
# without "rt_fp" (after the keys are read), as versions before it wrote it.
sub state_json {
    my ($strip) = @_;

    my $py = <<'PY';
import json, os, sys
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
key = bytes.fromhex(open(sys.argv[1]).read().strip())
path, strip = sys.argv[2], sys.argv[3] == "1"
raw = open(path, "rb").read()
magic, nonce, tag, ct = raw[:8], raw[8:20], raw[20:36], raw[36:]
doc = json.loads(AESGCM(key).decrypt(nonce, ct + tag, magic))
print(json.dumps(sorted(doc["credentials"][0].keys())))
if strip:
    for c in doc["credentials"]:
        c.pop("rt_fp", None)
    nonce = os.urandom(12)
    out = AESGCM(key).encrypt(nonce, json.dumps(doc).encode(), magic)
    open(path, "wb").write(magic + nonce + out[-16:] + out[:-16])
PY
    my $flag = $strip ? 1 : 0;
    return `python3 -c '$py' $dir/key $dir/state/sf.state $flag`;
}

my $mtime;

SKIP: {
    skip 'no python3 cryptography to rewrite the state file', 9
        if system('python3', '-c',
                  'import cryptography.hazmat.primitives.ciphers.aead') != 0;

    # the state file holds the token of this refresh
    $mtime = (Time::HiRes::stat("$dir/state/sf.state"))[9];
    $t->mock('revoke');
    is($t->get('/services/data/v59.0/')->{status}, 200, 'old state: a token');
    SfTest::wait_event(10, 'the state file is written again', sub {
        (Time::HiRes::stat("$dir/state/sf.state"))[9] != $mtime
    });
    $t->stop;

    like(state_json(0), qr/"conf_fp".*"rt_fp"/,
         'the state file carries conf_fp and rt_fp');
    state_json(1);
    unlike(state_json(0), qr/"rt_fp"/,
           'old state: rt_fp taken out of the file');

    # the configuration unchanged: restored, by conf_fp
    ($rt, $n) = live();
    $t->restart;
    like($t->error_log, qr/restored 1 credentials from the state file/,
         'old state, same configuration: restored');
    is($t->get('/services/data/v59.0/')->{headers}{'x-sf-oauth-status'},
       'HIT', 'old state, same configuration: HIT');
    is($t->token_requests, $n,
       'old state, same configuration: no token request');

    # token_url changed: a record without rt_fp is judged by conf_fp alone
    # (the documented limit: change token_url once the file was written
    # again)
    $t->stop;
    conf(path => $PLAIN, state => 1);
    $t->restart;
    like($t->error_log,
         qr/the configuration changed since the state file was written/,
         'old state, token_url changed: judged by conf_fp alone');

    # back, before any request presents the configured (rotated-out) one
    conf(path => $MYDOMAIN, state => 1);
    $t->restart;
    like($t->error_log, qr/restored 1 credentials from the state file/,
         'old state, back: restored');
    is($t->get('/services/data/v59.0/')->{headers}{'x-sf-oauth-status'},
       'HIT', 'old state, back: HIT');
}

# -- the negative: the configured refresh token changed -----------------------

$mark = $t->log_mark;
conf(path => $PLAIN, state => 1,
     refresh_token => "$SfTest::REFRESH_TOKEN-other");
$t->reload;

ok($t->wait_log(qr/credential "crm" changed its token_url, client_id or refresh token: its cached token is dropped/,
                $mark, 5 * $S),
   'refresh token changed: the record is dropped');

($rt, $n) = live();
$mtime = (Time::HiRes::stat("$dir/state/sf.state"))[9];
$r = $t->get('/services/data/v59.0/');
is($r->{status}, 200, 'refresh token changed: 200');
SfTest::wait_event(10, 'the state file is written again', sub {
    (Time::HiRes::stat("$dir/state/sf.state"))[9] != $mtime
});
is($r->{headers}{'x-sf-oauth-status'}, 'WAIT',
   'refresh token changed: the old access token is not used');
$s = $t->stats;
is($s->{token_requests}, $n + 1, 'refresh token changed: one token request');
is($s->{refresh_log}[-1][0], -1,
   'refresh token changed: the configured refresh token is presented');
is($s->{refresh_log}[-1][1], 'ok', 'refresh token changed: and taken');

$t->stop;

# the same after a restart: the state file holds the record of the old
# configured refresh token; a change of client_id drops it as well
conf(path => $MYDOMAIN, state => 1);
$t->restart;
like($t->error_log,
     qr/the configuration changed since the state file was written: the configured refresh token is used/,
     'state, refresh token changed: the configured refresh token is used');

$t->finish;

# -- a fleet of two nodes, token_url changed one node at a time ---------------

my $first = SfTest->new;
$first->start_mock;
$first->mode('rotation');

my $redis = RedisTest->new(dir => $first->dir);
$redis->start;

my @n = RedisTest::fleet(redis => $redis, first => $first, n => 2);
my ($A, $B) = @n;
ok(RedisTest::all_connected(5, @n), 'fleet: both nodes connected');

# node NODE's token_url at PATH, reloaded
sub fleet_url {
    my ($node, $path) = @_;

    my $mark = $node->log_mark;
    $node->edit_conf(sub {
        s{token_url http://127\.0\.0\.1:\d+\K/\S*?(?=;)}{$path}
            or die 'no token_url';
    });
    $node->reload;
    ok($node->wait_log(qr/changed its token_url: its refresh token is kept/,
                       $mark, 5 * $S),
       'fleet: the notice on the reloaded node');
    ok(RedisTest::all_connected(10, $node), 'fleet: reconnected');
}

# a revoke, then REFRESHER's request (it makes the one token request, to
# PATH), then the other's (which takes the fleet's record): both 200, one
# token request, no reuse
sub fleet_revoke {
    my ($what, $refresher, $other, $path) = @_;

    my $before = $first->token_requests;
    $first->mock('revoke');

    is($refresher->get('/services/data/v59.0/r')->{status}, 200,
       "$what: the refreshing node: 200");
    RedisTest::all_synced(10, @n);
    is($other->get('/services/data/v59.0/o')->{status}, 200,
       "$what: the other node: 200");

    my $s = $first->stats;
    is($s->{token_requests}, $before + 1, "$what: one token request");
    is($s->{token_paths}[-1], $path,
       "$what: to the refreshing node's token_url");
    RedisTest::no_reuse($first, $what);
}

is($A->get('/services/data/v59.0/')->{status}, 200, 'fleet: a first token');
RedisTest::all_synced(10, @n);
is($B->get('/services/data/v59.0/')->{status}, 200, 'fleet: B takes it');
is($first->token_requests, 1, 'fleet: one token request');

fleet_url($A, $MYDOMAIN);

# B (the old token_url) refreshes: A must take B's record
fleet_revoke('fleet, A changed, B refreshes', $B, $A, $PLAIN);

# A (the new token_url) refreshes: B must take A's record
fleet_revoke('fleet, A changed, A refreshes', $A, $B, $MYDOMAIN);

fleet_url($B, $MYDOMAIN);

fleet_revoke('fleet, both changed, B refreshes', $B, $A, $MYDOMAIN);
fleet_revoke('fleet, both changed, A refreshes', $A, $B, $MYDOMAIN);

RedisTest::finish_all($redis, @n);

done_testing;
