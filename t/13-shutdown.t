#!/usr/bin/perl

# A worker that shuts down gracefully (reload) with a token request in
# flight waits for it, so that a rotated refresh token reaches the zone,
# past worker_shutdown_timeout too, up to the credential's timeout.  A
# worker that hangs past its lease deadline is taken over.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use IO::Socket::INET;
use Test::More;
use Time::HiRes qw(sleep time);

my $t = SfTest->new;
$t->start_mock;

sub start_refresh_and_leave {
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $t->port) or die;
    print $s "GET /services/data/leave HTTP/1.1\r\nHost: localhost\r\n\r\n";

    # the client leaves once a worker is refreshing for it
    $t->wait_info(undef, sub { $_[0]{refreshing} }, 10);
    close $s;
}

# the pid of the worker that holds the refresh lease, once one does
sub refreshing_pid {
    for (1 .. 100) {
        my $info = $t->get('/sf_oauth_info')->{json}{credentials}[0];
        return $info->{lease_pid} if $info->{refreshing};
        sleep 0.05;
    }
    return 0;
}

# -- a rotated refresh token arriving during a reload is kept ---------------

$t->mode('rotation');
$t->mock('delay', 'seconds=2');
$t->simple_conf;
$t->start;

start_refresh_and_leave();
my $owner = refreshing_pid();
ok($owner, 'a worker is refreshing; its client has left');

kill 'HUP', $t->{nginx_pid};

# on purpose: a second of the 2 s token request passes, and the old worker
# must not have exited meanwhile
sleep 1;
ok(kill(0, $owner), 'the old worker waits for its token request');

my $start = time;
sleep 0.1 while kill(0, $owner) && time - $start < 10;
ok(!kill(0, $owner), sprintf('and exits when it is done (%.1f s)', time - $start));

my $stats = $t->mock('stats');
is($stats->{token_ok}, 1, 'the token request completed');
my $info = $t->get('/sf_oauth_info')->{json}{credentials}[0];
is($info->{state}, 'valid', 'its token reached the zone');
ok($info->{refresh_token_rotated}, 'and so did the rotated refresh token');

$t->mock('revoke');
my $r = $t->get('/services/data/');
is($r->{status}, 200, 'the next refresh works');
is(scalar @{ $t->mock('stats')->{valid_refresh_tokens} }, 1,
   'with the rotated refresh token: Salesforce revoked nothing');

$t->stop;

# -- past worker_shutdown_timeout: the token request gets its timeout --------

# worker_shutdown_timeout 1s closes every connection of the old worker
# after 1 s; its token request, 2.5 s long, is let run, and the rotated
# refresh token it brings is kept
sub shutdown_conf {
    my (%opt) = @_;

    $t->simple_conf(%opt);
    $t->edit_conf(sub { s/^events/worker_shutdown_timeout 1s;\n\nevents/m });
}

$t->mock('reset');
$t->mode('rotation');
$t->mock('delay', 'seconds=2.5');
shutdown_conf(timeout => '5s');
truncate $t->dir . '/error.log', 0;
$t->start;

start_refresh_and_leave();
$owner = refreshing_pid();
ok($owner, 'a worker is refreshing; its client has left');

my $mark = $t->log_mark;
$start = time;
kill 'HUP', $t->{nginx_pid};
ok($t->wait_log(qr/worker_shutdown_timeout ran out during a token request: the worker exits when it ends, within the credential's timeout/,
                $mark, 10 * SfTest::time_scale()),
   'worker_shutdown_timeout runs out during the token request: a notice');
ok(kill(0, $owner), 'the old worker is still there at worker_shutdown_timeout');
sleep 0.1 while kill(0, $owner) && time - $start < 20 * SfTest::time_scale();
my $took = time - $start;
ok(!kill(0, $owner), sprintf('and exits when its request is done (%.1f s)', $took));

$stats = $t->mock('stats');
is($stats->{token_ok}, 1, 'the token request completed');
$info = $t->get('/sf_oauth_info')->{json}{credentials}[0];
is($info->{state}, 'valid', 'its token reached the zone');
ok($info->{refresh_token_rotated}, 'and so did the rotated refresh token');
unlike($t->error_log, qr/abandoned/, 'nothing was abandoned');

$t->mock('revoke');
$r = $t->get('/services/data/');
is($r->{status}, 200, 'the next refresh works');
is(scalar @{ $t->mock('stats')->{valid_refresh_tokens} }, 1,
   'with the rotated refresh token: Salesforce revoked nothing');

$t->stop;

# -- a hung token endpoint: the old worker exits at the credential's timeout -

$t->mock('reset');
$t->mode('hang');
shutdown_conf(timeout => '3s');
truncate $t->dir . '/error.log', 0;
$t->start;

start_refresh_and_leave();
$owner = refreshing_pid();
ok($owner, 'a worker is refreshing against a hung endpoint');

$start = time;
kill 'HUP', $t->{nginx_pid};
sleep 0.1 while kill(0, $owner) && time - $start < 20 * SfTest::time_scale();
$took = time - $start;
ok(!kill(0, $owner), 'the old worker exits');
ok($took < 6 * SfTest::time_scale(),
   sprintf('at the 3 s timeout, not later (%.1f s)', $took));
like($t->error_log, qr/credential "crm": token request failed.*(timed out|timeout)/i,
     'the timed-out request is logged');

# a timeout is a transient failure: the new workers refresh after the
# first backoff (1 s)
$t->mode('normal');
ok(SfTest::wait_for(5, sub { $t->get('/services/data/')->{status} == 200 }),
   'the new workers refresh after the backoff');

# the metrics count the timed-out request as a transient failure, not as
# dropped, and the new workers' as a success
{
    my $text = $t->get('/sf_oauth_info?format=prometheus')->{content} // '';
    my %result = $text =~ /^sf_oauth_token_requests_total
                           \{credential="crm",zone="sf",result="(\w+)"\}
                           \x20(\d+)$/mgx;
    is_deeply(\%result, { success => 1, transient_failure => 1,
                          operator_failure => 0, dropped => 0 },
              'sf_oauth_token_requests_total: the timed-out request '
              . 'result="transient_failure", the next one result="success"');
}

$t->stop;

# -- a hung owner is taken over at its lease deadline -----------------------

$t->mock('reset');
$t->mode('slow');
$t->simple_conf(timeout => '1s');
truncate $t->dir . '/error.log', 0;
$t->start;

start_refresh_and_leave();
$owner = refreshing_pid();
ok($owner, 'a worker is refreshing');
kill 'STOP', $owner;
$t->mode('normal');

# 1 s timeout + 2 s slack: the lease passes, another worker takes over
$start = time;
my @status;
for (1 .. 15) {
    # a request that lands on the stopped worker times out; the next
    # connection may land on the other
    $r = $t->get('/services/data/', timeout => 2);
    push @status, $r->{status};
    last if $r->{status} == 200;
}
$took = time - $start;
kill 'CONT', $owner;

is($status[-1], 200, 'a request succeeds while the owner is stopped')
    or diag("@status");
ok($took < 15, sprintf('after the lease deadline (%.1f s)', $took));
like($t->error_log, qr/taking over the token refresh of process $owner/,
     'the takeover is logged');

$t->finish;

done_testing;
