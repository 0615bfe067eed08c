#!/usr/bin/perl

# A token that Redis never got, on a node whose next refresh waits for the
# fleet (issue 22, item 3).  The rotating mock revokes everything when a
# rotated-out refresh token comes again.
#
# Node P refreshes under the fleet's lease, and Redis turns replica while
# the token request runs: the write-back is refused (READONLY), and the
# token, with its rotated refresh token RT2, is P's alone.  A revoke: P's
# next refresh waits for a primary.  Redis comes back as a new primary
# (restarted from a snapshot of the generation before: RT1), so every node
# takes no lease for a lease's time to live (the quarantine).  P's other
# worker does not write P's token back while P's refresh waits (a refresh
# of the node runs): the waiting worker must, or the node whose quarantine
# ends first refreshes with RT1, rotated out.
#
# Expected: RT2's generation in Redis well within the quarantine (which
# it ends); then one token request for the revoke, presenting RT2; every
# request 200; no reuse.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use RedisTest;
use Test::More;

my $S = SfTest::time_scale();

my $first = SfTest->new;
$first->start_mock;
$first->mode('rotation');

my $redis = RedisTest->new(dir => $first->dir);
$redis->start;

# a lease's time to live: 3 s and 2 s (the quarantine after a new primary)
my ($p, $q) = RedisTest::fleet(redis => $redis, first => $first, n => 2,
                               credential => { timeout => (3 * $S) . 's' },
                               redis_conf => [ failover_wait => (30 * $S) . 's' ]);

ok(RedisTest::all_connected(10, $p, $q), 'connected to Redis');
is($p->get('/services/data/v59.0/warm')->{status}, 200, 'warm');
RedisTest::all_synced(10, $p, $q);

sub gen_in_redis { $redis->get($redis->key('gen')) // '' }

# the new primary's data: a snapshot of now (RT1's generation)
unlink $redis->dir . '/dump.rdb';
is($redis->cli('SAVE'), 'OK', 'a snapshot of the fleet as it is');
my $old = gen_in_redis();

# P's token request under the lease; Redis turns replica meanwhile
my $tr = $first->token_requests;
$first->mock('delay', 'seconds=' . (1 * $S));
$first->mock('revoke');
my $w1 = RedisTest::bg_get($p, '/services/data/v59.0/refresh');
SfTest::wait_event(10, "P's token request at the mock",
                   sub { $first->token_requests > $tr });
is($redis->cli('REPLICAOF', '127.0.0.1', SfTest::free_port()), 'OK',
   'Redis turns replica while the token request runs');
is($w1->()->{status}, 200, 'P refreshed: 200');
$first->mock('delay', 'seconds=0.05');
my $rt = $#{ $first->stats->{issued_refresh_tokens} };
is(gen_in_redis(), $old, 'the write-back was refused: Redis holds the '
                         . 'generation before');

# a revoke: P's refresh waits for a primary
my $mark = $p->log_mark;
$first->mock('revoke');
my $w2 = RedisTest::bg_get($p, '/services/data/v59.0/waits');
ok($p->wait_log(qr/\[warn\].*waits for it to be back, up to failover_wait/,
                $mark, 10 * $S),
   "P's refresh waits for a primary");
my $requests = $first->token_requests;

# a new primary, with RT1's generation
$redis->restart;
unlink $redis->dir . '/dump.rdb';
ok($p->wait_log(qr/\[warn\].*the primary changed/, $mark, 10 * $S),
   'P says that the primary changed');

ok(RedisTest::wait_for(3, sub { gen_in_redis() > $old }),
   "P's token goes into Redis while its refresh waits in the quarantine "
   . '(generation ' . gen_in_redis() . " over $old)");

# Q's token is dead too
my $w3 = RedisTest::bg_get($q, '/services/data/v59.0/q');
is($w2->()->{status}, 200, "P's request: 200");
is($w3->()->{status}, 200, "Q's request: 200");
my $s = $first->stats;
is($first->token_requests - $requests, 1, 'one token request for the revoke');
is($s->{refresh_log}[-1][0], $rt,
   "it presented P's refresh token, the one Redis never got");
RedisTest::no_reuse($first, 'after the new primary');

RedisTest::finish_all($redis, $q, $p);

done_testing;
