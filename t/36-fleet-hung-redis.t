#!/usr/bin/perl

# redis-server SIGSTOPped (hung: the TCP connection stays up, nothing is
# answered) while a refresh is needed.  The reply timeout counts from the
# oldest command not answered: the periodic read every second must not
# push it back, or a hung Redis with a timeout above 1 s is never noticed.
#
# For redis "timeout" 1s (default) and 3s, redis_down local and fail:
#   - a request that needs a refresh is answered within the credential's
#     wait deadline (timeout + 4 s, + timeout + 2 s in a fleet), with
#     redis_down local a 200 (the node refreshes alone), with fail a 502
#   - after SIGCONT: no lease left in Redis for long, coordination resumes
#     (a revoke costs one token request for the fleet), no alert

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use RedisTest;
use Test::More;
use Time::HiRes qw(sleep time);

my $S = SfTest::time_scale();

sub run_case {
    my ($what, $rtimeout, $down) = @_;

    my $t = SfTest->new;
    $t->start_mock;
    my $redis = RedisTest->new(dir => $t->dir);
    $redis->start;

    # failover_wait 0: redis_down once the hung Redis is noticed, not
    # after the wait for a failover (t/58-fleet-failover.t has the wait)
    my @rc = (($rtimeout ? (timeout => $rtimeout) : ()),
              ($down ? (redis_down => $down) : ()),
              failover_wait => '0');
    my @n = RedisTest::fleet(redis => $redis, first => $t, n => 2,
                             redis_conf => \@rc,
                             credential => { timeout => '3s' });
    RedisTest::all_connected(5, @n);

    is($n[0]->get('/services/data/v59.0/warm')->{status}, 200, "$what: warm 200");
    RedisTest::wait_for(2, sub {
        ((RedisTest::node_redis($n[1]) || {})->{fleet_generation} // 0) >= 1 });

    kill 'STOP', $redis->pid;
    SfTest::wait_event(5, 'redis-server stopped by SIGSTOP', sub {
        open my $fh, '<', '/proc/' . $redis->pid . '/stat' or return 0;
        return (split ' ', scalar <$fh>)[2] eq 'T';
    });
    $t->mock('revoke');

    my $mark = $n[0]->log_mark;
    my $t0 = time;
    my $r = $n[0]->get('/services/data/v59.0/hung', timeout => 40);
    my $took = time - $t0;
    # credential timeout 3 s: the documented deadline is 3 + 4 + (3 + 2) = 12 s
    ok($took < 12.5 * $S, sprintf("$what: answered within the wait deadline "
                                  . "(%.1f s, status %d)", $took, $r->{status}));
    # Redis is unreachable for a reply after the redis timeout: the node
    # should fall back (local: refresh alone; fail: 502) well before the
    # request's own deadline
    my $rt = ($rtimeout // '1s') =~ /(\d+)/ ? $1 : 1;
    ok($took < ($rt + 2) * $S, sprintf("$what: the hung Redis is noticed within "
                                       . "its timeout (%d s) + 2 s: took %.1f s",
                                       $rt, $took))
        or diag(join "\n", $n[0]->log_lines(qr/redis|Redis|timed out|not coordinated/, $mark));
    if (($down // 'local') eq 'fail') {
        is($r->{status}, 502, "$what: redis_down fail, Redis hung: 502");
    } else {
        is($r->{status}, 200, "$what: redis_down local, Redis hung: 200 (refreshed alone)")
            or diag(substr($r->{content} // '', 0, 300));
    }

    # a second request to the same node meanwhile
    $t0 = time;
    my $r2 = $n[0]->get('/services/data/v59.0/hung2', timeout => 40);
    $took = time - $t0;
    ok($took < 12.5 * $S, sprintf("$what: second request answered in %.1f s "
                                  . "(status %d)", $took, $r2->{status}));

    kill 'CONT', $redis->pid;

    # within its ttl (3 s + 2 s) any lease of this episode is gone
    my $nolease = RedisTest::wait_for(8, sub {
        ($redis->get($redis->key('lease')) // 'x') eq '' });
    ok($nolease, "$what: after SIGCONT no lease in Redis within 8 s")
        or diag('lease: ' . ($redis->get($redis->key('lease')) // 'undef'));

    my $conn = RedisTest::all_connected(8, @n);
    ok($conn, "$what: every node connected again");

    # coordination resumes: wait until the dirty token is written back
    RedisTest::all_synced(10, @n);
    my $before = $t->token_requests;
    $t->mock('revoke');
    my @s = $t->parallel(20, '/services/data/v59.0/after',
                         ports => [ map { $_->port } @n ], timeout => 30 * $S);
    is(scalar(grep { $_ == 200 } @s), 20, "$what: after SIGCONT, 20 x 200")
        or diag(join ' ', @s);
    is($t->token_requests - $before, 1,
       "$what: after SIGCONT, one token request for the fleet per revoke");

    $_->finish for reverse @n;
    $redis->finish;
}

run_case('timeout 1s, local', undef, undef);
run_case('timeout 3s, local', '3s', undef);
run_case('timeout 3s, fail', '3s', 'fail');

done_testing;
