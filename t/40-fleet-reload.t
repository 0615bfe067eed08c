#!/usr/bin/perl

# Reloads of a fleet node under load (2 nodes, rotation mode,
# steady requests to both, a revoke now and then) that change
#   1) the zone size (zone=sf:1m -> 2m -> 1m), also while a refresh runs
#   2) the sf_oauth_redis block: prefix, password (Redis has none), server
#      to another redis-server, and back
# Expect: no crash, no alert/crit; while the fleet is unchanged (1), every
# request 200, one token request a revoke, and no reuse of a rotated-out
# refresh token.  For (2) the
# behaviour is observed and reported (diag), only the absence of crashes
# and alerts is checked, and that the fleet works again once B is back.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use RedisTest;
use Test::More;
use Time::HiRes qw(sleep time);

my $S = SfTest::time_scale();

my ($t, $redis, $redis2, @n, $A, $B);

sub setup {
$t = SfTest->new(mock_args => ['--token-delay', '0.3']);
$t->start_mock;
$t->mode('rotation');
$redis = RedisTest->new(dir => $t->dir);
$redis->start;
$redis2 = RedisTest->new(dir => $t->dir . '/r2');
mkdir $t->dir . '/r2';
$redis2->start;

@n = RedisTest::fleet(redis => $redis, first => $t, n => 2,
                         credential => { timeout => (5 * $S) . 's' });
($A, $B) = @n;
ok(RedisTest::all_connected(5, @n), 'connected');
is($A->get('/services/data/v59.0/warm')->{status}, 200, 'warm');

}

sub teardown {
    RedisTest::finish_all($redis, @n);
    ok($redis2->finish, 'redis 2 ran to the end');
    @n = (); undef $A; undef $B; undef $t;
}


setup();
# -- 1) zone size ----------------------------------------------------------------
{
    my $mark = $B->log_mark;
    my $tr0 = $t->token_requests;
    my $load = RedisTest::Load->start(\@n, interval => 0.02);
    for my $size ('2m', '1m', '4m', '1m') {
        $B->edit_conf(sub { s/zone=sf:\d+m/zone=sf:$size/ });
        my $tr = $t->token_requests;
        $t->mock('revoke');
        # a refresh is running now: its token request reached the mock
        # (which answers it in 0.3 s)
        SfTest::wait_event(10, "zone $size: a token request after the revoke",
                           sub { $t->token_requests > $tr });
        $B->reload;
        my $t1 = time;
        # the resize is over: B's new workers connected, every node 200
        RedisTest::all_connected(10, $B)
            or die "zone $size: B's new workers did not connect to Redis\n";
        $load->wait_all_ok(10, $t1, "zone $size: a 200 from every node "
                                    . 'after the reload');
    }
    my @r = $load->stop;
    # a zone resized while its refresh runs: the old worker's outcome
    # reaches the new zone (sf_oauth_carry), and nobody fails
    my @bad = grep { $_->{status} != 200 } @r;
    is(scalar @bad, 0, 'zone size reloads: every request 200 ('
       . scalar(@r) . ' requests)')
        or diag(RedisTest::tally(map { "node$_->{node}:$_->{status}" } @bad));
    my $trs = $t->token_requests - $tr0;
    is($trs, 4, "zone size reloads: one token request a revoke ($trs for 4)");
    RedisTest::no_reuse($t, 'zone size reloads')
        or diag("zone size: B's log:\n" . join "\n",
                $B->log_lines(qr/\[(warn|error|alert|crit)\]|sf_oauth.*(zone|copied)/,
                              $mark));
    is($B->get('/services/data/v59.0/after-zone')->{status}, 200, 'after: B 200');
}

teardown();

# -- 2) the sf_oauth_redis block ----------------------------------------------------
for my $case (
    [ 'prefix',   sub { s/(sf_oauth_redis fleet \{\n)/$1        prefix other:;\n/ } ],
    [ 'password', sub { s/(sf_oauth_redis fleet \{\n)/$1        password s3cret;\n/ } ],
    [ 'server',   sub { my $s2 = $redis2->server; s/server 127\.0\.0\.1:\d+;/server $s2;/ } ],
    [ 'server, every node', sub { my $s2 = $redis2->server; s/server 127\.0\.0\.1:\d+;/server $s2;/ }, 1 ],
    [ 'prefix, every node', sub { s/(sf_oauth_redis fleet \{\n)/$1        prefix other:;\n/ }, 1 ],
) {
    my ($what, $edit, $all) = @$case;
    setup();
    my $orig = do { local (@ARGV, $/) = $B->dir . '/nginx.conf'; <> };
    my $mark = $B->log_mark;
    my $tr0 = $t->token_requests;
    my $load = RedisTest::Load->start(\@n, interval => 0.02);
    $B->edit_conf($edit);
    $B->reload;
    if ($all) {
        $A->edit_conf($edit);
        $A->reload;
    }
    # B's new workers took the new block: connected, or (a password
    # Redis does not ask for) said why not
    if ($what eq 'password') {
        $B->wait_log(qr/\[error\].*redis/i, $mark, 10 * $S)
            or die "$what: B's new workers did not log a Redis error\n";
    } else {
        RedisTest::all_connected(10, $all ? @n : $B)
            or die "$what: the new workers did not connect to Redis\n";
    }
    # a new server is a new primary to the fleet, and a new prefix a new
    # place on it: no node takes a lease there for a lease's time to live
    # (t/58-fleet-failover.t, t/58-reload-zones.t); the revoke
    # comes after that, so that its waiters wait for the refresh only
    if ($what =~ /^(server|prefix)/) {
        SfTest::wait_event(30, "$what: the quarantine after the new server",
            sub { !grep { (RedisTest::node_redis($_) || {})->{quarantine_ms} }
                        $all ? @n : $B });
    }
    my $info = RedisTest::node_redis($B) || {};
    my $tr = $t->token_requests;
    $t->mock('revoke');
    # the revoke's refreshes: a token request, then every node answers a
    # request sent after it (200 when the fleet is one)
    SfTest::wait_event(10, "$what: a token request after the revoke",
                       sub { $t->token_requests > $tr });
    $load->wait_all_ok(10, time, "$what: every node answers after the revoke's "
                                 . 'token request', !$all);
    my @r = $load->stop;
    my $s = $t->mock('stats');
    my $reuse = !(@{ $s->{valid_refresh_tokens} } == 1
                  && $s->{valid_refresh_tokens}[0] eq $s->{issued_refresh_tokens}[-1]);
    diag("$what: B info: connected=" . ($info->{connected} ? 1 : 0)
         . " gen=" . ($info->{fleet_generation} // '-')
         . "; after a revoke: " . ($t->token_requests - $tr0) . " token requests, "
         . ($reuse ? 'REUSE (the mock revoked everything)' : 'no reuse') . '; '
         . RedisTest::tally(map { "node$_->{node}:$_->{status}" } @r));
    diag("$what: B's log:\n" . join "\n",
         $B->log_lines(qr/\[(warn|error|alert|crit)\]/, $mark));
    if ($all) {
        ok(!$reuse, "$what: changed on every node: no reuse");
        is(scalar(grep { $_->{status} != 200 } @r), 0, "$what: changed on every node: every request 200");
        teardown();
        next;
    }

    # back to the original block: does the fleet work again?
    $B->edit_conf(sub { $_ = $orig });
    $B->reload;
    RedisTest::all_connected(10, $B)
        or die "$what: back to the original block: B did not connect\n";
    $tr0 = $t->token_requests;
    $t->mock('revoke');
    my @s = $t->parallel(20, '/services/data/v59.0/back', ports => [ map { $_->port } @n ],
                         timeout => 30 * $S);
    diag("$what: back to the original block, a revoke: " . RedisTest::tally(@s) . ', '
         . ($t->token_requests - $tr0) . ' token requests');
    teardown();
}

done_testing;
