#!/usr/bin/perl

# The refresh lease: when the worker that owns a refresh dies, another
# worker takes the refresh over; nobody waits for a dead owner.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use Test::More;
use POSIX ();
use Time::HiRes qw(sleep time);

my $t = SfTest->new;
$t->{allow_alerts} = qr/worker process \d+ exited on signal 9/;
$t->start_mock;
# the owner's token request hangs, the takeover's is answered
$t->mode('hang_once');
$t->simple_conf(timeout => '30s');
$t->start;

# a request starts the refresh; the token endpoint hangs
my $pid = fork() // die;
if ($pid == 0) {
    $t->{nginx_pid} = undef;
    $t->{mock_pid} = undef;
    $t->get('/services/data/', timeout => 60);
    exit 0;
}

my $owner;
for (1 .. 100) {
    my $info = $t->get('/sf_oauth_info')->{json}{credentials}[0];
    if ($info->{refreshing}) {
        $owner = $info->{lease_pid};
        last;
    }
    sleep 0.05;
}
ok($owner, 'a worker holds the refresh lease');

# the lease comes a moment before the request reaches Salesforce
my $sent = 0;
for (1 .. 100) {
    $sent = $t->token_requests;
    last if $sent;
    sleep 0.05;
}
is($sent, 1, 'one token request in flight');

# the owner dies
my $start = time;
kill 'KILL', $owner;

# the first client waited in either worker: if in the other one, its
# wait ends with the takeover
waitpid($pid, 0);

my $r = $t->get('/services/data/v59.0/');
my $took = time - $start;

is($r->{status}, 200, 'after the owner died: 200') or diag("$r->{status} $r->{content}");
ok($took < 5, sprintf('taken over in %.2f s, not after the 30 s lease', $took));
is($t->token_requests, 2, 'one more token request');
like($t->error_log, qr/credential "crm": taking over the token refresh of process $owner/,
     'the takeover is logged');

# the dead owner's request, still hanging at the mock, is let go
$t->mode('normal');

$t->finish;

# -- the takeover meets the dead owner's request at Salesforce -----------------

# The owner is killed while its token request is at the endpoint, which
# takes 2 s: the takeover starts at once and presents the same refresh
# token, and Salesforce answers "token request is already being processed".
# That is retried quickly while the requests keep waiting, until the dead
# owner's request is through and the refresh token is free again.

my $u = SfTest->new;
$u->{allow_alerts} = qr/worker process \d+ exited on signal 9/;
$u->start_mock;
$u->mock('delay', 'seconds=2');
$u->simple_conf;
$u->start;

my $statuses = $u->dir . '/statuses';
my $kid = fork() // die;
if ($kid == 0) {
    $u->{nginx_pid} = undef;
    $u->{mock_pid} = undef;
    my @s = $u->parallel(40, '/services/data/v59.0/sobjects', timeout => 30);
    open my $fh, '>', $statuses or die;
    print $fh "@s";
    close $fh;
    POSIX::_exit(0);
}

undef $owner;
for (1 .. 200) {
    my $info = $u->get('/sf_oauth_info')->{json}{credentials}[0];
    if ($info->{refreshing} && $u->token_requests) {
        $owner = $info->{lease_pid};
        last;
    }
    sleep 0.02;
}
ok($owner, 'a worker holds the lease, its token request at the endpoint');

kill 'KILL', $owner;
waitpid($kid, 0);

open my $fh, '<', $statuses or die "no statuses: $!";
my @s = split ' ', scalar <$fh>;
close $fh;

my %n;
$n{$_}++ for @s;
diag(join ', ', map { "$n{$_} x $_" } sort keys %n);

is(scalar @s, 40, '40 answers');
is($n{502} // 0, 0, 'no 502: the takeover did not fail the waiters');
is(($n{200} // 0) + ($n{0} // 0), 40,
   'every request got 200, but those reset with the killed worker');
ok(($n{200} // 0) > 0, 'the waiters of the other worker got 200');
like($u->error_log, qr/taking over the token refresh of process $owner/,
     'the takeover is logged');
like($u->error_log, qr/token request is already being processed/,
     'the takeover collided with the dead owner\'s request');
unlike($u->error_log, qr/timed out waiting for the token refresh/,
       'nobody timed out waiting');

$r = $u->get('/services/data/v59.0/');
is($r->{status}, 200, 'afterwards: 200');
is($r->{headers}{'x-sf-oauth-status'}, 'HIT', 'afterwards: the token is cached');

$u->finish;

done_testing;
