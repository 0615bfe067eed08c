#!/usr/bin/perl

# A fleet whose Redis is found through Sentinel (sf_oauth_redis { sentinel
# ...; sentinel_master ...; }): a primary, a replica and two sentinels of
# the test's own (redis-server --sentinel, never the system's service).
#
#   - two nodes connect to the primary the sentinels name; sf_oauth_info
#     says which address, and that it came from a sentinel
#   - SENTINEL FAILOVER: every worker of both nodes follows to the new
#     primary (+switch-master, READONLY, ROLE); a revoke afterwards costs
#     one token request for the fleet, and no rotated-out refresh token is
#     presented
#   - a sentinel stopped, or hung: the workers' +switch-master
#     subscriptions move to another one
#   - TLS to the sentinel and to the primary
#   - nginx -t: sentinel with server, sentinel without sentinel_master
#   - sentinels with requirepass: the right sentinel_password works; a
#     wrong one is one clear error line, without the password

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use RedisTest;
use Test::More;

my $S = SfTest::time_scale();

my $first = SfTest->new(mock_args => ['--token-delay', '0.2']);
$first->start_mock;
$first->mode('rotation');

my $g = RedisTest::sentinel_group(dir => $first->dir, sentinels => 2);
my ($a0, $b0) = @$g{qw(primary replica)};

# under valgrind a worker's first exchanges take more than a second
my $timeout = $ENV{SF_TEST_VALGRIND} ? '5s' : '1s';

my @sentinel = (server => undef,
                sentinel => RedisTest::sentinel_addrs($g),
                sentinel_master => $g->{master}, timeout => $timeout);

# how many connections of clients are subscribed on SENTINEL (a sentinel
# has no PUBSUB; the nodes' workers are its only subscribers)
sub listeners {
    my ($sentinel) = @_;
    my $out = $sentinel->cli('CLIENT', 'LIST') // '';
    return scalar(() = $out =~ /\bsub=[1-9]/g);
}

my @n = RedisTest::fleet(redis => $a0, first => $first, n => 2,
                         redis_conf => \@sentinel,
                         credential => { timeout => '5s' }, start => 0);
my @ports = map { $_->port } @n;

# -- nginx -t -------------------------------------------------------------------

{
    my $t = SfTest->new(mock_of => $first);

    for my $case (
        [ 'sentinel and server',
          [ server => $a0->server, sentinel => RedisTest::sentinel_addrs($g),
            sentinel_master => 'mymaster' ],
          qr/sf_oauth_redis "fleet" in \S+nginx\.conf:\d+ has both "server" and "sentinel"/ ],
        [ 'sentinel without sentinel_master',
          [ server => undef, sentinel => RedisTest::sentinel_addrs($g) ],
          qr/sf_oauth_redis "fleet" in \S+nginx\.conf:\d+ has "sentinel" but no "sentinel_master"/ ],
        [ 'sentinel_master without sentinel',
          [ sentinel_master => 'mymaster' ],
          qr/"sentinel_master" or "sentinel_password" without "sentinel"/ ],
    ) {
        my ($name, $conf, $re) = @$case;
        RedisTest::configure_node($t, redis => $a0, redis_conf => $conf);
        my ($rc, $out) = $t->test_conf;
        isnt($rc, 0, "nginx -t refuses $name");
        like($out, $re, "$name: says why, with the block's file and line")
            or diag($out);
    }

    RedisTest::configure_node($t, redis => $a0, redis_conf => \@sentinel);
    my ($rc, $out) = $t->test_conf;
    is($rc, 0, 'nginx -t takes sentinel and sentinel_master') or diag($out);
    unlike($out, qr/frozen/, 'IP literals: no warning about names');
}

# -- the fleet through the sentinels --------------------------------------------

$_->start for @n;

ok(RedisTest::all_connected_to(10, $a0->server, @n),
   'every worker of both nodes is on the primary the sentinels name')
    or diag(explain [ map { RedisTest::node_redis($_) } @n ]);
is((RedisTest::node_redis($n[0]) || {})->{primary_from}, 'sentinel',
   'sf_oauth_info: the primary came from a sentinel');
{
    my %sentinels = map { $_ => 1 } split ' ', RedisTest::sentinel_addrs($g);
    my $info = RedisTest::node_redis($n[0]) || {};
    is($info->{role}, 'master', 'sf_oauth_info: role, as ROLE says: master');
    ok($sentinels{ $info->{sentinel} // '' },
       "sf_oauth_info: sentinel, the one that named the primary: "
       . ($info->{sentinel} // 'null'));
    ok(RedisTest::wait_for(5, sub {
           $sentinels{ (RedisTest::node_redis($n[0]) || {})
                           ->{sentinel_subscribed} // '' } }),
       'sf_oauth_info: sentinel_subscribed, the one listened to');
    my $ok_ms = $info->{last_ok_ms} // -1;
    ok($ok_ms >= 0 && $ok_ms < 5000 * $S,
       "sf_oauth_info: last_ok_ms, since the last command that worked: $ok_ms");
}

my @s = $first->parallel(40, '/services/data/v59.0/before', ports => \@ports,
                         timeout => 30 * $S);
is(RedisTest::tally(@s), '40 x 200', 'before the failover: 40 x 200');
RedisTest::all_synced(5, @n);

# -- SENTINEL FAILOVER ----------------------------------------------------------

my $new = RedisTest::sentinel_failover($g);
is($new->server, $b0->server, 'the sentinels name the replica now');

ok(RedisTest::all_connected_to(15, $new->server, @n),
   'every worker of both nodes follows to the new primary')
    or diag(explain [ map { RedisTest::node_redis($_) } @n ]);

# every worker on the new primary: its fleet record is the replica's copy
RedisTest::all_synced(10, @n);

{
    my $before = $first->token_requests;

    $first->mock('revoke');
    my @s = $first->parallel(60, '/services/data/v59.0/after', ports => \@ports,
                             timeout => 30 * $S);
    is(RedisTest::tally(@s), '60 x 200', 'after the failover, a revoke: 60 x 200');
    is($first->token_requests - $before, 1,
       'one token request for the fleet after the failover');
    RedisTest::no_reuse($first, 'after the failover');
    ok(length($new->get($new->key('record')) // ''),
       'the new primary holds the fleet record');
}

like($n[0]->error_log, qr/the sentinels switched the master from "\Q${\ $a0->server }\E" to "\Q${\ $new->server }\E"|READONLY|ROLE says|answered ROLE/,
     'the log says why the node left the old primary');

# -- the first sentinel stops: the subscription moves to the second ----------------

{
    my ($s1, $s2) = @{ $g->{sentinels} };
    my $mark = length $n[0]->error_log;

    # each worker subscribes on one sentinel, the first worker on the first
    SfTest::wait_event(10, 'the four workers subscribed', sub {
        listeners($s1) + listeners($s2) == 4
    });
    ok(listeners($s1) >= 1, 'the first sentinel has subscribers ('
                            . listeners($s1) . ')');

    $s1->stop;
    ok(SfTest::wait_for(10, sub { listeners($s2) == 4 }),
       'the first sentinel stopped: its subscribers move to the second');
    ok($n[0]->wait_log(qr/\[warn\].*sentinel "127\.0\.0\.1:${\ $s1->port }": .*\+switch-master is listened to on the next sentinel/,
                       $mark, 10 * $S),
       'the log says the subscription moves on');

    # a failover back, through the second sentinel alone
    $g->{sentinels} = [ $s2 ];
    my $back = RedisTest::sentinel_failover($g);
    is($back->server, $a0->server, 'the second sentinel fails over back to A');
    ok(RedisTest::all_connected_to(15, $back->server, @n),
       'every worker of both nodes follows, with one sentinel left')
        or diag(explain [ map { RedisTest::node_redis($_) } @n ]);

    my $before = $first->token_requests;
    $first->mock('revoke');
    my @s = $first->parallel(40, '/services/data/v59.0/back', ports => \@ports,
                             timeout => 30 * $S);
    is(RedisTest::tally(@s), '40 x 200', 'back on A, a revoke: 40 x 200');
    is($first->token_requests - $before, 1, 'one token request for the fleet');
    RedisTest::no_reuse($first, 'back on A');
    $g->{sentinels} = [ $s1, $s2 ];

    # the first sentinel back, the second hung (SIGSTOP): its PINGs go
    # unanswered, and its subscribers move to the first within the timeout
    $s1->start;
    SfTest::wait_event(10, 'the four workers on the second sentinel', sub {
        listeners($s2) == 4
    });
    kill 'STOP', $s2->pid;
    my $moved = SfTest::wait_for(15, sub { listeners($s1) == 4 });
    kill 'CONT', $s2->pid;
    ok($moved, 'the second sentinel hung: its subscribers move to the first');
}

$_->finish for reverse @n;

# -- a password of the sentinels ------------------------------------------------

{
    my $gp = RedisTest::sentinel_group(dir => $first->dir . '/pw',
                                       sentinels => 1,
                                       sentinel_password => 'sentinel-Pw-42');
    my @conf = (server => undef, sentinel => RedisTest::sentinel_addrs($gp),
                sentinel_master => $gp->{master});

    my $ok = SfTest->new(mock_of => $first);
    RedisTest::configure_node($ok, redis => $gp->{primary},
                              redis_conf => [ @conf, timeout => $timeout,
                                              sentinel_password => 'sentinel-Pw-42' ]);
    $ok->start;
    ok(RedisTest::all_connected_to(10, $gp->{primary}->server, $ok),
       'the right sentinel_password: connected through the sentinel');
    $ok->finish;

    my $bad = SfTest->new(mock_of => $first);
    RedisTest::configure_node($bad, redis => $gp->{primary},
                              redis_conf => [ @conf, timeout => $timeout,
                                              sentinel_password => 'wrong-Pw-17' ]);
    $bad->start;
    ok($bad->wait_log(qr/\[error\].*refused AUTH: check sentinel_password/,
                      undef, 10 * $S),
       'a wrong sentinel_password: a clear error line');
    my $r = RedisTest::node_redis($bad) || {};
    ok(!$r->{connected}, 'a wrong sentinel_password: not connected');
    unlike($bad->error_log, qr/wrong-Pw-17|sentinel-Pw-42/,
           'the log holds no sentinel password');
    $bad->finish;

    RedisTest::sentinel_finish($gp);
}

# -- TLS to the sentinels and to the primary ----------------------------------

SKIP: {
    skip 'redis-server without TLS', 4 unless RedisTest::tls_supported();

    my $gt = RedisTest::sentinel_group(dir => $first->dir . '/tls',
                                       sentinels => 1, tls => 1);
    my $p = $gt->{primary};
    my @conf = (server => undef, sentinel => RedisTest::sentinel_addrs($gt),
                sentinel_master => $gt->{master}, timeout => $timeout);

    my $ok = SfTest->new(mock_of => $first);
    RedisTest::configure_node($ok, redis => $p, redis_conf => \@conf);
    $ok->start;
    ok(RedisTest::all_connected_to(10, $p->server, $ok),
       'tls on: through the sentinel over TLS to the primary over TLS');
    $ok->finish;

    my $bad = SfTest->new(mock_of => $first);
    RedisTest::configure_node($bad, redis => $p,
                              redis_conf => [ @conf,
                                              ca_file => $p->wrong_ca_file ]);
    $bad->start;
    ok($bad->wait_log(qr/\[error\].*sentinel "127\.0\.0\.1:\d+": its TLS certificate does not verify; check ca_file/,
                      undef, 10 * $S),
       'tls on, the wrong CA: the sentinel is not trusted, and the log says so');
    $bad->finish;

    RedisTest::sentinel_finish($gt);
}

RedisTest::sentinel_finish($g);

done_testing;
