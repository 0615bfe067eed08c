#!/usr/bin/perl

# A worker that waits for the fleet keeps its lease in the zone.  Redis
# is stopped (a failover under way) when a revoke needs a refresh: the
# worker that takes the node's lease waits for Redis, up to failover_wait
# (6 s here), longer than the lease's first deadline, a token request's
# time (timeout 1 s and 2 s).  Requests that come to the node's other
# worker meanwhile must wait for that refresh, not take it over (before
# the fix they did: "taking over the token refresh of process N", and the
# two workers asked for a token with the same refresh token).  Redis
# comes back within the requests' own wait (timeout and 4 s): one token
# request, every request 200, no reuse.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use RedisTest;
use Test::More;
use Time::HiRes qw(sleep time);

my $S = SfTest::time_scale();

my $t = SfTest->new;
$t->start_mock;
$t->mode('rotation');

my $redis = RedisTest->new(dir => $t->dir);
$redis->start;

my ($n) = RedisTest::fleet(redis => $redis, first => $t, n => 1,
                           credential => { timeout => (1 * $S) . 's' },
                           redis_conf => sub {
                               [ failover_wait => (6 * $S) . 's' ] });

ok(RedisTest::all_connected(10, $n), 'connected to Redis');
is($n->get('/services/data/v59.0/warm')->{status}, 200, 'warm');
RedisTest::all_synced(10, $n);

my $before = $t->token_requests;
my $mark = $n->log_mark;

$t->mock('revoke');
$redis->stop;

my $start = time;
my @wait = (RedisTest::bg_get($n, '/services/data/v59.0/first'));

ok($n->wait_log(qr/\[warn\].*waits for it to be back, up to failover_wait/,
                $mark, 10 * $S),
   'the refresh waits for Redis');

# past the lease's first deadline (3 s), requests on new connections, to
# either worker, each waiting for the refresh
sleep(3.3 * $S - (time - $start)) if time - $start < 3.3 * $S;
push @wait, map { RedisTest::bg_get($n, "/services/data/v59.0/later$_") } 1 .. 10;
sleep(0.3 * $S);

$redis->start;

# the first request's own wait (timeout and 4 s) is not scaled: under
# valgrind it may end before Redis is back (a 502, as designed)
my @status = map { $_->()->{status} } @wait;
my $first = shift @status;
is($first, 200, 'the first request: 200 once Redis is back')
    if $S == 1;
is(scalar(grep { $_ != 200 } @status), 0,
   'every later request 200 once Redis is back')
    or diag(join ' ', $first, @status);
is(scalar($n->log_lines(qr/taking over the token refresh/, $mark)), 0,
   "the other worker did not take the waiting worker's lease over");
is($t->token_requests - $before, 1, 'one token request');
RedisTest::no_reuse($t, 'after the wait');

RedisTest::finish_all($redis, $n);
done_testing;
