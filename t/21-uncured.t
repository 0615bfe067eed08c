#!/usr/bin/perl

# 401s that a refresh does not cure, and a real revocation after them.
# The storm protection is scoped to the token: an endpoint that always
# answers 401 costs a few token requests a minute, other requests keep
# working meanwhile, and a real revocation is still cured: no client sees
# the revoked token's 401.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use Test::More;
use Time::HiRes qw(sleep time);

my $t = SfTest->new;
$t->start_mock;
$t->simple_conf;
$t->start;

is($t->get('/services/data/')->{status}, 200, 'warm-up: 200');

# -- one endpoint that no refresh cures ------------------------------------

my $before = $t->token_requests;
my $start = time;
my (%e, %h);

while (time - $start < 8) {
    my $r = $t->get('/services/data/uncurable?reject=1');
    $e{ $r->{status} }++;

    $r = $t->get('/services/data/fine');
    $h{ $r->{status} }++;
}

my $spent = $t->token_requests - $before;
my $secs = time - $start;

is(join(',', keys %e), '401', 'the uncurable endpoint: its 401s reach the client');
is(join(',', keys %h), '200', 'the other endpoints: 200 all along')
    or diag(explain \%h);
cmp_ok($spent, '>=', 2, "a refresh was tried again ($spent in ${\ int $secs} s)");
cmp_ok($spent, '<=', 5,
       "the uncurable endpoint cost at most 5 token requests in 8 s ($spent)");
like($t->error_log, qr/a refresh does not cure this 401/,
     'the log says a refresh does not cure it');

# -- then Salesforce really revokes the token ------------------------------

$t->mock('revoke');
$before = $t->token_requests;

my @status;
my $slowest = 0;
for my $i (1 .. 10) {
    my $t0 = time;
    push @status, $t->get("/services/data/after-revoke-$i")->{status};
    $slowest = time - $t0 if time - $t0 > $slowest;
}

is("@status", join(' ', (200) x 10),
   'after a real revocation no client sees a 401');
is($t->token_requests, $before + 1, 'one refresh cured it');
cmp_ok($slowest, '<', 16, "the longest wait was bounded (${\ sprintf '%.1f', $slowest} s)");

# a replay that succeeded reset the interval: a new 401 refreshes at once
$t->mock('revoke');
my $again = time;
is($t->get('/services/data/again')->{status}, 200, 'the next revocation: 200');
cmp_ok(time - $again, '<', 1, 'cured at once, without waiting');

my $info = $t->get('/sf_oauth_info')->{json}{credentials}[0];
ok($info->{rejected_tokens} >= 3, "rejected tokens counted ($info->{rejected_tokens})");

$t->finish;

done_testing;
