#!/usr/bin/perl

# A fleet whose Redis is a host name that moves, as a managed Redis's
# primary endpoint does on a failover: "server redis.test:PORT" with
# http's "resolver" at a tiny DNS server of the test's (t/lib/dns_test.py,
# TTL 1 s, "valid=1s"), two Redis servers on the same port of two
# loopback addresses, A (127.0.0.2) and B (127.0.0.3), B a replica of A.
#
#   - the nodes connect to A, the resolver's answer (sf_oauth_info says so)
#   - the failover: B the primary, A its replica, the name moved to B, A's
#     clients dropped: every worker resolves again (the DNS server counts
#     the queries), finds A a replica (ROLE) while the resolver's cache
#     still says A, and connects to B; a revoke then costs one token
#     request for the fleet, and no rotated-out refresh token is presented
#   - back again, A the primary, the name on A, nothing dropped: a refresh
#     that meets B's READONLY reconnects, resolves the name again and goes
#     to A; still no reuse
#   - nginx -t warns of a host name without "resolver" (frozen), names the
#     block, file and line, and says to add "resolver"; not of an IP

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

my $S = SfTest::time_scale();

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

# the DNS server answers before nginx needs it
SfTest::wait_event(10, 'the DNS server answers', sub {
    my $s = IO::Socket::INET->new(Proto => 'udp', PeerAddr => '127.0.0.1',
                                  PeerPort => $dns_port) or return 0;
    # a query for redis.test A
    $s->send(pack('n6', 0x1234, 0x0100, 1, 0, 0, 0)
             . "\x05redis\x04test\x00" . pack('n2', 1, 1));
    my $sel = IO::Select->new($s);
    return 0 unless $sel->can_read(0.2);
    my $buf;
    $s->recv($buf, 512);
    return length($buf) > 12;
});

my $server = "redis.test:$port";
my $resolver = "resolver 127.0.0.1:$dns_port valid=1s ipv6=off;\n";

sub with_resolver {
    my ($node) = @_;
    $node->edit_conf(sub { s{(\n\s*sf_oauth_redis )}{\n    $resolver$1} });
}

# -- nginx -t ---------------------------------------------------------------------

{
    my $t = SfTest->new(mock_of => $first);

    RedisTest::configure_node($t, redis => $ra,
                              redis_conf => [ server => "localhost:$port" ]);
    my ($rc, $out) = $t->test_conf;
    is($rc, 0, 'nginx -t takes a host name without a resolver') or diag($out);
    like($out, qr/\[warn\].*the host name in server "localhost:$port" of sf_oauth_redis "fleet" in \S+nginx\.conf:\d+ is resolved once.*frozen.*add "resolver"/,
         'nginx -t warns that it is frozen, with the block, file and line')
        or diag($out);

    RedisTest::configure_node($t, redis => $ra,
                              redis_conf => [ server => "127.0.0.1:$port" ]);
    ($rc, $out) = $t->test_conf;
    is($rc, 0, 'nginx -t takes an IP');
    unlike($out, qr/frozen/, 'no warning for an IP');

    RedisTest::configure_node($t, redis => $ra,
                              redis_conf => [ server => $server ]);
    with_resolver($t);
    ($rc, $out) = $t->test_conf;
    is($rc, 0, 'nginx -t takes a name with a resolver, not resolved at load')
        or diag($out);
    unlike($out, qr/frozen/, 'no warning with a resolver');
}

# -- the fleet on A ---------------------------------------------------------------

my @n = RedisTest::fleet(redis => $ra, first => $first, n => 2,
                         redis_conf => [ server => $server ],
                         credential => { timeout => '5s' }, start => 0);
with_resolver($_) for @n;
my @ports = map { $_->port } @n;
$_->start for @n;

ok(RedisTest::all_connected_to(10, $ra->server, @n),
   'every worker of both nodes is on A, the name\'s address')
    or diag(explain [ map { RedisTest::node_redis($_) } @n ]);
is((RedisTest::node_redis($n[0]) || {})->{primary_from}, 'resolver',
   'sf_oauth_info: the primary came from the resolver');
ok(queries() >= 1, 'the name was resolved by the workers (' . queries() . ')');

my @s = $first->parallel(40, '/services/data/v59.0/a', ports => \@ports,
                         timeout => 30 * $S);
is(RedisTest::tally(@s), '40 x 200', 'on A: 40 x 200');
RedisTest::all_synced(5, @n);

SfTest::wait_event(10, 'B has the fleet record', sub {
    length($rb->get($rb->key('record')) // '')
        && ($rb->get($rb->key('gen')) // '') eq ($ra->get($ra->key('gen')) // '-')
});

# -- the failover: B the primary, the name on B, A's clients dropped --------------

{
    my $q = queries();

    is($rb->cli('REPLICAOF', 'NO', 'ONE'), 'OK', 'B: REPLICAOF NO ONE');
    is($ra->cli('REPLICAOF', '127.0.0.3', $port), 'OK', 'A: a replica of B');
    point('127.0.0.3');
    $ra->cli('CLIENT', 'KILL', 'TYPE', 'normal');
    $ra->cli('CLIENT', 'KILL', 'TYPE', 'pubsub');

    ok(RedisTest::all_connected_to(15, $rb->server, @n),
       'every worker of both nodes follows the name to B')
        or diag(explain [ map { RedisTest::node_redis($_) } @n ]);
    ok(queries() > $q, 'the name was resolved again (' . ($q) . ' -> '
                       . queries() . ' queries)');

    my $before = $first->token_requests;
    $first->mock('revoke');
    my @s = $first->parallel(60, '/services/data/v59.0/b', ports => \@ports,
                             timeout => 30 * $S);
    is(RedisTest::tally(@s), '60 x 200', 'on B, a revoke: 60 x 200');
    is($first->token_requests - $before, 1,
       'one token request for the fleet after the failover');
    RedisTest::no_reuse($first, 'on B');
    RedisTest::all_synced(5, @n);
}

# -- back to A, nothing dropped: READONLY --------------------------------------------

{
    SfTest::wait_event(10, 'A has the fleet record', sub {
        ($ra->get($ra->key('gen')) // '') eq ($rb->get($rb->key('gen')) // '-')
    });

    is($ra->cli('REPLICAOF', 'NO', 'ONE'), 'OK', 'A: REPLICAOF NO ONE');
    is($rb->cli('REPLICAOF', '127.0.0.2', $port), 'OK', 'B: a replica of A');
    point('127.0.0.2');

    my $mark = length $n[0]->error_log;
    my $before = $first->token_requests;
    $first->mock('revoke');
    my $r = $n[0]->get('/services/data/v59.0/readonly');
    is($r->{status}, 200, 'a revoke meets B\'s READONLY: 200');
    like($n[0]->error_log_since($mark),
         qr/"\Q${\ $rb->server }\E" answered (READONLY|ROLE "slave"): it is a replica now; resolving the name again/,
         'the log says READONLY (or the periodic ROLE), and that the name is resolved again');
    is($first->token_requests - $before, 1, 'one token request');

    ok(SfTest::wait_for(10, sub {
        my $seen = 0;
        for (1 .. 12) {
            my $x = RedisTest::node_redis($n[0]) || {};
            $seen++ if ($x->{primary} // '') eq $ra->server && $x->{connected};
        }
        $seen > 0;
    }), 'a worker of node 1 is on A again, the name\'s new address');
    RedisTest::all_synced(10, @n);
    RedisTest::no_reuse($first, 'after READONLY');
}

# -- a reload while a name is being resolved -------------------------------------------

{
    # the DNS server stops answering; A's clients dropped: every worker
    # reconnects, and waits for the resolver (30 s) when nginx reloads
    point('drop');
    # (until the resolver's cache of the name expires, valid=1s, a worker
    # reconnects to A without a query: its clients are dropped again)
    my $q = queries();
    SfTest::wait_event(10, 'the workers ask the DNS server again', sub {
        $ra->cli('CLIENT', 'KILL', 'TYPE', 'normal');
        $ra->cli('CLIENT', 'KILL', 'TYPE', 'pubsub');
        queries() >= $q + 2
    });

    point('127.0.0.2');
    my $mark = length $n[0]->error_log;
    my @old = $n[0]->worker_pids;
    $n[0]->reload;
    ok(SfTest::wait_for(10, sub { !grep { kill 0, $_ } @old }),
       'the old workers exit though their resolves were in flight');
    ok(RedisTest::all_connected_to(15, $ra->server, $n[0]),
       'reloaded while a name was being resolved: the new workers are on A');
    my $r = $n[0]->get('/services/data/v59.0/reloaded');
    is($r->{status}, 200, 'and serve: 200');
    unlike($n[0]->error_log_since($mark), qr/\[(alert|crit)\]/,
           'no alert from the old workers\' resolves in flight');
}

$_->finish for reverse @n;
$rb->stop;
$ra->stop;

done_testing;
