#!/usr/bin/perl

# Requests on node B that wait for a fleet refresh that node A
# holds the Redis lease of (the mock's token request made slow with
# /__mock/delay), while:
#   a) HTTP/1.1 clients abort (close) mid-wait, others stay
#   b) an HTTP/2 client resets one stream (RST_STREAM CANCEL), its other
#      stream stays; a curl --http2-prior-knowledge killed mid-wait
#   c) send_timeout 1s on B, a 3 s wait
#   d) nginx -s reload of B while requests wait
#   e) nginx -s quit of B with worker_shutdown_timeout 1s while requests wait
#      (set by a reload just before; d) runs without it)
# Expect: no hang, no alert/crit, the remaining requests 200, one token
# request per revoke.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use RedisTest;
use IO::Socket::INET;
use IO::Select;
use Test::More;
use Time::HiRes qw(sleep time);

my $S = SfTest::time_scale();
my $DELAY = 3 * $S;

my $t = SfTest->new;
$t->start_mock;
$t->mode('rotation');
my $redis = RedisTest->new(dir => $t->dir);
$redis->start;

my $h2port = SfTest::free_port();
my $h2server = <<"EOF";
    server {
        listen 127.0.0.1:$h2port http2;
        location /services/ {
            sf_oauth crm;
            send_timeout 1s;
            proxy_pass http://127.0.0.1:%%MOCK%%;
        }
    }
EOF

my @n = RedisTest::fleet(redis => $redis, first => $t, n => 2, start => 0,
                         credential => { timeout => (8 * $S) . 's' });
my ($A, $B) = @n;
# node B gets send_timeout 1s, an HTTP/2 server, worker_shutdown_timeout 1s
RedisTest::configure_node($B, redis => $redis, index => 1,
    credential => { timeout => (8 * $S) . 's',
                    location_extra => "            send_timeout 1s;\n",
                    http_extra => $h2server });
sub shutdown_timeout {
    my $f = $B->dir . '/nginx.conf';
    my $c = do { local (@ARGV, $/) = $f; <> };
    $c =~ s/^events/worker_shutdown_timeout 1s;\n\nevents/m;
    open my $fh, '>', $f or die; print $fh $c; close $fh;
}
$_->start for @n;

ok(RedisTest::all_connected(5, @n), 'connected');
is($A->get('/services/data/v59.0/warm')->{status}, 200, 'warm A');
is($B->get('/services/data/v59.0/warm')->{status}, 200, 'warm B');
RedisTest::wait_for(3, sub { ((RedisTest::node_redis($B) || {})->{fleet_generation} // 0) >= 1 });

sub send_req {
    my ($port, $path) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port)
        or die "connect: $!";
    print $s "GET $path HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    return $s;
}

sub read_all {
    my ($timeout, @socks) = @_;
    my (%buf, %idx);
    @idx{ map { fileno $_ } @socks } = 0 .. $#socks;
    $buf{$_} = '' for 0 .. $#socks;
    my $sel = IO::Select->new(@socks);
    my $end = time + $timeout;
    while ($sel->count && time < $end) {
        for my $s ($sel->can_read(0.2)) {
            my $r = sysread($s, my $chunk, 65536);
            if (!$r) { $sel->remove($s); close $s; next; }
            $buf{ $idx{fileno $s} } .= $chunk;
        }
    }
    return map { $buf{$_} =~ m{^HTTP/1\.\d (\d+)} ? $1 : 0 } 0 .. $#socks;
}

# revoke, make the token request slow, and start A's refresh: A holds the
# lease for about $DELAY s.  Returns A's socket.
sub start_round {
    my ($name) = @_;
    $t->mock('delay', "seconds=$DELAY");
    $t->mock('revoke');
    my $a = send_req($A->port, "/services/data/v59.0/$name-A");
    RedisTest::wait_for(2, sub { ($redis->get($redis->key('lease')) // '') ne '' });
    ok(($redis->get($redis->key('lease')) // '') ne '', "$name: A holds the lease");
    return $a;
}

# Waits until B waits for A's refresh (sf_oauth_info: refreshing, the
# fleet's lease polled) and nginx has read the N requests on B's PORT (no
# byte unread on any connection to it): those requests wait.
sub waiting {
    my ($name, $port, $n) = @_;
    SfTest::wait_event(10, "$name: B's $n requests read while B waits for "
                           . "A's refresh", sub {
        my $c = $B->cred_info or return 0;
        return 0 unless $c->{refreshing};
        my @unread = map { /^\s*(\d+)\s/ ? $1 : () }
                     `ss -Htn state established '( sport = :$port )'`;
        return @unread >= $n && !grep { $_ } @unread;
    });
}

# Waits until B's workers after a reload (none of OLD) are all connected
# to Redis.
sub reloaded {
    my ($name, @old) = @_;
    SfTest::wait_event(10, "$name: B's old workers gone", sub {
        my %now = map { $_ => 1 } $B->worker_pids;
        return !grep { $now{$_} } @old;
    });
    RedisTest::all_connected(10, $B)
        or die "$name: B's new workers did not connect to Redis\n";
}

sub end_round {
    $t->mock('delay', 'seconds=0.05');
    RedisTest::wait_for(3, sub { ($redis->get($redis->key('lease')) // 'x') eq '' });
}

my $tr0 = $t->token_requests;

# -- a) HTTP/1.1 aborts ------------------------------------------------------
{
    my $a = start_round('abort');
    my @b = map { send_req($B->port, "/services/data/v59.0/abort-B$_") } 1 .. 6;
    waiting('abort', $B->port, 6);
    close $_ for @b[0 .. 2];
    my $t0 = time;
    my @s = read_all(20 * $S, $a, @b[3 .. 5]);
    is_deeply(\@s, [200, 200, 200, 200], 'abort: A and the 3 remaining B requests 200');
    ok(time - $t0 < $DELAY + 3 * $S, sprintf('abort: answered in %.1f s', time - $t0));
    end_round();
}

# -- b) HTTP/2 RST_STREAM and killed curl ----------------------------------------
{
    my $a = start_round('h2');
    my $pid = open(my $h2, '-|', 'python3', 't/lib/h2_reset.py', $h2port,
                   '/services/data/v59.0/h2-reset', '/services/data/v59.0/h2-keep',
                   0.8 * $S, 20 * $S) or die;
    my $cpid = open(my $cu, '-|', 'curl', '-s', '-o', '/dev/null', '-w', '%{http_code}',
                    '--http2-prior-knowledge', "http://127.0.0.1:$h2port/services/data/v59.0/h2-curl")
        or die;
    waiting('h2', $h2port, 2);
    kill 'KILL', $cpid;
    my $out = join '', <$h2>;
    close $h2; close $cu;
    like($out, qr/status3=200 goaway=0/, "h2: the kept stream 200 after the other's RST_STREAM");
    diag("h2: $out");
    is_deeply([ read_all(20 * $S, $a) ], [200], 'h2: A 200');
    is(`curl -s -o /dev/null -w '%{http_code}' --http2-prior-knowledge http://127.0.0.1:$h2port/services/data/v59.0/h2-after`,
       '200', 'h2: a later request 200');
    end_round();
}

# -- c) send_timeout 1s, a 3 s wait (location has send_timeout 1s) --------------
{
    my $a = start_round('sendtimeout');
    my @b = map { send_req($B->port, "/services/data/v59.0/st-B$_") } 1 .. 3;
    my @s = read_all(20 * $S, $a, @b);
    is_deeply(\@s, [200, 200, 200, 200], 'send_timeout 1s: every waiter 200');
    end_round();
}

# -- d) reload of B while its requests wait ---------------------------------------
{
    my $mark = $B->log_mark;
    my $a = start_round('reload');
    my @b = map { send_req($B->port, "/services/data/v59.0/rl-B$_") } 1 .. 4;
    waiting('reload', $B->port, 4);
    my @old = $B->worker_pids;
    kill 'HUP', $B->{nginx_pid};
    my $t0 = time;
    my @s = read_all(25 * $S, $a, @b);
    is_deeply(\@s, [200, 200, 200, 200, 200], 'reload: A and the 4 waiters on B 200')
        or diag(join "\n", $B->log_lines(qr/\[(warn|error|alert|crit)\]/, $mark));
    ok(time - $t0 < 15 * $S, sprintf('reload: no hang (%.1f s)', time - $t0));
    reloaded('reload', @old);
    is($B->get('/services/data/v59.0/after-reload')->{status}, 200, 'reload: B 200 afterwards');
    end_round();
}

my $tr1 = $t->token_requests;
is($tr1 - $tr0, 4, 'one token request per revoke (4 rounds)');
my $st = $t->mock('stats');
is_deeply($st->{valid_refresh_tokens}, [ $st->{issued_refresh_tokens}[-1] ],
          'no reuse of a rotated-out refresh token');

# -- e) quit of B with worker_shutdown_timeout 1s while requests wait --------------
{
    shutdown_timeout();
    $B->reload;
    RedisTest::all_connected(10, $B)
        or die "quit: B's workers did not connect to Redis after the reload\n";
    my $mark = $B->log_mark;
    my $a = start_round('quit');
    my @b = map { send_req($B->port, "/services/data/v59.0/q-B$_") } 1 .. 3;
    waiting('quit', $B->port, 3);
    my $t0 = time;
    $B->stop;
    my $took = time - $t0;
    ok($took < 5 * $S, sprintf('quit: B gone in %.1f s', $took));
    my @s = read_all(20 * $S, $a, @b);
    is($s[0], 200, 'quit: A 200');
    diag("quit: B waiters got: @s[1..3]");
    diag(join "\n", $B->log_lines(qr/\[(warn|error|alert|crit)\]|signal/, $mark));
    end_round();
    is($A->get('/services/data/v59.0/after-quit')->{status}, 200, 'quit: A 200 afterwards');
}

$_->finish for reverse @n;
ok($redis->finish, 'redis ran to the end');
done_testing;
