#!/usr/bin/perl

# The refresh lease: when the worker that owns a refresh dies, another
# worker takes the refresh over; nobody waits for a dead owner.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use Test::More;
use Time::HiRes qw(sleep time);

my $t = SfTest->new;
$t->{allow_alerts} = qr/worker process \d+ exited on signal 9/;
$t->start_mock;
$t->mode('hang');
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

# the owner dies; the endpoint works again
my $start = time;
kill 'KILL', $owner;
$t->mode('normal');

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

$t->finish;

done_testing;
