#!/usr/bin/perl

# Issue 22's Sentinel failover test, at its scale: a primary, two
# replicas and three sentinels of the test's own (redis-server and
# redis-server --sentinel, quorum 2, down-after-milliseconds 1000), three
# nginx nodes, the rotating mock, and 500 keepalive connections spread
# over the nodes for the whole test (t/lib/conns_load.py, every status
# counted).  Three failovers: SENTINEL FAILOVER twice, then the primary
# SIGKILLed; five revokes spread over them:
#
#   1. right before the first SENTINEL FAILOVER
#   2. right after it, every node on the new primary
#   3. during the second SENTINEL FAILOVER, just sent
#   4. right before the SIGKILL: its token request at the mock (0.2 s)
#      when the primary dies
#   5. during failover_wait: the primary dead, the sentinels not yet
#      agreed on a new one
#
# Expected: no answer but 200 and no connection error, one token request
# per revoke for the fleet (and one for the warm-up), no rotated-out
# refresh token presented, every node on the new primary within
# failover_wait (15 s: see $WAIT) of each failover's start, no [alert]
# or [crit] on any node.
#
# Under valgrind (SF_TEST_VALGRIND), 60 connections instead of 500, and
# failover_wait 30s instead of 10s (the nodes' own work is ten times
# slower), and two answers a connection instead of five; every other
# expectation is the same.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use RedisTest;
use Test::More;

use Time::HiRes qw(time);

my $S = SfTest::time_scale();
my $V = $ENV{SF_TEST_VALGRIND};
my $CONNS = $V ? 60 : 500;
# failover_wait covers the Sentinels' own failover: down-after 1 s, then
# an election, which on a loaded machine took up to 12 s
my $WAIT = $V ? 30 : 15;

my $first = SfTest->new(mock_args => ['--token-delay', '0.2']);
$first->start_mock;
$first->mode('rotation');

my $g = RedisTest::sentinel_group(dir => $first->dir, sentinels => 3,
                                  replicas => 2, quorum => 2,
                                  down_after => 1000);
my $m = $g->{master};

my @n = RedisTest::fleet(
    redis => $g->{primary}, first => $first, n => 3,
    redis_conf => [ server => undef,
                    sentinel => RedisTest::sentinel_addrs($g),
                    sentinel_master => $m,
                    timeout => $V ? '5s' : '1s',
                    failover_wait => "${WAIT}s" ],
    credential => { timeout => '5s' }, start => 0);
$_->start for @n;

ok(RedisTest::all_connected_to(10, $g->{primary}->server, @n),
   'every worker of the three nodes is on the primary the sentinels name')
    or diag(explain [ map { RedisTest::node_redis($_) } @n ]);

# -- the load ----------------------------------------------------------------------

my $load = RedisTest::Conns->start(\@n, conns => $CONNS, interval => 2,
                                   timeout => 30 * $S);
$load->wait_open($CONNS, 30);
is($first->token_requests, 1, "$CONNS connections open: one token request "
                              . 'for the fleet (the warm-up)');
RedisTest::all_synced(10, @n);

my $expected = 1;

# A revoke: every access token dies; the next requests get 401 from the
# mock and the fleet refreshes once.
my $before_revoke;

sub revoke {
    my ($what) = @_;

    $before_revoke = RedisTest::token_counts(@n);
    $first->mock('revoke');
    $expected++;
    note("revoke $what");
}

# Waits until the mock answered the token request of the last revoke, and
# the node that made it answered "answers" more requests (every connection
# to it once, by default).
sub refreshed {
    my ($what, $answers) = @_;

    SfTest::wait_event(30, "the token request of the revoke $what", sub {
        $first->stats->{token_ok} >= $expected
    });

    # The node that refreshed answers its connections with the new token
    # (its held requests replayed) before the next revoke: a revoke before
    # any replay with a node's own new token was answered makes their
    # 401s look like 401s that no refresh cures (docs/design.md, "The 401
    # replay")
    $answers //= int($CONNS / @n);
    RedisTest::refresher_served($load, $before_revoke, $answers,
                                "the node that refreshed for the revoke "
                                . "$what answers", @n) if $answers;
}

# The replicas in sync with the primary and known to every sentinel, the
# sentinels a quorum: the group can fail over again.
sub ready {
    my $p = $g->{primary};
    SfTest::wait_event(20, 'the replicas in sync with the new primary', sub {
        my $info = $p->cli('INFO', 'replication') // '';
        my @online = $info =~ /^slave\d+:.*state=online/mg;
        return @online >= grep { $_->running } @{ $g->{replicas} };
    });
    RedisTest::sentinels_know($g, 20);
    SfTest::wait_event(20, 'the sentinels a quorum', sub {
        ($g->{sentinels}[0]->cli('SENTINEL', 'CKQUORUM', $m) // '')
            =~ /^OK 3 usable/
    });
}

# Every worker of every node on NEW, within failover_wait of T0.
sub follow {
    my ($what, $t0, $new) = @_;

    my $ok = RedisTest::all_connected_to($WAIT / $S, $new->server, @n);
    my $took = time - $t0;
    ok($ok && $took <= $WAIT,
       sprintf('%s: every node on the new primary after %.1f s '
               . '(failover_wait %d s)', $what, $took, $WAIT))
        or diag(explain [ map { RedisTest::node_redis($_) } @n ]);
}

# -- SENTINEL FAILOVER, a revoke right before and one right after ----------

ready();
{
    revoke('before the first failover');
    my $t0 = time;
    my $new = RedisTest::sentinel_follow($g, sub {
        RedisTest::sentinel_ask($g);
    }, undef, again => sub { RedisTest::sentinel_ask($g) });
    follow('the first SENTINEL FAILOVER', $t0, $new);
    refreshed('before the first failover');

    revoke('after the first failover');
    refreshed('after the first failover');
    RedisTest::all_synced(15, @n);
    is($first->token_requests, $expected,
       'the first failover: one token request per revoke');
}

# -- SENTINEL FAILOVER again, a revoke while it goes on ----------------------------

ready();
{
    my $t0 = time;
    my $new = RedisTest::sentinel_follow($g, sub {
        RedisTest::sentinel_ask($g);
        revoke('during the second failover');
    }, undef, again => sub { RedisTest::sentinel_ask($g) });
    follow('the second SENTINEL FAILOVER', $t0, $new);
    refreshed('during the second failover');
    RedisTest::all_synced(15, @n);
    is($first->token_requests, $expected,
       'the second failover: one token request for the revoke');
}

# -- the primary SIGKILLed: a revoke right before, one during failover_wait ----

ready();
{
    my $old = $g->{primary};
    my ($t0, @marks);
    my $new = RedisTest::sentinel_follow($g, sub {
        revoke('before the SIGKILL');
        SfTest::wait_event(10, 'its token request at the mock', sub {
            $first->token_requests >= $expected
        });
        @marks = map { $_->log_mark } @n;
        $t0 = time;
        $old->kill9;

        # no answer waited for: the next revoke is to come before the
        # sentinels name a new primary
        refreshed('before the SIGKILL', 0);

        my $named = $g->{sentinels}[0]->cli('SENTINEL',
                                            'get-master-addr-by-name', $m)
                    // '';
        like($named, qr/\b${\ $old->port }\b/,
             'the revoke after the SIGKILL comes before the sentinels '
             . 'name a new primary');
        revoke('during failover_wait');
        ok(SfTest::wait_for(10, sub {
            grep { $n[$_]->error_log_since($marks[$_])
                       =~ /\[warn\].*a refresh waits for it to be back/ }
                 0 .. $#n
        }), 'the SIGKILL: a refresh waits for the fleet (failover_wait)');
    }, 30);
    follow('the primary SIGKILLed', $t0, $new);
    refreshed('during failover_wait');
    RedisTest::all_synced(15, @n);
    is($first->token_requests, $expected,
       'the SIGKILL: one token request per revoke');
}

# a last look under load, then the counts
{
    my $ok = $load->ok_count;
    SfTest::wait_event(20, 'the load goes on after the last failover', sub {
        $load->ok_count >= $ok + $CONNS
    });
}

my $s = $load->stop;
my $total = 0;
$total += $_ for values %{ $s->{status} || {} };
ok($total >= ($V ? 2 : 5) * $CONNS,
   "the load: $total answers, every connection busy through the test");
is(RedisTest::Conns::tally($s), "$total x 200",
   "$CONNS connections through three failovers: every answer 200, "
   . 'no connection error')
    or diag(explain $s->{last});

is($first->token_requests, 6,
   'one token request per revoke (5) and the warm-up, for the fleet');
RedisTest::no_reuse($first, 'three failovers under load');

for my $i (0 .. $#n) {
    unlike($n[$i]->error_log, qr/\[(alert|crit)\]/,
           'node ' . ($i + 1) . ': no alert, no crit');
}

$_->finish for reverse @n;
RedisTest::sentinel_finish($g);

done_testing;
