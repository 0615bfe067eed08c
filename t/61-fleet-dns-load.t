#!/usr/bin/perl

# Issue 22's DNS failover test, at its scale: a managed Redis's primary
# endpoint, a name that moves.  Two redis-servers on one port of 127.0.0.2
# (A) and 127.0.0.3 (B), B a replica of A; a small DNS server of the
# test's (t/lib/dns_test.py, TTL 1 s) that names one of them
# "redis.test"; three nginx nodes with "server redis.test:PORT" and
# "resolver ... valid=1s"; the rotating mock; 500 keepalive connections
# spread over the nodes for the whole test (t/lib/conns_load.py, every
# status counted).  Two failovers, A to B and back, each as a managed
# Redis does it: the old primary turned into a replica (REPLICAOF) first,
# so that for a moment no server takes writes (the nodes wait, up to
# failover_wait), then the other one promoted (REPLICAOF NO ONE), the name
# moved to it, the old one's clients dropped.  Five revokes:
#
#   1. right before the first failover: its token request at the mock
#      (0.2 s) when A turns replica
#   2. during failover_wait: no primary, a node's refresh waits for one
#   3. right after, every node on B
#   4. right before the failover back, as 1
#   5. during failover_wait, as 2
#
# Expected: no answer but 200 and no connection error, one token request
# per revoke for the fleet (and one for the warm-up), no rotated-out
# refresh token presented, every node on the new primary within
# failover_wait (10 s, the default) of the old one's turning replica, no
# [alert] or [crit] on any node.
#
# Under valgrind (SF_TEST_VALGRIND), 60 connections instead of 500, and
# failover_wait 30s instead of 10s (the nodes' own work is ten times
# slower), and two answers a connection instead of five; every other
# expectation is the same.

use strict;
use warnings;
no warnings qw(exec);    # a child that cannot exec leaves by POSIX::_exit

use lib 't/lib';
use SfTest;
use RedisTest;
use Test::More;

use POSIX ();
use IO::Socket::INET;
use IO::Select;
use Time::HiRes qw(time);

my $S = SfTest::time_scale();
my $V = $ENV{SF_TEST_VALGRIND};
my $CONNS = $V ? 60 : 500;
my $WAIT = $V ? 30 : 10;

my $first = SfTest->new(mock_args => ['--token-delay', '0.2']);
$first->start_mock;
$first->mode('rotation');

my $port = SfTest::free_port();
my $ra = RedisTest->new(dir => $first->dir, tag => 'a', host => '127.0.0.2',
                        port => $port);
$ra->start;
my $rb = RedisTest->new(dir => $first->dir, tag => 'b', host => '127.0.0.3',
                        port => $port,
                        extra => [ '--replicaof', '127.0.0.2', $port ]);
$rb->start;

# -- the DNS server ---------------------------------------------------------------

my $dns_port = SfTest::free_udp_port();
my $zone = $first->dir . '/dns.zone';
my $counts = $first->dir . '/dns.counts';

sub point {
    my ($ip) = @_;
    open my $fh, '>', "$zone.tmp" or die "$zone: $!";
    print $fh "redis.test $ip\n";
    close $fh;
    rename "$zone.tmp", $zone or die "$zone: $!";
}

sub queries {
    open my $fh, '<', $counts or return 0;
    while (<$fh>) {
        return $1 if /^redis\.test (\d+)/;
    }
    return 0;
}

point('127.0.0.2');

my $parent = $$;
my $dns = fork() // die "fork: $!";
if ($dns == 0) {
    RedisTest::die_with_parent($parent);
    open STDOUT, '>>', $first->dir . '/dns.log';
    open STDERR, '>&', \*STDOUT;
    exec 'python3', 't/lib/dns_test.py', $dns_port, $zone, $counts;
    POSIX::_exit(127);
}
END { kill 'TERM', $dns if $dns && $$ == $parent }

SfTest::wait_event(10, 'the DNS server answers', sub {
    my $s = IO::Socket::INET->new(Proto => 'udp', PeerAddr => '127.0.0.1',
                                  PeerPort => $dns_port) or return 0;
    $s->send(pack('n6', 0x1234, 0x0100, 1, 0, 0, 0)
             . "\x05redis\x04test\x00" . pack('n2', 1, 1));
    my $sel = IO::Select->new($s);
    return 0 unless $sel->can_read(0.2);
    my $buf;
    $s->recv($buf, 512);
    return length($buf) > 12;
});

# -- the fleet on A ---------------------------------------------------------------

my @n = RedisTest::fleet(
    redis => $ra, first => $first, n => 3,
    redis_conf => [ server => "redis.test:$port",
                    $V ? (timeout => '5s', failover_wait => "${WAIT}s")
                       : () ],
    credential => { timeout => '5s' }, start => 0);
for my $node (@n) {
    $node->edit_conf(sub {
        s{(\n\s*sf_oauth_redis )}
         {\n    resolver 127.0.0.1:$dns_port valid=1s ipv6=off;\n$1}
    });
}
$_->start for @n;

ok(RedisTest::all_connected_to(10, $ra->server, @n),
   'every worker of the three nodes is on A, the name\'s address')
    or diag(explain [ map { RedisTest::node_redis($_) } @n ]);
is((RedisTest::node_redis($n[0]) || {})->{primary_from}, 'resolver',
   'sf_oauth_info: the primary came from the resolver');

# -- the load ----------------------------------------------------------------------

my $load = RedisTest::Conns->start(\@n, conns => $CONNS, interval => 2,
                                   timeout => 30 * $S);
$load->wait_open($CONNS, 30);
is($first->token_requests, 1, "$CONNS connections open: one token request "
                              . 'for the fleet (the warm-up)');
RedisTest::all_synced(10, @n);

my $expected = 1;

my $before_revoke;

sub revoke {
    my ($what) = @_;

    $before_revoke = RedisTest::token_counts(@n);
    $first->mock('revoke');
    $expected++;
    note("revoke $what");
}

sub refreshed {
    my ($what) = @_;

    SfTest::wait_event(30, "the token request of the revoke $what", sub {
        $first->stats->{token_ok} >= $expected
    });

    # The node that refreshed answers its connections with the new token
    # (its held requests replayed) before the next revoke: a revoke before
    # any replay with a node's own new token was answered makes their
    # 401s look like 401s that no refresh cures (docs/design.md, "The 401
    # replay")
    RedisTest::refresher_served($load, $before_revoke, int($CONNS / @n),
                                "the node that refreshed for the revoke "
                                . "$what answers", @n);
}

# OLD to NEW, NEW a replica of OLD and in sync: a revoke whose token
# request is at the mock, OLD turned into a replica of NEW (no primary
# now), a revoke during failover_wait, NEW promoted, the name on NEW,
# OLD's clients dropped; every node on NEW within failover_wait.
sub failover {
    my ($what, $old, $new, $ip) = @_;

    SfTest::wait_event(20, "$what: the new primary in sync", sub {
        ($new->stats('replication', 'master_link_status') // '') eq 'up'
        && ($new->get($new->key('gen')) // '')
           eq ($old->get($old->key('gen')) // '-')
    });

    revoke("before $what");
    SfTest::wait_event(10, 'its token request at the mock', sub {
        $first->token_requests >= $expected
    });
    my @marks = map { $_->log_mark } @n;
    my $t0 = time;
    is($old->cli('REPLICAOF', $new->{host}, $port), 'OK',
       "$what: the old primary a replica");
    refreshed("before $what");

    revoke("during failover_wait of $what");
    ok(SfTest::wait_for(10, sub {
        grep { $n[$_]->error_log_since($marks[$_])
                   =~ /\[warn\].*a refresh waits for it to be back/ } 0 .. $#n
    }), "$what: a refresh waits for the fleet (failover_wait)");

    is($new->cli('REPLICAOF', 'NO', 'ONE'), 'OK', "$what: the new primary");
    point($ip);
    $old->cli('CLIENT', 'KILL', 'TYPE', 'normal');
    $old->cli('CLIENT', 'KILL', 'TYPE', 'pubsub');

    my $ok = RedisTest::all_connected_to($WAIT / $S, $new->server, @n);
    my $took = time - $t0;
    ok($ok && $took <= $WAIT,
       sprintf('%s: every node on the new primary after %.1f s '
               . '(failover_wait %d s)', $what, $took, $WAIT))
        or diag(explain [ map { RedisTest::node_redis($_) } @n ]);
    refreshed("during failover_wait of $what");
}

failover('A to B', $ra, $rb, '127.0.0.3');

revoke('after A to B');
refreshed('after A to B');
RedisTest::all_synced(15, @n);
is($first->token_requests, $expected, 'A to B: one token request per revoke');

failover('B to A', $rb, $ra, '127.0.0.2');
RedisTest::all_synced(15, @n);
is($first->token_requests, $expected, 'B to A: one token request per revoke');

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
   "$CONNS connections through two failovers: every answer 200, "
   . 'no connection error')
    or diag(explain $s->{last});

is($first->token_requests, 6,
   'one token request per revoke (5) and the warm-up, for the fleet');
RedisTest::no_reuse($first, 'two failovers under load');

for my $i (0 .. $#n) {
    unlike($n[$i]->error_log, qr/\[(alert|crit)\]/,
           'node ' . ($i + 1) . ': no alert, no crit');
}

$_->finish for reverse @n;
$rb->stop;
$ra->stop;

done_testing;
