#!/usr/bin/perl

# A fleet node's old worker keeps its token request past
# worker_shutdown_timeout, while nginx's shutdown timer closes its Redis
# connection then: the rotated refresh token still reaches Redis, and
# another node refreshes with the live refresh token (no reuse of a
# rotated-out one).  SIG=QUIT runs it with a quit of A instead of a
# reload (A's own checks are then skipped).

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use RedisTest;
use IO::Socket::INET;
use Test::More;
use Time::HiRes qw(sleep time);

my $S = SfTest::time_scale();

my $t = SfTest->new;
$t->start_mock;
$t->mode('rotation');
my $redis = RedisTest->new(dir => $t->dir);
$redis->start;

my @n = RedisTest::fleet(redis => $redis, first => $t, n => 2, start => 0,
                         credential => { timeout => '5s' });
my ($A, $B) = @n;
$A->edit_conf(sub { s/^events/worker_shutdown_timeout 1s;\n\nevents/m });
$_->start for @n;

ok(RedisTest::all_connected(5, @n), 'connected');
is($A->get('/services/data/v59.0/warm')->{status}, 200, 'warm');
RedisTest::all_synced(10, @n);

# A refreshes (2.5 s at the mock), its client leaves, A reloads
$t->mock('delay', 'seconds=2.5');
$t->mock('revoke');

my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $A->port)
    or die;
print $s "GET /services/data/leave HTTP/1.1\r\nHost: localhost\r\n\r\n";
$A->wait_info(undef, sub { $_[0]{refreshing} }, 10);
close $s;

my $owner;
for (1 .. 100) {
    my $info = $A->get('/sf_oauth_info')->{json}{credentials}[0];
    if ($info->{refreshing} && $info->{lease_pid}) { $owner = $info->{lease_pid}; last }
    sleep 0.05;
}
diag("owner: " . ($owner // 'none'));
my $tr = $t->token_requests;
my $mark = $A->log_mark;
my $sig = $ENV{SIG} // 'HUP';
kill $sig, $A->{nginx_pid};

my $start = time;
sleep 0.1 while $owner && kill(0, $owner) && time - $start < 20 * $S;
ok($owner && !kill(0, $owner),
   sprintf('the old worker exits (%.1f s)', time - $start));

$t->mock('delay', 'seconds=0');
my $st = $t->stats;
is($st->{token_ok}, 2, 'the token request of the old worker completed');

diag("A's log since the reload:\n" . join "\n",
     $A->log_lines(qr/sf_oauth|redis|alert|crit|open socket/i, $mark));

# the fleet agrees again
my @live = $sig eq 'QUIT' ? ($B) : @n;
my $synced = eval { RedisTest::all_synced(10, @live); 1 };
ok($synced, 'the nodes in step with Redis after the reload');
for my $node (@live) {
    my $r = RedisTest::node_redis($node) || {};
    diag("node " . $node->port . ": connected=" . ($r->{connected} // '-')
         . " unsynced=" . ($r->{unsynced} // '-')
         . " gen=" . ($r->{fleet_generation} // '-'));
}

# B must refresh with the refresh token that A's old worker got
$t->mock('revoke');
is($B->get('/services/data/v59.0/b')->{status}, 200, 'B: 200 after a revoke');
is($A->get('/services/data/v59.0/a')->{status}, 200, 'A: 200 after it')
    if $sig ne 'QUIT';

RedisTest::no_reuse($t, 'after the shutdown-timeout refresh');

unlike($A->error_log, qr/open socket|\[alert\]/, 'no alert in A\'s log');

RedisTest::finish_all($redis, @n);

done_testing;
