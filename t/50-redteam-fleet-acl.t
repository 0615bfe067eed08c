#!/usr/bin/perl

# A Redis ACL user that lacks a command of the fleet's scripts (issue 18
# red team): an ACL written for an older version of the module, whose
# scripts did not run GETRANGE.  EVAL is allowed, so the connection is up
# and every script fails inside Redis.
#   - a node that needs a token, with redis_down fail: 502 and no token
#     request (fail closed), and the error line says what Redis refused and
#     what the ACL user needs (the commands, the keys, the channel);
#   - a node that holds a token when the right is taken away: its
#     periodic read fails every second, and says so, once, with the same
#     advice (it used to say nothing: the node silently stopped following
#     the fleet); once the right is back, the read works again, and the
#     next loss is said again.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use RedisTest;
use Test::More;
use Time::HiRes qw(sleep time);

my $S = SfTest::time_scale();
my $ADVICE = qr/the ACL user of sf_oauth_redis "fleet" needs the commands EVAL, GET, GETRANGE, SET, DEL, PEXPIRE, PUBLISH, SUBSCRIBE and PING, the keys "sf_oauth:\*" and the channel "sf_oauth:events"/;

sub count_since {
    my ($node, $mark, $re) = @_;
    my @l = grep { /$re/ } split /\n/, $node->error_log_since($mark);
    return scalar @l;
}

# the EVALs that Redis ran without an error, and those that failed
sub evals_ok { (evals($_[0]))[0] }
sub evals_failed { (evals($_[0]))[1] }

sub evals {
    my ($redis) = @_;

    my $info = $redis->cli('INFO', 'commandstats') // '';
    return (0, 0)
        unless $info =~ /^cmdstat_eval:calls=(\d+).*failed_calls=(\d+)/m;
    return ($1 - $2, $2);
}

my $first = SfTest->new;
$first->start_mock;
my $redis = RedisTest->new(dir => $first->dir, user => 'fleet',
                           user_password => 'acl-pass-0123');
$redis->start;

# -- the lease script refused ----------------------------------------------------

is($redis->cli('ACL', 'SETUSER', 'fleet', '-getrange'), 'OK',
   'the ACL user loses GETRANGE');

my @n = RedisTest::fleet(redis => $redis, first => $first, n => 1,
                         redis_conf => [ redis_down => 'fail' ]);
my $node = $n[0];
ok(RedisTest::all_connected(5, $node),
   'the node is connected (AUTH works, EVAL is allowed)');

my $r = $node->get('/services/data/v59.0/cold');
is($r->{status}, 502, 'a request that needs a token: 502 (redis_down fail)');
is($first->token_requests, 0, 'no token request');

my $log = $node->error_log;
like($log, qr/\[error\].*Redis refused the lease script: "[^"]*"; $ADVICE/,
     'the error line says what Redis refused and what the ACL user needs');

# -- the periodic read refused ---------------------------------------------------

is($redis->cli('ACL', 'SETUSER', 'fleet', '+getrange'), 'OK',
   'the ACL user gets GETRANGE back');
ok(RedisTest::wait_for(5, sub {
       $node->get('/services/data/v59.0/warm')->{status} == 200 }),
   'then: 200');
ok(RedisTest::wait_for(3, sub {
       ((RedisTest::node_redis($node) || {})->{fleet_generation} // 0) >= 1 }),
   'the node at fleet generation 1');

my $mark = $node->log_mark;
is($redis->cli('ACL', 'SETUSER', 'fleet', '-getrange'), 'OK',
   'the ACL user loses GETRANGE again');

my $read = qr/\[error\].*the fleet's periodic read: Redis refused it: "[^"]*"; $ADVICE/;
ok(RedisTest::wait_for(4, sub { count_since($node, $mark, $read) >= 1 }),
   'the periodic read says that Redis refused it, with the advice')
    or diag($node->error_log_since($mark));

# two workers, a read a second each: 6 more refused, still one line per
# worker
my $failed = evals_failed($redis);
ok(RedisTest::wait_for(6, sub { evals_failed($redis) >= $failed + 6 }),
   'six more periodic reads refused');
cmp_ok(count_since($node, $mark, $read), '<=', 2,
       'said once per worker, not every second');
is($node->get('/services/data/v59.0/still')->{status}, 200,
   'the node still serves with the token it has');

# the right back: the reads work; taken again: said again
is($redis->cli('ACL', 'SETUSER', 'fleet', '+getrange'), 'OK',
   'GETRANGE back');
$mark = $node->log_mark;
my $ok0 = evals_ok($redis);
ok(RedisTest::wait_for(4, sub { evals_ok($redis) >= $ok0 + 3 }),
   'the periodic reads work again');
is($redis->cli('ACL', 'SETUSER', 'fleet', '-getrange'), 'OK',
   'GETRANGE taken again');
ok(RedisTest::wait_for(4, sub { count_since($node, $mark, $read) >= 1 }),
   'said again after a read that worked');

# -- ROLE refused: a fixed address is taken, its role not known -------------------

is($redis->cli('ACL', 'SETUSER', 'fleet', '+getrange', '-role'), 'OK',
   'the ACL user loses ROLE');
$redis->cli('CLIENT', 'KILL', 'USER', 'fleet');
ok(RedisTest::wait_for(5, sub {
       my $i = RedisTest::node_redis($node) || {};
       $i->{connected} && exists $i->{role} && !defined $i->{role} }),
   'ROLE refused on a fixed address: connected again, role null (not known)')
    or diag(explain(RedisTest::node_redis($node)));
ok(RedisTest::all_connected(5, $node), 'every worker connected without ROLE');
is($node->get('/services/data/v59.0/no-role')->{status}, 200,
   'a request: 200');

unlike($node->error_log, qr/\[(alert|emerg|crit)\]/,
       'no alert, emerg or crit');

$_->finish for @n;
$redis->finish;

done_testing();
