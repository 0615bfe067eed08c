#!/usr/bin/perl

# A hostile or broken Redis (t/lib/fake_redis.py: a proxy in front of a
# real redis-server that misbehaves on demand), everything from it being
# untrusted:
#   (a) a reply that announces 1 GiB and streams 100 MiB, a status line
#       that never ends, an array that announces 10^8 elements: on the
#       command connection and (the bulk) on the subscriber; each worker's
#       peak memory (VmHWM) grows by less than 20 MB, one error line says
#       that Redis sent a reply larger than the cap, and requests that
#       need a refresh are served as with Redis unreachable;
#   (b) every reply trickled one byte every 0.5 s, redis timeout 1s: the
#       reply's deadline counts from the command, so redis_down takes over
#       (local: a 200 from a refresh of the node's own within 5 s; fail: a
#       502 as promptly);
#   (c) a 64 MiB value in the record key (a real Redis): the worker does
#       not grow by it, and an error line says the record is not used;
#   (d) a subscriber that is confirmed, then never answered again (PING
#       included): noticed within the PING interval and the timeout, an
#       error line, and it subscribes again.

use strict;
use warnings;
no warnings qw(exec);    # a child that cannot exec leaves by POSIX::_exit

use lib 't/lib';
use SfTest;
use RedisTest;
use POSIX qw(:sys_wait_h);
use Test::More;
use Time::HiRes qw(sleep time);

my $S = SfTest::time_scale();
my $CAP = qr/larger than \d+ bytes/;

# -- the fake Redis ---------------------------------------------------------------

sub start_fake {
    my ($dir, $upstream) = @_;

    my $fake = { port => SfTest::free_port(), control => "$dir/fake.mode",
                 log => "$dir/fake.log" };
    unlink $fake->{control};

    my $parent = $$;
    my $pid = fork() // die "fork: $!";
    if ($pid == 0) {
        RedisTest::die_with_parent($parent);
        open STDOUT, '>>', $fake->{log};
        open STDERR, '>&', \*STDOUT;
        exec 'python3', 't/lib/fake_redis.py', '--port', $fake->{port},
             '--upstream', $upstream, '--control', $fake->{control};
        print STDERR "exec python3: $!\n";
        POSIX::_exit(127);
    }
    $fake->{pid} = $pid;
    SfTest::wait_port($fake->{port}, 'fake_redis.py');

    return $fake;
}

sub stop_fake {
    my ($fake) = @_;

    my $pid = delete $fake->{pid} or return;
    kill 'TERM', $pid;
    waitpid($pid, 0);
}

sub fake_mode {
    my ($fake, @words) = @_;

    open my $fh, '>', "$fake->{control}.tmp" or die "$fake->{control}: $!";
    print $fh "@words\n";
    close $fh;
    rename "$fake->{control}.tmp", $fake->{control} or die "rename: $!";
}

# the lines of the fake's log that match
sub fake_lines {
    my ($fake, $re) = @_;

    open my $fh, '<', $fake->{log} or return ();
    return grep { /$re/ } <$fh>;
}

# -- a node's workers --------------------------------------------------------------

# {pid => kB} of a /proc/PID/status field of each worker
sub workers_kb {
    my ($node, $field) = @_;

    my %kb;
    for my $pid ($node->worker_pids) {
        open my $fh, '<', "/proc/$pid/status" or next;
        while (<$fh>) {
            $kb{$pid} = $1 if /^\Q$field\E:\s+(\d+)\s+kB/;
        }
    }
    return \%kb;
}

# Waits until REDIS ran 2 more EVALs, the periodic reads of the node's
# workers (one a second each): a steady state.
sub periodic_reads {
    my ($what, $redis) = @_;
    my $base = $redis->stats('commandstats', 'eval');
    SfTest::wait_event(10, "$what: the periodic reads", sub {
        $redis->stats('commandstats', 'eval') >= $base + 2 });
}

# Waits until the fake read its new mode (it logs "mode MODE").
sub fake_mode_taken {
    my ($fake, $mode) = @_;
    SfTest::wait_event(5, "the fake Redis in mode $mode", sub {
        scalar fake_lines($fake, qr/^mode \Q$mode\E$/) });
}

sub connected {
    my (@n) = @_;
    return RedisTest::all_connected(8, @n);
}

# One node whose sf_oauth_redis is the fake in front of a real Redis,
# warmed: a token of fleet generation 1.  Returns (node, redis, fake).
sub setup {
    my ($what, @rc) = @_;

    my $t = SfTest->new;
    $t->start_mock;
    my $redis = RedisTest->new(dir => $t->dir);
    $redis->start;
    my $fake = start_fake($t->dir, $redis->port);

    # failover_wait 0: redis_down as soon as the server is found broken,
    # not after the wait for a failover (t/58-fleet-failover.t has it)
    my ($n) = RedisTest::fleet(redis => $redis, first => $t, n => 1,
                               redis_conf => [ server => "127.0.0.1:$fake->{port}",
                                               failover_wait => '0', @rc ],
                               credential => { timeout => '3s' });
    ok(connected($n), "$what: connected through the fake Redis");
    is($n->get('/services/data/v59.0/warm')->{status}, 200, "$what: warm 200");
    RedisTest::wait_for(3, sub {
        ((RedisTest::node_redis($n) || {})->{fleet_generation} // 0) >= 1 });

    return ($n, $redis, $fake);
}

sub teardown {
    my ($n, $redis, $fake) = @_;

    $n->finish;
    stop_fake($fake);
    $redis->finish;
}

# -- (a) huge replies ----------------------------------------------------------------

sub huge_case {
    my ($what, $mode, $mib, $sub) = @_;

    my ($n, $redis, $fake) = setup($what);
    periodic_reads($what, $redis);
    my $before = workers_kb($n, 'VmHWM');
    my $mark = $n->log_mark;

    fake_mode($fake, $mode, $mib);

    my $kind = $sub ? qr/subscriber/ : qr/^(?!.*subscriber)/;
    my $logged = RedisTest::wait_for(8, sub {
        scalar grep { /$kind/ } $n->log_lines(qr/\[error\].*$CAP/, $mark) });
    ok($logged, "$what: an error line says Redis sent a reply $CAP")
        or diag(join "\n", $n->log_lines(qr/redis|Redis/, $mark));

    # the fake took over several connections in turn: each was dropped and
    # opened again, and each costs nothing that stays
    my $again = RedisTest::wait_for(10, sub {
        fake_lines($fake, qr/^hijack /) >= 4 });
    ok($again, "$what: the connection is dropped and opened again ("
               . scalar(fake_lines($fake, qr/^hijack /)) . ' taken over)');

    if (!$sub) {
        # Redis counts as unreachable: redis_down local refreshes alone
        $n->mock('revoke');
        my $t0 = time;
        my $r = $n->get('/services/data/v59.0/refresh', timeout => 40);
        is($r->{status}, 200, "$what: a refresh needed: 200 (redis_down local)");
        ok(time - $t0 < 5 * $S, sprintf("$what: ... within 5 s (%.1f s)",
                                        time - $t0));
    }

    my $after = workers_kb($n, 'VmHWM');
    for my $pid (sort keys %$before) {
        my $grew = (($after->{$pid} // 0) - $before->{$pid}) / 1024;
        ok($grew < 20, sprintf("$what: worker %d's peak memory grew by "
                               . "%.1f MB (< 20)", $pid, $grew));
    }

    my @lines = grep { /$kind/ } $n->log_lines(qr/\[error\].*$CAP/, $mark);
    is(scalar @lines, 1, "$what: one error line for the outage")
        or diag(join "\n", @lines);
    like($lines[0] // '', qr/redis "fleet" at "127\.0\.0\.1:$fake->{port}"/,
         "$what: it names the sf_oauth_redis block and the server");

    # the module drops what the fake took over, and connects again
    fake_mode($fake, 'pass');
    ok(connected($n), "$what: connected again once Redis behaves");
    is($n->get('/services/data/v59.0/after')->{status}, 200, "$what: 200 after");

    teardown($n, $redis, $fake);
}

huge_case('a bulk of 1 GiB announced, 100 MiB sent', 'bulk', 100);
huge_case('a status line that never ends, 100 MiB', 'line', 100);
huge_case('an array of 10^8 elements announced, 8 MiB sent', 'array', 8);
huge_case('the subscriber: a message of 1 GiB announced, 100 MiB sent',
          'bulk-sub', 100, 1);

# -- (b) a reply trickled -------------------------------------------------------------

for my $down (qw(local fail)) {
    my $what = "trickled replies, timeout 1s, redis_down $down";
    my ($n, $redis, $fake) = setup($what, timeout => '1s', redis_down => $down);

    fake_mode($fake, 'trickle');
    fake_mode_taken($fake, 'trickle');
    $n->mock('revoke');

    my $mark = $n->log_mark;
    my $t0 = time;
    my $r = $n->get('/services/data/v59.0/trickled', timeout => 60);
    my $took = time - $t0;

    if ($down eq 'local') {
        is($r->{status}, 200, "$what: 200 from a refresh of the node's own");
    } else {
        is($r->{status}, 502, "$what: 502");
    }
    ok($took < 5 * $S, sprintf("$what: answered within 5 s (%.1f s)", $took))
        or diag(join "\n", $n->log_lines(qr/redis|Redis/, $mark));
    # by the first worker, for the node, whichever worker answered
    ok(RedisTest::wait_for(4, sub {
           scalar $n->log_lines(qr/\[error\].*redis "fleet".*timed out/, $mark) }),
       "$what: the reply that did not come in time is logged")
        or diag(join "\n", $n->log_lines(qr/redis|Redis/, $mark));

    fake_mode($fake, 'pass');
    teardown($n, $redis, $fake);
}

# -- (c) a 64 MiB record -------------------------------------------------------------

{
    my $what = 'a 64 MiB record';
    my $t = SfTest->new;
    $t->start_mock;
    my $redis = RedisTest->new(dir => $t->dir);
    $redis->start;
    my ($n) = RedisTest::fleet(redis => $redis, first => $t, n => 1);
    ok(connected($n), "$what: connected");
    is($n->get('/services/data/v59.0/warm')->{status}, 200, "$what: warm 200");
    RedisTest::wait_for(3, sub {
        ((RedisTest::node_redis($n) || {})->{fleet_generation} // 0) >= 1 });
    my $token = $n->get('/services/data/v59.0/mine')->{json}{authorization};
    periodic_reads($what, $redis);

    my $before = workers_kb($n, 'VmHWM');
    my $mark = $n->log_mark;

    is($redis->cli('EVAL', "return redis.call('SET', KEYS[1], 'SFOAUTH1' .. "
                           . "string.rep('x', 64 * 1024 * 1024))",
                   1, $redis->key('record')), 'OK', "$what: written");
    $redis->cli('INCR', $redis->key('gen'));
    $redis->publish($redis->events_channel, 'sf:crm:2');

    my $logged = RedisTest::wait_for(5, sub {
        scalar $n->log_lines(qr/\[error\].*record.*$CAP/, $mark) });
    ok($logged, "$what: an error line says the record is larger than the cap")
        or diag(join "\n", $n->log_lines(qr/redis|Redis/, $mark));

    # every worker read it (each says so)
    my @workers = $n->worker_pids;
    SfTest::wait_event(10, "$what: the error line from every worker", sub {
        my %said = map { /\] (\d+)#/ ? ($1 => 1) : () }
                   $n->log_lines(qr/\[error\].*record.*$CAP/, $mark);
        return !grep { !$said{$_} } @workers;
    });

    my $after = workers_kb($n, 'VmHWM');
    for my $pid (sort keys %$before) {
        my $grew = (($after->{$pid} // 0) - $before->{$pid}) / 1024;
        ok($grew < 20, sprintf("$what: worker %d's peak memory grew by "
                               . "%.1f MB (< 20)", $pid, $grew));
    }

    is(scalar($n->log_lines(qr/\[error\].*$CAP.*retries/, $mark)), 0,
       "$what: the connection is not dropped for it: Redis works");
    my $r = $n->get('/services/data/v59.0/still');
    is($r->{status}, 200, "$what: 200");
    is($r->{json}{authorization}, $token, "$what: the node keeps its token");

    $n->finish;
    $redis->finish;
}

# -- (d) a silent subscriber ------------------------------------------------------------

{
    my $what = 'a subscriber never answered';
    my ($n, $redis, $fake) = setup($what);

    # a real Redis answers the PINGs: the subscribers stay as they are
    sleep 3;    # on purpose: PINGs (one a second) that must not resubscribe
    is(scalar(fake_lines($fake, qr/^subscribe /)), 2,
       "$what: with a real Redis answering, each worker subscribed once");
    my $mark = $n->log_mark;

    fake_mode($fake, 'mute-sub');
    my $t0 = time;

    # each worker's subscriber: taken over, noticed, and subscribed again
    my $again = RedisTest::wait_for(8, sub {
        fake_lines($fake, qr/^hijack \d+ mute-sub/) >= 4 });
    my $took = time - $t0;
    ok($again, sprintf("$what: each worker subscribes again (%.1f s)", $took))
        or diag(join '', fake_lines($fake, qr/./));
    ok($took < 6 * $S, "$what: within the PING interval and the timeout, "
                       . "and the backoff");
    my @lines = $n->log_lines(qr/\[error\].*subscriber.*timed out/, $mark);
    ok(scalar @lines, "$what: an error line says so")
        or diag(join "\n", $n->log_lines(qr/redis|Redis/, $mark));

    is($n->get('/services/data/v59.0/meanwhile')->{status}, 200,
       "$what: requests work meanwhile");

    fake_mode($fake, 'pass');
    teardown($n, $redis, $fake);
}

done_testing;
