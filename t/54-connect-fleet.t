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
use POSIX ();

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

# -- a newer generation stored while the connection's exchange runs ----
#
# Another node may store a newer generation of the old refresh token chain
# while the connection's code exchange is in flight (it refreshed at that
# moment).  The fleet's compare-and-set would drop the connection for it;
# instead the connection is written again over it and is the newest
# generation.  The fleet's generation key is bumped in Redis with redis-cli
# while the exchange waits at the mock (slow), so that node A cannot know
# of it when it stores the connection.

RedisTest::all_synced(5, @n);

my $gen_key = $redis->key('gen');
my $exchanges = @{ $first->stats->{exchange_log} };
$requests = $first->token_requests;
$first->mock('exchange_mode', 'mode=slow&seconds=3');
my $mark = $na->log_mark;

my $pid = fork // die "fork: $!";
if ($pid == 0) {
    # the flow alone; the nodes, the mock and Redis are the parent's
    my $f = eval { $na->connect_flow(credential => 'crm') };
    POSIX::_exit($f && $f->{status} == 200 ? 0 : 1);
}

SfTest::wait_event(10, 'the code exchange began at the mock', sub {
    @{ $first->stats->{exchange_log} } > $exchanges;
});
my $bumped = $redis->cli('INCR', $gen_key);
ok($bumped && $bumped > 1, "the fleet generation bumped to $bumped in Redis "
                           . 'while the exchange runs');

waitpid($pid, 0);
is($? >> 8, 0, 'A: connected from its console, over the newer generation');
$first->mock('exchange_mode', 'mode=normal');
is($first->token_requests, $requests + 1, 'one token request: the exchange');

my $gen = SfTest::wait_for(5, sub {
    my $g = $redis->get($gen_key);
    return defined $g && $g > $bumped ? $g : undef;
});
ok($gen, 'Redis: the connection is a newer generation than the bumped one ('
         . ($gen // $redis->get($gen_key) // 'none') . " > $bumped)");

my $new_gen = $gen // 0;
my $notice = '\[notice\].*credential "crm": the connection overwrote '
           . "fleet generation $bumped,.* it is fleet generation $new_gen\\b";
ok($na->wait_log(qr/$notice/m,
                 $mark, 5 * SfTest::time_scale()),
   'A: a notice names the credential and both generations')
    or diag($na->error_log_since($mark));

my @code_tokens = @{ $first->stats->{code_access_tokens} || [] };
$fp = $na->cred_info('crm')->{token_fp};
$c = $nb->wait_info('crm', sub { ($_[0]{token_fp} // '') eq $fp }, 5);
ok($c && $c->{generation}, 'B took the connection\'s token from the fleet');

$r = $nb->get($api);
is($r->{status}, 200, 'B serves with it');
($auth) = $r->{content} =~ /"authorization":\s*"Bearer ([^"]+)"/;
is($auth, $code_tokens[-1],
   'B\'s request carries the second exchange\'s access token');
is($first->token_requests, $requests + 1, 'B made no token request');

# the fleet refreshes with the connection's refresh token chain: B's next
# refresh presents the exchange's refresh token, and nothing rotated out
my $uses = $first->stats->{authorize}{refresh_uses};
$first->mode('rotation');
$first->mock('revoke');
$r = $nb->get($api);
is($r->{status}, 200, 'B: 200 after the access tokens were revoked');
my $s = $first->stats;
is($s->{authorize}{refresh_uses}, $uses + 1,
   'B refreshed with a refresh token of a code exchange');
my @issued_rt = @{ $s->{issued_refresh_tokens} || [] };
my ($second_rt) = grep { $issued_rt[$_] eq $s->{code_refresh_tokens}[-1] }
                  0 .. $#issued_rt;
is($s->{refresh_log}[-1][0], $second_rt,
   'B\'s refresh presented the second connection\'s refresh token');
my @bad = grep { $_->[1] ne 'ok' } @{ $s->{refresh_log} || [] };
is(scalar @bad, 0, 'every refresh grant presented a live refresh token '
                   . '(no rotated-out one reused)')
    or diag(explain \@bad);

RedisTest::finish_all($redis, @n);
done_testing;
