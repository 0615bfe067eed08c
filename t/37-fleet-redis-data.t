#!/usr/bin/perl

# Redis losing or spoiling the fleet's data, and refusing writes, with 3
# nodes and the mock in rotation mode (a rotated-out refresh token
# presented again revokes everything, as Salesforce does):
#   - FLUSHALL before revokes: the refresh right after a flush counts its
#     generation from the newest one its node knows, so a node that puts
#     back its older generation a moment later does not win over it (that
#     older record's refresh token was rotated out by the refresh);
#   - a generation that is not a number: an error line, ignored, put back;
#   - writes refused (OOM under maxmemory with noeviction) with
#     redis_down fail: 502 meanwhile and no refresh; 200 once Redis
#     accepts writes again;
#   - every connection killed (CLIENT KILL) every 50 ms for 6 s under
#     revokes, with redis_down local and fail: a token that a node got
#     under the fleet's lease but could not write back (even once its
#     access token was revoked) reaches Redis before another node
#     refreshes with the refresh token it rotated.
# Each: no rotated-out refresh token reused, no lease left behind.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use RedisTest;
use POSIX ();
use Test::More;
use Time::HiRes qw(sleep time);

my $S = SfTest::time_scale();


# on a failure: the refresh tokens the mock issued, and each node's view
sub diag_tokens {
    my ($first, $n) = @_;
    my $st = $first->mock('stats');
    diag('issued: ' . join(' ', map { substr($_, -6) }
                                @{ $st->{issued_refresh_tokens} })
         . '; last presented: '
         . '; refresh grants (issued index, verdict, time): '
         . join(' ', map { sprintf '%d:%s@%.3f', @$_ } @{ $st->{refresh_log} }));
    diag(join "\n", map { $_->get('/sf_oauth_info')->{content} } @$n);
    diag(join "\n", map { $_->log_lines(qr/\[(warn|error)\]/) } @$n);
}

sub case {
    my ($what, $down, $body) = @_;

    return if $ENV{CASE} && $what !~ /$ENV{CASE}/;

    my $first = SfTest->new(mock_args => ['--token-delay', '0.2']);
    $first->start_mock;
    $first->mode('rotation');
    my $redis = RedisTest->new(dir => $first->dir);
    $redis->start;
    my @n = RedisTest::fleet(redis => $redis, first => $first,
                             redis_conf => [ $down ? (redis_down => $down)
                                                   : () ],
                             credential => { timeout => '5s' });
    my @ports = map { $_->port } @n;
    RedisTest::all_connected(5 * $S, @n);
    is($n[0]->get('/services/data/v59.0/warm')->{status}, 200,
       "$what: warm");
    RedisTest::wait_for(3 * $S, sub {
        !grep { ((RedisTest::node_redis($_) || {})->{fleet_generation} // 0)
                < 1 } @n });

    # a revoke, then 30 concurrent requests over the nodes; the statuses
    my $round = sub {
        my ($tag) = @_;
        $first->mock('revoke');
        return $first->parallel(30, "/services/data/v59.0/$tag",
                                ports => \@ports, timeout => 40 * $S);
    };

    $body->($first, $redis, \@n, $round);

    my $s = $first->mock('stats');
    is_deeply($s->{valid_refresh_tokens}, [ $s->{issued_refresh_tokens}[-1] ],
              "$what: no rotated-out refresh token reused (the mock revoked "
              . "nothing)");
    ok(RedisTest::wait_for(8 * $S, sub {
           ($redis->get($redis->key('lease')) // 'x') eq '' }),
       "$what: no lease left in Redis");
    $_->finish for reverse @n;
    $redis->finish;
}

case('FLUSHALL', undef, sub {
    my ($first, $redis, $n, $round) = @_;

    # a node's worker that waited for the refresh of round i - 1 may still
    # be asking when the flush comes (5 rounds, to catch it)
    for my $i (1 .. 5) {
        my $gen = RedisTest::node_redis($n->[0])->{fleet_generation};
        $redis->cli('FLUSHALL');
        my $before = $first->token_requests;
        my @s = $round->("flush$i");
        is(RedisTest::tally(@s), '30 x 200', "FLUSHALL $i: a revoke right after it: "
                                  . "30 x 200")
            or diag_tokens($first, $n);
        is($first->token_requests - $before, 1,
           "FLUSHALL $i: one token request for the fleet");
        # every node is at the refresh's generation, newer than before
        ok(RedisTest::wait_for(3 * $S, sub {
               !grep { ((RedisTest::node_redis($_) || {})->{fleet_generation}
                        // 0) != $gen + 1 } @$n }),
           "FLUSHALL $i: every node at generation " . ($gen + 1));
        is($redis->get($redis->key('gen')), $gen + 1,
           "FLUSHALL $i: so is Redis");
    }
});

case('a generation that is not a number', undef, sub {
    my ($first, $redis, $n, $round) = @_;

    my $gen = RedisTest::node_redis($n->[0])->{fleet_generation};
    my @mark = map { $_->log_mark } @$n;
    $redis->set($redis->key('gen'), '9' x 40);

    ok(RedisTest::wait_for(3 * $S, sub {
           ($redis->get($redis->key('gen')) // '') eq $gen }),
       "bad generation: the nodes put generation $gen back");
    my @lines = map { $n->[$_]->log_lines(
                          qr/\[error\].*fleet generation in Redis is not a number/,
                          $mark[$_]) } 0 .. $#$n;
    ok(@lines >= 1, 'bad generation: an error line says so')
        or diag(join "\n", map { $_->error_log_since($mark[0]) } $n->[0]);

    my $before = $first->token_requests;
    my @s = $round->('badgen');
    is(RedisTest::tally(@s), '30 x 200', 'bad generation: a revoke then: 30 x 200');
    is($first->token_requests - $before, 1,
       'bad generation: one token request for the fleet');
});

case('writes refused (OOM), redis_down fail', 'fail', sub {
    my ($first, $redis, $n, $round) = @_;

    my @mark = map { $_->log_mark } @$n;
    $redis->cli('CONFIG', 'SET', 'maxmemory-policy', 'noeviction');
    $redis->cli('CONFIG', 'SET', 'maxmemory', '1');
    like($redis->cli('SET', 'probe', 'x') // '', qr/OOM/,
         'OOM: Redis refuses writes');

    my $before = $first->token_requests;
    my @s = $round->('oom');
    is(RedisTest::tally(@s), '30 x 502', 'OOM, redis_down fail: 30 x 502');
    is($first->token_requests - $before, 0, 'OOM: no token request');
    my @lines = map { $n->[$_]->log_lines(
                          qr/\[error\].*(refused the lease script: "OOM|refuses commands)/,
                          $mark[$_]) } 0 .. $#$n;
    ok(@lines >= 1, 'OOM: the log names the refusal');

    $redis->cli('CONFIG', 'SET', 'maxmemory', '0');
    sleep 1.5;
    $before = $first->token_requests;
    @s = $first->parallel(30, '/services/data/v59.0/after',
                          ports => [ map { $_->port } @$n ],
                          timeout => 40 * $S);
    is(RedisTest::tally(@s), '30 x 200', 'writes allowed again: 30 x 200');
    is($first->token_requests - $before, 1,
       'writes allowed again: one token request for the fleet');
});

# CLIENT KILL of every connection, normal and pub/sub, for "secs"
sub kill_loop {
    my ($redis, $secs) = @_;
    my $parent = $$;
    my $pid = fork() // die "fork: $!";
    if ($pid == 0) {
        RedisTest::die_with_parent($parent);
        my $end = time + $secs;
        while (time < $end) {
            $redis->cli('CLIENT', 'KILL', 'TYPE', 'normal');
            $redis->cli('CLIENT', 'KILL', 'TYPE', 'pubsub');
            sleep 0.05;
        }
        POSIX::_exit(0);
    }
    return $pid;
}

for my $down ('fail') {
    my $what = 'CLIENT KILL loop, redis_down ' . ($down // 'local');

    case($what, $down, sub {
        my ($first, $redis, $n, $round) = @_;

        my $pid = kill_loop($redis, 6);
        my %during;
        for my $i (1 .. 4) {
            $during{$_}++ for $round->("kill$i");
        }
        waitpid($pid, 0);
        my @bad = grep { $_ != 200 && !($down && $_ == 502) } keys %during;
        ok(!@bad, "$what: during the loop: "
                  . join(', ', map { "$during{$_} x $_" } sort keys %during)
                  . ($down ? ' (502: redis_down fail)' : ''))
            or diag_tokens($first, $n);

        # the loop is over: every worker connected again
        RedisTest::all_connected(10, @$n);
        my $before = $first->token_requests;
        my @s = $round->('after');
        is(RedisTest::tally(@s), '30 x 200', "$what: after the loop: 30 x 200")
            or diag_tokens($first, $n);
        is($first->token_requests - $before, 1,
           "$what: after the loop: one token request for the fleet");
    });
}

done_testing;
