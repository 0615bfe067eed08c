#!/usr/bin/perl

# 200 concurrent cold requests over 2 workers share exactly one token
# request; none of them fails.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use Test::More;

# a token request slow enough that every request arrives while it runs
my $t = SfTest->new(mock_args => ['--token-delay', '0.5']);
$t->start_mock;
$t->simple_conf(
    http_extra => "    log_format pid '\$pid \$sf_oauth_status';\n",
    location_extra => "            access_log %%DIR%%/pid.log pid;\n");
$t->start;

my @workers = $t->worker_pids;
is(scalar @workers, 2, 'nginx runs 2 workers');

my @status = $t->parallel(200, '/services/data/v59.0/sobjects');

is(scalar(grep { $_ == 200 } @status), 200, '200 concurrent cold requests: all 200')
    or diag(join ' ', @status);
is($t->token_requests, 1, 'exactly 1 token request');

# both workers had requests waiting: the one refresh was shared across them
my %waiters;
$waiters{$_}++ for $t->slurp('pid.log') =~ /^(\d+) WAIT$/mg;
is(scalar keys %waiters, 2, 'requests waited in both workers')
    or diag(explain \%waiters);

like($t->error_log, qr/new access token fp:[0-9a-f]{8}/,
     'the refresh is logged with a fingerprint');

# a second wave, hot: no token request
@status = $t->parallel(200, '/services/data/v59.0/sobjects');
is(scalar(grep { $_ == 200 } @status), 200, '200 concurrent hot requests: all 200');
is($t->token_requests, 1, 'still exactly 1 token request');

$t->finish;

done_testing;
