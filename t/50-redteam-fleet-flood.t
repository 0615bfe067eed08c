#!/usr/bin/perl

# A flood on the fleet's pub/sub channel (issue 18 red team): anyone who
# can PUBLISH on <prefix>events (a noisy neighbour on a shared Redis, a
# script gone wrong) sends thousands of small messages naming a configured
# zone and credential.  Each worker must not answer each one with a read
# of the credential (an EVAL): one read is in flight per credential and
# worker at a time, and the messages that come meanwhile make one more
# read after it, so the worker's command queue stays bounded whatever the
# rate.  A real new generation announced during the flood still reaches
# the other node, and the node serves throughout.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use RedisTest;
use IO::Socket::INET;
use POSIX ();
use Test::More;
use Time::HiRes qw(sleep time);

my $S = SfTest::time_scale();
my $N = $ENV{SF_TEST_VALGRIND} ? 2000 : 5000;

# the calls of EVAL that Redis counted since the last CONFIG RESETSTAT
sub evals {
    my ($redis) = @_;

    my $info = $redis->cli('INFO', 'commandstats') // '';
    return $info =~ /^cmdstat_eval:calls=(\d+)/m ? $1 : 0;
}

# N PUBLISHes of MSG on CHANNEL, pipelined on one connection; the sum of
# the receivers Redis counted
sub flood {
    my ($redis, $channel, $msg, $n) = @_;

    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $redis->port,
                                  Proto => 'tcp') or die "redis: $!";
    binmode $s;
    my $cmd = sprintf "*3\r\n\$7\r\nPUBLISH\r\n\$%d\r\n%s\r\n\$%d\r\n%s\r\n",
                      length $channel, $channel, length $msg, $msg;
    my ($got, $receivers, $buf) = (0, 0, '');

    for my $i (1 .. $n) {
        print $s $cmd;
        next if $i % 100 && $i != $n;
        while ($got < $i) {
            my $r = sysread($s, $buf, 65536, length $buf);
            die "redis: $!" unless $r;
            while ($buf =~ s/^:(\d+)\r\n//) {
                $receivers += $1;
                $got++;
            }
        }
    }
    close $s;
    return $receivers;
}

my $first = SfTest->new;
$first->start_mock;
my $redis = RedisTest->new(dir => $first->dir);
$redis->start;
my @n = RedisTest::fleet(redis => $redis, first => $first, n => 2);

ok(RedisTest::all_connected(5, @n),
   'both nodes connected to Redis');
is($n[0]->get('/services/data/v59.0/warm')->{status}, 200, 'warm: 200');
ok(RedisTest::wait_for(3, sub {
       !grep { ((RedisTest::node_redis($_) || {})->{fleet_generation} // 0)
               < 1 } @n }),
   'both nodes at fleet generation 1');

# the subscribers: both workers of both nodes
ok(RedisTest::wait_for(3, sub {
       ($redis->cli('PUBSUB', 'NUMSUB', $redis->events_channel) // '')
       =~ /\n4\z/ }),
   'four workers subscribed to the events channel');

# -- the flood: N messages naming sf:crm ----------------------------------------

$redis->cli('CONFIG', 'RESETSTAT');
my $t0 = time;
my $receivers = flood($redis, $redis->events_channel, 'sf:crm:1', $N);
is($receivers, 4 * $N, "the flood: $N messages, each to the four workers");

# wait until the workers are done with it: over 2 s, no more EVALs than the
# periodic reads (one per worker and second)
my @seen;
my $last = 0;
while (time - $t0 < 60 * $S) {
    $last = evals($redis);
    push @seen, [ time, $last ];
    shift @seen while $seen[0][0] < time - 2;
    last if time - $t0 > 2 && $last - $seen[0][1] <= 12;
    sleep 0.1;
}
my $took = time - $t0;

# the periodic reads of the time it took, with room; a read per message
# would be 4 * N
my $bound = int(4 * ($took + 2)) + $N / 10;
cmp_ok($last, '<', $bound,
       sprintf('the flood: %d EVALs for %d messages to 4 workers in %.1f s '
               . '(one read in flight per credential and worker, not one a '
               . 'message)', $last, 4 * $N, $took));

is($n[0]->get('/services/data/v59.0/after')->{status}, 200,
   'node 1 serves after the flood');

# -- a real generation announced during a flood reaches the other node ----------

{
    my $before = $first->token_requests;
    my $old = (RedisTest::node_redis($n[1]) || {})->{fleet_generation} // 0;
    my $pid = fork() // die "fork: $!";
    if ($pid == 0) {
        flood($redis, $redis->events_channel, 'sf:crm:1', $N);
        POSIX::_exit(0);
    }

    $first->mock('revoke');
    my $r = $n[1]->get('/services/data/v59.0/refresh');
    is($r->{status}, 200, 'during a flood: node 2 refreshes after a revoke');
    my $gen = RedisTest::wait_for(3, sub {
        my $g = (RedisTest::node_redis($n[1]) || {})->{fleet_generation} // 0;
        $g > $old ? $g : 0 });
    ok($gen, "during a flood: node 2 stored generation $gen (was $old)");
    ok(RedisTest::wait_for(3, sub {
           ((RedisTest::node_redis($n[0]) || {})->{fleet_generation} // 0)
           == $gen }),
       "during a flood: node 1 takes node 2's generation $gen");
    waitpid($pid, 0);

    $r = $n[0]->get('/services/data/v59.0/node1');
    is($r->{status}, 200, 'node 1: 200 with the fleet token');
    is($first->token_requests - $before, 1,
       'one token request for the fleet');
}

unlike(join('', map { $_->error_log } @n), qr/\[(alert|emerg|crit)\]/,
       'no alert, emerg or crit in the logs');

$_->finish for reverse @n;
$redis->finish;

done_testing();
