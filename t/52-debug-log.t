#!/usr/bin/perl

# The debug log (error_log ... debug; Debian's nginx is built --with-debug)
# of one fleet node: a line at each decision of a refresh under the
# fleet's lease, of a 401 replay, and of a lease that another node holds;
# the periodic read and a message of the channel; and no access token,
# refresh token or client secret anywhere in it (as t/18 looks: no
# 12-character prefix of any).  nginx's own lines of the module's
# connections say what the connection was for: a connect() to a Redis
# that went down, at info, once per connection, "while connecting to
# Redis".

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use RedisTest;
use Test::More;
use Time::HiRes qw(sleep);

plan skip_all => 'nginx is not built --with-debug'
    unless `$SfTest::NGINX -V 2>&1` =~ /--with-debug/;

my $first = SfTest->new(log_level => 'debug');
$first->start_mock;
$first->mode('rotation');

my $redis = RedisTest->new(dir => $first->dir);
$redis->start;

my ($node) = RedisTest::fleet(redis => $redis, first => $first, n => 1);
ok(RedisTest::all_connected(5, $node), 'the node is connected to Redis');

# Waits up to 3 s (times time_scale) for a line matching RE after MARK;
# the fleet's replies may come after the request's answer.
sub logged {
    my ($re, $mark, $what) = @_;
    my $ok = RedisTest::wait_for(3, sub {
        scalar $node->log_lines($re, $mark);
    });
    ok($ok, $what) or diag("no line matching $re");
}

my $owner = qr/"[^"]+:\d+:[0-9a-f]{8}"/;

# -- a refresh under the fleet's lease ---------------------------------------

my $mark = $node->log_mark;
is($node->get('/services/data/v59.0/')->{status}, 200, 'refresh: 200');

logged($_->[0], $mark, "refresh: $_->[1]") for (
    [ qr/\[debug\].*sf_oauth: credential "crm": the lease is this process's \(\d+\): asking the fleet first/,
      'the node lease, and what is done with it' ],
    [ qr/\[debug\].*sf_oauth: credential "crm": asking the fleet for its lease, over generation 0/,
      'the fleet is asked' ],
    [ qr/\[debug\].*sf_oauth: credential "crm": fleet lease taken over generation 0 as $owner/,
      'the fleet lease taken, with its owner' ],
    [ qr/\[debug\].*sf_oauth: credential "crm": refreshing with this node's refresh token/,
      "the node's refresh token, Redis having none" ],
    [ qr/\[debug\].*sf_oauth: client: request started \(requesting a token from the token endpoint\)/,
      'the client starts the token request' ],
    [ qr/\[debug\].*sf_oauth: client: request finished \(requesting a token from the token endpoint\) after \d+ ms: HTTP 200/,
      'the client finishes it' ],
    [ qr/\[debug\].*sf_oauth: credential "crm": the token request answered in \d+ ms, HTTP 200: a token/,
      'the answer classified' ],
    [ qr/\[debug\].*sf_oauth: credential "crm": the outcome is stored, and the lease of process \d+ released/,
      'the node lease released' ],
    [ qr/\[debug\].*sf_oauth: credential "crm": waking the waiting requests of process \d+/,
      'the waiters woken' ],
    [ qr/\[debug\].*sf_oauth: credential "crm": writing the token to the fleet over generation 0/,
      'the token written to the fleet' ],
    [ qr/\[debug\].*sf_oauth: credential "crm": the token is fleet generation 1 in Redis, the lease given back/,
      'the fleet generation written, the lease given back' ],
);

# -- a 401 replay ----------------------------------------------------------------

$mark = $node->log_mark;
$first->mock('revoke');
is($node->get('/services/data/v59.0/again')->{status}, 200,
   'replay: the 401 is cured, 200');

logged($_->[0], $mark, "replay: $_->[1]") for (
    [ qr/\[debug\].*sf_oauth: credential "crm": replaying the request/,
      'the replay' ],
    [ qr/\[debug\].*sf_oauth: credential "crm": asking the fleet for its lease, over generation 1/,
      'the fleet is asked over generation 1' ],
    [ qr/\[debug\].*sf_oauth: credential "crm": fleet lease taken over generation 1 as $owner/,
      'the fleet lease taken' ],
    [ qr/\[debug\].*sf_oauth: credential "crm": the record of fleet generation 1 decrypts/,
      "the fleet's record read" ],
    [ qr/\[debug\].*sf_oauth: credential "crm": refreshing with the fleet's refresh token/,
      "the fleet's refresh token used" ],
    [ qr/\[debug\].*sf_oauth: credential "crm": the token is fleet generation 2 in Redis, the lease given back/,
      'fleet generation 2 written' ],
);

# -- a lease that another node holds -----------------------------------------------

$mark = $node->log_mark;
$redis->cli('SET', $redis->key('lease'), 'other-host:4242:deadbeef',
            'PX', 600 * SfTest::time_scale());
$first->mock('revoke');
is($node->get('/services/data/v59.0/held')->{status}, 200,
   'held: 200 once the other lease expired');

logged($_->[0], $mark, "held: $_->[1]") for (
    [ qr/\[debug\].*sf_oauth: credential "crm": fleet lease held by "other-host:4242:deadbeef" at generation 2: asking again in \d+ ms/,
      'the other owner waited for' ],
    [ qr/\[debug\].*sf_oauth: credential "crm": fleet lease taken over generation 2 as $owner/,
      'then the lease taken' ],
    [ qr/\[debug\].*sf_oauth: credential "crm": the token is fleet generation 3 in Redis/,
      'fleet generation 3 written' ],
);

# -- the periodic read and a message of the channel ------------------------------

$mark = $node->log_mark;
$redis->publish($redis->events_channel, 'sf:crm:3');

logged($_->[0], $mark, "sync: $_->[1]") for (
    [ qr/\[debug\].*sf_oauth: credential "crm": a message of the fleet's channel: reading the fleet/,
      'a message of the channel' ],
    [ qr/\[debug\].*sf_oauth: credential "crm": fleet generation 3 in Redis, 3 here: nothing newer/,
      'the generations compared' ],
);

# -- Redis goes down: nginx's line of the connect() says what it was for -----------

$mark = $node->log_mark;
$redis->stop;

logged(qr/\[info\].*connect\(\) failed \(111: Connection refused\) while connecting to Redis/,
       $mark, 'Redis down: connect() failed, at info, while connecting to Redis');
sleep 2 * SfTest::time_scale();
my @info = $node->log_lines(qr/\[info\].*connect\(\) failed/, $mark);
ok(@info <= 4, 'Redis down: at most one such line per connection and worker ('
               . scalar(@info) . ')') or diag(join "\n", @info);
is(scalar $node->log_lines(qr/\[error\].*connect\(\) failed/, $mark), 0,
   'Redis down: none at error (the outage is the module\'s one line)');

$redis->start;
ok(RedisTest::all_connected(5, $node), 'Redis back: connected again');

# -- no secret in the log -----------------------------------------------------------

my $stats = $first->mock('stats');
my @secrets = ($SfTest::CLIENT_SECRET, $SfTest::REFRESH_TOKEN,
               @{ $stats->{issued_access_tokens} },
               @{ $stats->{issued_refresh_tokens} });
ok(@{ $stats->{issued_access_tokens} } >= 3, 'secrets: 3 access tokens issued');
ok(@{ $stats->{issued_refresh_tokens} } >= 4, 'secrets: refresh tokens rotated');

$node->stop;

my $log = $node->error_log;
ok(length $log > 10000, 'secrets: the debug log was written');
my @found = grep { index($log, substr($_, 0, 12)) >= 0 } @secrets;
is(scalar @found, 0, 'secrets: no 12-character prefix of any in the debug log')
    or diag(map { substr($_, 0, 12) . "...\n" } @found);

$node->finish;
ok($redis->finish, 'redis-server was running until the end');

done_testing;
