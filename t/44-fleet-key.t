#!/usr/bin/perl

# One node of a fleet with another key= than the others (sf_oauth_zone
# ... key= redis=): it cannot read the fleet's record in Redis.  Node A
# gets the fleet's token, and with it the mock in "rotation" mode rotates
# the configured refresh token out; node B has another key file.  B must
# not refresh with its configured refresh token (the mock, like
# Salesforce, would revoke everything, A's token too): it answers 502,
# logs the key mismatch once (fingerprints, never the key), shows it in
# sf_oauth_info, and makes no token request; A goes on answering 200, and
# refreshing.  B's key fixed and B reloaded: B answers 200 with the
# fleet's token, with no token request of its own.  No rotated-out refresh
# token is ever presented.  Then the fleet changes its key, A first: A
# refreshes with the refresh token of the generation it holds, B fails
# closed until it is reloaded with the new key too.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use RedisTest;
use Test::More;

my $S = SfTest::time_scale();

my $OTHER_KEY = ('5e' x 32) . "\n";

my $first = SfTest->new;
$first->start_mock;
$first->mode('rotation');

my $redis = RedisTest->new(dir => $first->dir);
$redis->start;

my %fleet = (redis => $redis, credential => { timeout => '5s' });

# node A: the fleet's key; node B: another
my ($na) = RedisTest::fleet(%fleet, first => $first, n => 1);
my $nb = SfTest->new(mock_of => $first);
RedisTest::configure_node($nb, %fleet, key => $OTHER_KEY);
$nb->start;


sub redis_of { RedisTest::node_redis($_[0]) || {} }


# the key's hex, as in the key files: never in a log
sub no_key_in_logs {
    my ($what) = @_;

    my $logs = $na->error_log . $nb->error_log;
    my $leaks = grep { index($logs, $_) >= 0 }
                map { my $k = $_; chomp $k; ($k, uc $k) }
                $RedisTest::FLEET_KEY, $OTHER_KEY;
    is($leaks, 0, "$what: no key in either node's error log");
}

ok(RedisTest::all_connected(5, $na, $nb),
   'both nodes connected to Redis');

# -- A gets the fleet's token; the configured refresh token is rotated out ---

my $ra = $na->get('/services/data/v59.0/a1');
is($ra->{status}, 200, 'A: 200');
my $token = $ra->{json}{authorization};
like($token // '', qr/^Bearer \S/, 'A: the token went upstream');
is($first->stats->{token_requests}, 1, 'A: one token request');
is(scalar @{ $first->stats->{issued_refresh_tokens} }, 2,
   'the mock rotated the configured refresh token out');
my $gen = redis_of($na)->{fleet_generation} // 0;
ok($gen >= 1, "A: fleet generation $gen");
like($redis->get($redis->key('keyfp')) // '', qr/^[0-9a-f]{8}$/,
     'Redis holds the fingerprint of the key next to the record');

# -- B, with another key, cannot read it ----------------------------------------

my $mark = 0;

ok(RedisTest::wait_for(5, sub { redis_of($nb)->{key_mismatch} }),
   "B's sf_oauth_info: redis.key_mismatch (its periodic read found the "
   . 'record unreadable)')
    or diag(explain(redis_of($nb)));
ok(!redis_of($na)->{key_mismatch}, "A's sf_oauth_info: no key_mismatch");
my ($fa, $fb) = (redis_of($na)->{key_fp} // '', redis_of($nb)->{key_fp} // '');
like($fa, qr/^[0-9a-f]{8}$/, "sf_oauth_info: A's key fingerprint");
like($fb, qr/^[0-9a-f]{8}$/, "sf_oauth_info: B's key fingerprint");
isnt($fa, $fb, 'sf_oauth_info: the fingerprints differ');

my $before = $first->stats->{token_requests};

my $rb = $nb->get('/services/data/v59.0/b1');
is($rb->{status}, 502, 'B: 502, fails closed');
is(($rb->{json} || {})->{error}, 'sf_oauth_token_unavailable',
   'B: the 502 JSON');
like(($rb->{json} || {})->{error_description} // '', qr/another key/,
     'B: the 502 says why: another key');
is($rb->{headers}{'x-sf-oauth-status'}, 'ERROR', 'B: $sf_oauth_status ERROR');

my @s = $nb->parallel(10, '/services/data/v59.0/b2');
is(scalar(grep { $_ == 502 } @s), 10, 'B: 10 concurrent requests: 10 x 502')
    or diag("@s");

# once the backoff is over, B asks the fleet again, and refuses again
ok(RedisTest::wait_for(10, sub { ($nb->cred_info || {})->{retry_in} == 0 }),
   "B: its backoff ends");
is($nb->get('/services/data/v59.0/b3')->{status}, 502,
   'B: asked again after the backoff: 502');

is($first->stats->{token_requests}, $before, 'B made no token request');
RedisTest::no_reuse($first, 'B with another key');

my @lines = $nb->log_lines(qr/\[error\].*another key/, $mark);
is(scalar @lines, 1, 'B: one error line names the key mismatch')
    or diag($nb->error_log);
like($lines[0] // '', qr/key=/, 'the line says what to do: the same key=');
ok(length $fa && index($lines[0] // '', $fa) >= 0,
   "the line names the record key's fingerprint");
ok(length $fb && index($lines[0] // '', $fb) >= 0,
   "the line names B's key fingerprint");
is(scalar($na->log_lines(qr/\[error\]/)), 0, 'A: no error line');

# -- A goes on: 200, and a refresh of its own --------------------------------------

$ra = $na->get('/services/data/v59.0/a2');
is($ra->{status}, 200, 'A: still 200');
is($ra->{json}{authorization}, $token, 'A: with the same token');

$first->mock('revoke');
$ra = $na->get('/services/data/v59.0/a3');
is($ra->{status}, 200, 'A after a revoke: 200');
is($ra->{headers}{'x-sf-oauth-status'}, 'RETRY', 'A refreshed (RETRY)');
$token = $ra->{json}{authorization};
is($first->stats->{token_requests}, $before + 1, 'A: one more token request');
$gen = redis_of($na)->{fleet_generation} // 0;
RedisTest::no_reuse($first, 'A refreshed');

ok(RedisTest::wait_for(10, sub { ($nb->cred_info || {})->{retry_in} == 0 }),
   "B: its backoff ends");
is($nb->get('/services/data/v59.0/b4')->{status}, 502,
   "B: the fleet's newer record is unreadable too: 502");
is(scalar($nb->log_lines(qr/\[error\].*another key/, $mark)), 1,
   'B: still the one error line');
is($first->stats->{token_requests}, $before + 1, 'B: still no token request');
no_key_in_logs('with the mismatch');

# -- B's key fixed, B reloaded ---------------------------------------------------------

RedisTest::write_key($nb, 'state.key');
$mark = $nb->log_mark;
$nb->reload;

ok(RedisTest::wait_for(5, sub {
       my $r = redis_of($nb);
       !$r->{key_mismatch} && ($r->{fleet_generation} // 0) == $gen }),
   "B reloaded with the fleet's key: no key_mismatch, fleet generation $gen")
    or diag(explain(redis_of($nb)));
is(redis_of($nb)->{key_fp}, $fa, "B's key fingerprint is A's");

$rb = $nb->get('/services/data/v59.0/b5');
is($rb->{status}, 200, 'B: 200');
is($rb->{json}{authorization}, $token, "B: with the fleet's token");
is($first->stats->{token_requests}, $before + 1, 'B: no token request');
is(scalar($nb->log_lines(qr/\[error\]/, $mark)), 0,
   'B: no error line after the reload');
ok(scalar($nb->log_lines(qr/\[notice\].*decrypts/, $mark)),
   'B: a notice says the record decrypts again');
RedisTest::no_reuse($first, 'B fixed');

# -- the fleet changes its key: A first, then B ------------------------------------

# A, reloaded with the new key, holds the fleet's generation and its
# refresh token: it refreshes with it, and writes the new token with the
# new key; B, not yet reloaded, cannot read that, and fails closed

RedisTest::write_key($na, 'state.key', $OTHER_KEY);
my $mark_a = $na->log_mark;
$mark = $nb->log_mark;
$na->reload;
is(redis_of($na)->{key_fp}, $fb, "A reloaded with B's old key");

$first->mock('revoke');
$ra = $na->get('/services/data/v59.0/a4');
is($ra->{status}, 200, 'A, new key, after a revoke: 200');
is($ra->{headers}{'x-sf-oauth-status'}, 'RETRY', 'A refreshed (RETRY)');
$token = $ra->{json}{authorization};
is($first->stats->{token_requests}, $before + 2, 'A: one token request');
is(scalar($na->log_lines(qr/\[warn\].*another key.*refreshes with it/,
                         $mark_a)), 1,
   "A: a warn says the record was another key's, and it refreshed with "
   . 'its own refresh token');
$gen = redis_of($na)->{fleet_generation} // 0;
RedisTest::no_reuse($first, 'A with the new key');

ok(RedisTest::wait_for(5, sub { redis_of($nb)->{key_mismatch} }),
   "B, old key: key_mismatch");
$rb = $nb->get('/services/data/v59.0/b6');
is($rb->{status}, 502, "B, old key, its token revoked: 502");
is($first->stats->{token_requests}, $before + 2, 'B: no token request');
is(scalar($nb->log_lines(qr/\[error\].*another key/, $mark)), 1,
   'B: one error line');

RedisTest::write_key($nb, 'state.key', $OTHER_KEY);
$nb->reload;
ok(RedisTest::wait_for(5, sub {
       my $r = redis_of($nb);
       !$r->{key_mismatch} && ($r->{fleet_generation} // 0) == $gen }),
   "B reloaded with the new key: fleet generation $gen");
$rb = $nb->get('/services/data/v59.0/b7');
is($rb->{status}, 200, 'B, new key: 200');
is($rb->{json}{authorization}, $token, "B: with the fleet's token");
is($first->stats->{token_requests}, $before + 2, 'B: no token request');
RedisTest::no_reuse($first, 'the key changed');
no_key_in_logs('at the end');

$nb->finish;
$na->finish;
$redis->finish;

done_testing;
