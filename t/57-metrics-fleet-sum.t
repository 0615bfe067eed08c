#!/usr/bin/perl

# In a fleet, the sum over result of sf_oauth_token_requests_total is the
# JSON's token_requests once no token request is in flight: a worker that
# takes its node's lease and learns from Redis that another node refreshed
# (no token request) counts nothing.  A token request is counted when it
# begins, not when the lease is taken.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use RedisTest;
use Test::More;
use Time::HiRes qw(sleep time);

my $t = SfTest->new(mock_args => ['--token-delay', '0.3']);
$t->start_mock;
$t->mode('rotation');
my $redis = RedisTest->new(dir => $t->dir);
$redis->start;

my @n = RedisTest::fleet(redis => $redis, first => $t, n => 2);
ok(RedisTest::all_connected(5, @n), 'connected');
is($n[0]->get('/services/data/v59.0/warm')->{status}, 200, 'warm');

for my $round (1 .. 3) {
    $t->mock('revoke');
    my @s = $t->parallel(20, "/services/data/v59.0/r$round",
                         ports => [ map { $_->port } @n ]);
    diag("round $round: " . RedisTest::tally(@s));
}
sleep 1;

my $i = 0;
for my $node (@n) {
    $i++;
    my $json = $node->cred_info->{token_requests};
    my $text = $node->get('/sf_oauth_info?format=prometheus')->{content};
    my %res;
    while ($text =~ /^sf_oauth_token_requests_total\{[^}]*result="(\w+)"\} (\d+)/mg) {
        $res{$1} += $2;
    }
    my $sum = 0;
    $sum += $_ for values %res;
    diag("node $i: JSON token_requests $json; by result: "
         . join(', ', map { "$_=$res{$_}" } sort keys %res));
    is($sum, $json, "node $i: the sum over result is the JSON's token_requests");
}
diag('mock token requests: ' . $t->token_requests);

RedisTest::finish_all($redis, @n);

done_testing;
