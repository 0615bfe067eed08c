#!/usr/bin/perl

# A fleet across a Redis failover (issue 22, item 3).  Replication is
# asynchronous: a new primary may never have seen a lease that the old one
# granted, nor the last write-back.  The mock rotates, and revokes
# everything when a rotated-out refresh token comes again.
#
#   (a) the primary restarts empty (a new run_id) while node 1 holds the
#       lease and its token request is at the mock, and node 2 needs a
#       refresh then: node 2 takes no lease on the new primary (the
#       quarantine), but node 1's outcome: one token request, no reuse,
#       every request 200
#   (b) a write-back lost: the new primary holds an older generation (a
#       snapshot taken before node 1's write-back, as a replica that lags):
#       the nodes write the newest back, adopt nothing older, and the next
#       refresh uses the newest refresh token, after the quarantine
#   (c) failover_wait: Redis stopped while a refresh is needed, or a
#       replica for a while (READONLY): no token request until it is back,
#       then one, the request 200; stopped longer
#       than failover_wait (2 s on node 3), redis_down local applies after
#       it; failover_wait 0 (node 4): at once, as before
#   the last run_id a node saw survives a reload, and a reload that
#   resizes the zone: the same server after it is no change
#
# Nodes 3 and 4 are in the fleet only for (c): they answer no request
# before it.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use RedisTest;
use Test::More;
use Time::HiRes qw(sleep time);

my $S = SfTest::time_scale();

my $first = SfTest->new;
$first->start_mock;
$first->mode('rotation');

my $redis = RedisTest->new(dir => $first->dir);
$redis->start;

# a lease's time to live: timeout 8 s and 2 s, the quarantine after a
# change of primary; the token request at the mock takes 5 s in (a)
my %fleet = (redis => $redis, credential => { timeout => '8s' },
             redis_conf => sub {
                 $_[0] == 2 ? [ failover_wait => '2s' ]
                 : $_[0] == 3 ? [ failover_wait => '0' ]
                 : [];
             });
my @n = RedisTest::fleet(%fleet, first => $first, n => 4, start => 0);

{
    my ($rc, $out) = $n[0]->test_conf;
    is($rc, 0, 'nginx -t takes failover_wait') or do {
        diag($out);
        RedisTest::finish_all($redis, @n);
        done_testing;
        exit;
    };
}

$_->start for @n;
my ($a, $b, $c, $d) = @n;

ok(RedisTest::all_connected(5, @n), 'every node connected to Redis');

is($a->get('/services/data/v59.0/cold')->{status}, 200, 'cold: 200');
RedisTest::all_synced(5, @n);

{
    my $r = RedisTest::node_redis($b) || {};
    is($r->{failovers}, 0, 'sf_oauth_info: failovers 0 (the first run_id '
                           . 'seen is no change)');
    is($r->{quarantine_ms}, 0, 'sf_oauth_info: quarantine_ms 0');
    is($r->{failover_wait_ms}, 0, 'sf_oauth_info: failover_wait_ms 0');
}

sub gen_in_redis { $redis->get($redis->key('gen')) // '' }

sub primary_changed {
    my ($node, $mark, $what) = @_;
    ok($node->wait_log(qr/\[warn\].*the primary changed/, $mark, 10 * $S),
       "$what: node " . $node->port . ' logs that the primary changed');
}

# -- (a) the primary restarts empty while a node holds the lease -------------------

{
    my $before = $first->stats;
    my @mark = map { $_->log_mark } @n;

    $first->mock('delay', 'seconds=5');
    $first->mock('revoke');

    my $wa = RedisTest::bg_get($a, '/services/data/v59.0/a-node1');

    SfTest::wait_event(10, "(a): node 1 holding the lease, its token "
                           . 'request at the mock', sub {
        my $owner = $redis->get($redis->key('lease'));
        $owner && $first->stats->{token_requests} > $before->{token_requests};
    });

    $redis->restart;

    primary_changed($b, $mark[1], '(a)');

    # node 2's request: its token is dead too, it needs a refresh
    my $api401 = $first->stats->{api_401};
    my $wb = RedisTest::bg_get($b, '/services/data/v59.0/a-node2');
    SfTest::wait_event(10, "(a): node 2's request got its 401",
                       sub { $first->stats->{api_401} > $api401 });
    my $q = RedisTest::node_redis($b) || {};
    ok(($q->{quarantine_ms} // 0) > 0,
       "(a): sf_oauth_info shows the quarantine ($q->{quarantine_ms} ms)");
    is($q->{failovers}, 1, '(a): sf_oauth_info: failovers 1');
    is($first->stats->{token_ok}, $before->{token_ok},
       "(a): node 1's token request is still at the mock then");

    my ($ra, $rb) = ($wa->(), $wb->());

    is($ra->{status}, 200, '(a): node 1: 200');
    is($rb->{status}, 200, '(a): node 2: 200');
    my $after = $first->stats;
    is($after->{token_requests} - $before->{token_requests}, 1,
       '(a): exactly one token request for the fleet');
    is($rb->{auth}, 'Bearer ' . $after->{issued_access_tokens}[-1],
       "(a): node 2 uses node 1's new token");
    RedisTest::no_reuse($first, '(a)');
    is(scalar($b->log_lines(qr/\[warn\].*the primary changed/, $mark[1])), 1,
       '(a): the change said once on node 2');
    $first->mock('delay', 'seconds=0.05');
}

RedisTest::all_synced(10, @n);

# -- (b) a write-back that the new primary never saw --------------------------------

{
    # the new primary's data: a snapshot of now, as a replica that saw
    # nothing after it
    unlink $redis->dir . '/dump.rdb';
    is($redis->cli('SAVE'), 'OK', '(b): a snapshot of the fleet as it is');
    my $old = gen_in_redis();

    # node 1 refreshes and writes back: the write the failover loses
    $first->mock('revoke');
    is($a->get('/services/data/v59.0/b-node1')->{status}, 200,
       '(b): node 1 refreshed: 200');
    SfTest::wait_event(5, '(b): the write-back in Redis',
                       sub { gen_in_redis() > $old });
    my $newest = gen_in_redis();
    RedisTest::all_synced(5, @n);
    my $rt = $#{ $first->stats->{issued_refresh_tokens} };

    my @mark = map { $_->log_mark } @n;
    $redis->restart;
    unlink $redis->dir . '/dump.rdb';
    primary_changed($b, $mark[1], '(b)');

    ok(RedisTest::wait_for(5, sub { gen_in_redis() eq $newest }),
       "(b): the lost write-back is written again (generation $newest over "
       . "the new primary's $old)");
    my $older = qr/\[warn\].*Redis holds an older generation/;
    ok((grep { scalar $n[$_]->log_lines($older, $mark[$_]) } 0 .. $#n),
       '(b): a node says that Redis held an older generation');
    is((RedisTest::node_redis($b) || {})->{fleet_generation}, $newest,
       '(b): node 2 did not take the older generation');

    my $before = $first->stats;
    $first->mock('revoke');
    my $r = $b->get('/services/data/v59.0/b-node2', timeout => 60 * $S);
    is($r->{status}, 200, '(b): node 2 refreshes after the quarantine: 200');
    my $after = $first->stats;
    is($after->{token_requests} - $before->{token_requests}, 1,
       '(b): one token request');
    is($after->{refresh_log}[-1][0], $rt,
       "(b): it presented the newest refresh token, the lost write-back's");
    RedisTest::no_reuse($first, '(b)');
}

RedisTest::all_synced(10, @n);

# -- (c) failover_wait: Redis stopped for less than it --------------------------------

{
    my $before = $first->stats;
    my $mark = $a->log_mark;

    $first->mock('revoke');
    $redis->stop;

    my $wa = RedisTest::bg_get($a, '/services/data/v59.0/c-node1');
    ok($a->wait_log(qr/\[warn\].*waits for it to be back, up to failover_wait/,
                    $mark, 10 * $S),
       '(c): node 1 says that the refresh waits for Redis');
    my $info = RedisTest::node_redis($a) || {};
    ok(($info->{failover_wait_ms} // 0) > 0,
       "(c): sf_oauth_info shows the failover wait ($info->{failover_wait_ms} ms)");
    is($first->stats->{token_requests}, $before->{token_requests},
       '(c): no token request while Redis is down');

    $redis->start;
    my $r = $wa->();
    is($r->{status}, 200, '(c): the held request: 200 once Redis is back');
    is($first->stats->{token_requests} - $before->{token_requests}, 1,
       '(c): one token request');
    RedisTest::no_reuse($first, '(c)');
    is(scalar($a->log_lines(qr/not coordinated/, $mark)), 0,
       '(c): node 1 never refreshed alone');
}

RedisTest::all_synced(10, @n);

# -- (c) failover_wait: the server is a replica (READONLY) for a while --------------

# The connection stays up, the server keeps its run_id and its data (its
# "primary" is a port where nothing listens): a failover half done.
{
    my $before = $first->stats;
    my $mark = $a->log_mark;
    my $failovers = (RedisTest::node_redis($a) || {})->{failovers};

    $first->mock('revoke');
    is($redis->cli('REPLICAOF', '127.0.0.1', SfTest::free_port()), 'OK',
       '(c) READONLY: Redis becomes a replica');

    my $wa = RedisTest::bg_get($a, '/services/data/v59.0/c-readonly');
    ok($a->wait_log(qr/answered (READONLY|ROLE "slave"): it is a replica now; its address is fixed/,
                    $mark, 10 * $S),
       '(c) READONLY: node 1 says that Redis is a replica (READONLY, or '
       . 'the periodic ROLE)');
    ok($a->wait_log(qr/\[warn\].*waits for it to be back, up to failover_wait/,
                    $mark, 10 * $S),
       '(c) READONLY: node 1 says that the refresh waits for Redis');

    # each worker leaves the replica: the one whose write met READONLY,
    # the other by its periodic ROLE (within a second); each reconnect
    # asks ROLE, so neither says "connected" while Redis is a replica
    ok(SfTest::wait_for(5, sub {
           my %pids = map { /#(\d+):/ ? ($1 => 1) : () }
                      $a->log_lines(qr/answered (READONLY|ROLE "slave")/,
                                    $mark);
           keys %pids == 2 }),
       '(c) READONLY: both workers of node 1 left the replica');
    my @seen = map { sleep 0.2; (RedisTest::node_redis($a) || {})->{connected}
                                    ? 1 : 0 } 1 .. 10;
    is(join('', @seen), '0' x 10,
       '(c) READONLY: sf_oauth_info says not connected while Redis is a '
       . 'replica (10 looks in 2 s)')
        or diag(explain(RedisTest::node_redis($a)));
    is($first->stats->{token_requests}, $before->{token_requests},
       '(c) READONLY: no token request while Redis refuses');

    is($redis->cli('REPLICAOF', 'NO', 'ONE'), 'OK',
       '(c) READONLY: Redis is a primary again');
    my $r = $wa->();
    is($r->{status}, 200, '(c) READONLY: the held request: 200');
    is($first->stats->{token_requests} - $before->{token_requests}, 1,
       '(c) READONLY: one token request');
    RedisTest::no_reuse($first, '(c) READONLY');
    is(scalar($a->log_lines(qr/answered (READONLY|ROLE)/, $mark)), 2,
       '(c) READONLY: the refusal said once for the outage by each worker');
    is(scalar($a->log_lines(qr/not coordinated/, $mark)), 0,
       '(c) READONLY: node 1 never refreshed alone');
    is((RedisTest::node_redis($a) || {})->{failovers}, $failovers,
       '(c) READONLY: no change of primary (the same run_id)');
}

RedisTest::all_synced(10, @n);

# -- (c) longer than failover_wait; (d) failover_wait 0 ---------------------------------

# each node refreshes on its own here: the mock must not rotate
$first->mode('normal');

{
    my @mark = map { $_->log_mark } @n;
    my $before = $first->token_requests;

    $first->mock('revoke');
    $redis->stop;
    my $t0 = time;

    my $r = $d->get('/services/data/v59.0/d-node4');
    my $took_d = time - $t0;
    is($r->{status}, 200, '(d) failover_wait 0: 200');
    ok($took_d < 1.5 * $S,
       sprintf('(d) failover_wait 0: redis_down local at once (%.2f s)', $took_d));

    $r = $c->get('/services/data/v59.0/c-node3', timeout => 30 * $S);
    my $took_c = time - $t0;
    is($r->{status}, 200, '(c) failover_wait 2s, Redis down longer: 200');
    ok($took_c >= 1.9,
       sprintf('(c) failover_wait 2s: it refreshed alone after the wait '
               . '(%.2f s after Redis stopped)', $took_c));
    ok(!$redis->running, '(c): Redis still down then');
    is($first->token_requests - $before, 2,
       '(c), (d): each node refreshed on its own while Redis is down');
    is(scalar($c->log_lines(qr/\[warn\].*waits for it to be back/, $mark[2])), 1,
       '(c): the wait said once on node 3');
    is(scalar($c->log_lines(qr/\[error\].*not coordinated/, $mark[2])), 1,
       '(c): then the outage, once, on node 3');
    is(scalar($d->log_lines(qr/waits for it to be back/, $mark[3])), 0,
       '(d): no wait on node 4');

    $redis->start;
    ok(RedisTest::all_connected(5, @n), 'every node connected again');
}

# -- the primary as the node knew it survives a reload, and a resize ---------------

for my $case ([ 'reload', sub { $_ .= "# reloaded\n" } ],
              [ 'zone resize', sub { s/zone=sf:1m/zone=sf:2m/ } ]) {
    my ($what, $edit) = @$case;
    my $failovers = (RedisTest::node_redis($b) || {})->{failovers};
    my $mark = $b->log_mark;

    ok($failovers >= 4, "$what: node 2 has seen $failovers changes of primary");
    $b->edit_conf($edit);
    $b->reload;
    ok(RedisTest::all_connected(5, $b), "$what: node 2's new workers connected");
    my $r = RedisTest::node_redis($b) || {};
    is($r->{failovers}, $failovers,
       "$what: the last run_id is kept: the same server is no change");
    is(scalar($b->log_lines(qr/the primary changed/, $mark)), 0,
       "$what: no primary change said");
}

for my $node (@n) {
    my @secret = grep { /refresh_token=|Bearer / } split /\n/, $node->error_log;
    is(scalar @secret, 0, 'no token in the error log of node ' . $node->port);
}

RedisTest::finish_all($redis, @n);

done_testing;
