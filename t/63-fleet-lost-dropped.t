#!/usr/bin/perl

# A write-back that a failover lost, on nodes whose token Salesforce has
# rejected since (issue 22, item 3).  The rotating mock revokes everything
# when a rotated-out refresh token comes again.
#
# Two nodes; Redis's data is saved (generation 1), node A refreshes
# (generation 2, refresh token RT2, both nodes take it), Redis stops, the
# mock revokes, and a request on each node sees its token rejected: the
# token is dropped (redis_down fail: no refresh without Redis).  Redis
# starts again from the snapshot (generation 1: the write-back is lost,
# the run_id is new).  The nodes' records are not valid any more, but
# their refresh token is the newest there is: it must go back into Redis.
# A third node, started then, knows nothing but Redis: had generation 1
# stayed there, its refresh would present RT1, rotated out.
#
# Expected: generation 2 back in Redis; the new node's request 200 with
# one token request, presenting RT2; no reuse.

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

my %fleet = (redis => $redis, first => $first,
             credential => { timeout => (3 * $S) . 's' },
             redis_conf => [ redis_down => 'fail', failover_wait => '0' ]);
my ($a, $b) = RedisTest::fleet(%fleet, n => 2);

ok(RedisTest::all_connected(10, $a, $b), 'connected to Redis');
is($a->get('/services/data/v59.0/warm')->{status}, 200, 'warm');
RedisTest::all_synced(10, $a, $b);

sub gen_in_redis { $redis->get($redis->key('gen')) // '' }

# the new primary's data: a snapshot of now (generation 1)
unlink $redis->dir . '/dump.rdb';
is($redis->cli('SAVE'), 'OK', 'a snapshot of the fleet as it is');
my $old = gen_in_redis();

# node A refreshes, and both nodes take its token: the write the
# failover loses
$first->mock('revoke');
is($a->get('/services/data/v59.0/refresh')->{status}, 200,
   'node A refreshed: 200');
SfTest::wait_event(5, 'the write-back in Redis', sub { gen_in_redis() > $old });
my $newest = gen_in_redis();
RedisTest::all_synced(10, $a, $b);
my $rt = $#{ $first->stats->{issued_refresh_tokens} };

# Redis gone; the token rejected on both nodes: dropped, no refresh
$redis->stop;
$first->mock('revoke');
for my $n ($a, $b) {
    my $r = $n->get('/services/data/v59.0/rejected');
    is($r->{status}, 502, 'node ' . $n->port . ': its token rejected, no '
                          . 'refresh without Redis (redis_down fail): 502');
}
my $requests = $first->token_requests;

my @mark = map { $_->log_mark } $a, $b;
$redis->start;
unlink $redis->dir . '/dump.rdb';

ok(RedisTest::wait_for(10, sub { gen_in_redis() eq $newest }),
   "the lost write-back is written again (generation $newest over $old), "
   . 'though both nodes had their token rejected')
    or diag('generation in Redis: ' . gen_in_redis());
ok((grep { scalar $_->log_lines(qr/\[warn\].*Redis holds an older generation/,
                                shift @mark) } $a, $b),
   'a node says that Redis held an older generation');

# a node that knows nothing but Redis
my $c = SfTest->new(mock_of => $first);
RedisTest::configure_node($c, %fleet, index => 2);
$c->start;
ok(RedisTest::all_connected(10, $c), 'node C connected');
my $r = $c->get('/services/data/v59.0/node-c', timeout => 30 * $S);
is($r->{status}, 200, 'node C: 200');
my $s = $first->stats;
is($first->token_requests - $requests, 1, 'node C: one token request');
is($s->{refresh_log}[-1][0], $rt,
   "node C presented the newest refresh token, the lost write-back's");
RedisTest::no_reuse($first, 'node C');

RedisTest::finish_all($redis, $c, $b, $a);

done_testing;
