#!/usr/bin/perl

# A connection from the console in a fleet (sf_oauth_zone ... redis=): the
# tokens that node A's console gets are written to Redis with the fleet's
# compare-and-set, and node B serves with them within a second, with no
# token request of its own.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use RedisTest;
use Test::More;
use Time::HiRes ();

my $first = SfTest->new;
$first->start_mock;

my $redis = RedisTest->new(dir => $first->dir);
$redis->start;

my @n = RedisTest::fleet(redis => $redis, first => $first, n => 2,
                         start => 0);
my ($na, $nb) = @n;

# node A has a console
$na->edit_conf(sub {
    s{(\n\s*location = /sf_oauth_info \{)}
     {\n        location /sf_oauth/ {\n            sf_oauth_console;\n        }\n$1};
});
$_->start for @n;
ok(RedisTest::all_connected(5, @n), 'both nodes are connected to Redis');

my $api = '/services/data/v59.0/sobjects';
is($na->get($api)->{status}, 200, 'A: 200');
is($nb->get($api)->{status}, 200, 'B: 200');
RedisTest::all_synced(5, @n);

my $requests = $first->token_requests;
my $gen_b = $nb->cred_info('crm')->{generation};

my $f = $na->connect_flow(credential => 'crm');
is($f->{status}, 200, 'A: connected from its console')
    or diag($f->{flow_error});
is($first->token_requests, $requests + 1, 'one token request: the exchange');

my $fp = $na->cred_info('crm')->{token_fp};
my $t0 = Time::HiRes::time();
my $c = SfTest::wait_for(1, sub {
    my $c = $nb->cred_info('crm');
    return $c && ($c->{token_fp} // '') eq $fp ? $c : undef;
});
ok($c, sprintf('B has the connected token within 1 s (%.2f s)',
               Time::HiRes::time() - $t0));
ok($c && $c->{generation} > $gen_b, 'B: a newer generation');

my $r = $nb->get($api);
is($r->{status}, 200, 'B serves with it');
is($first->token_requests, $requests + 1, 'B made no token request');
my ($auth) = $r->{content} =~ /"authorization":\s*"Bearer ([^"]+)"/;
my @issued = $first->tokens;
is($auth, $issued[-1], 'B\'s request carries the exchange\'s access token');

RedisTest::finish_all($redis, @n);
done_testing;
