#!/usr/bin/perl

# A fleet when Redis fails, or lies:
#
#   - Redis not running when nginx starts: nginx starts, one error line,
#     requests work; Redis comes: coordination resumes
#   - Redis killed (-9) and restarted under load: no error for a client,
#     at most one "not coordinated" line per outage and node, after the
#     restart one token request per revoke for the fleet again
#   - redis_down fail: a refresh while Redis is down is a 502, with no
#     token request
#   - TLS with ca_file (and a wrong CA), password, ACL user, password_file,
#     env:, database, unix socket: connected, or one clear error line
#   - a bad value in Redis (garbage, truncated, tampered, another key's,
#     another zone's): an error line, no crash, the node keeps its token
#   - no secret in clear in Redis
#
# Redis restarts empty here (no persistence): the record and the fleet
# generation are gone after a restart.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use RedisTest;
use Digest::SHA qw(sha256_hex);
use Test::More;
use Time::HiRes qw(sleep time);

my $S = SfTest::time_scale();
my @everyone;    # nodes and servers to finish at the end


sub connected {
    my ($node) = @_;
    my $r = RedisTest::node_redis($node) or return undef;
    return $r->{connected} ? 1 : 0;
}

sub all_connected {
    my (@nodes) = @_;
    return RedisTest::all_connected(5, @nodes);
}

# The [error] lines of NODE's log after MARK about Redis: they name the
# server, Redis or the sf_oauth_redis block ("fleet"); not the "not
# coordinated" ones of a refresh
sub redis_errors {
    my ($node, $server, $mark) = @_;
    return grep { !/not coordinated/ }
           $node->log_lines(qr/\[error\].*(?:\Q$server\E|redis|"fleet")/i, $mark);
}

sub not_coordinated {
    my ($node, $mark) = @_;
    return $node->log_lines(qr/\[error\].*not coordinated/, $mark);
}

# Waits until each node logged an error about Redis, then until the
# nodes tried again, which must not log again: with REDIS running, until
# it accepted 4 more connections per node (each worker has two, opened
# again after 100 ms, doubling); with none, 2 s pass.
sub settle {
    my ($redis, @nodes) = @_;
    for my $node (@nodes) {
        SfTest::wait_event(5, 'an error line about Redis on node '
                              . $node->port,
                           sub { scalar redis_errors($node, 'Redis') });
    }
    if (!$redis->running) {
        sleep 2;    # on purpose: nothing counts the retries; 2 s hold four
        return;
    }
    my $base = $redis->connections;
    SfTest::wait_event(10, 'the nodes connecting to Redis again', sub {
        $redis->connections >= $base + 4 * @nodes });
}

# Waits until each node of NODES logged since its MARK (an arrayref) that
# Redis is gone.
sub outage_seen {
    my ($what, $redis, $mark, @nodes) = @_;
    for my $i (0 .. $#nodes) {
        SfTest::wait_event(10, "$what: node " . ($i + 1) . ' logging the outage',
                           sub { scalar redis_errors($nodes[$i], $redis->server,
                                                     $mark->[$i]) });
    }
}

# Revokes the token and waits until each node of NODES made a token
# request of its own (sf_oauth_info's token_requests, the node's), then
# answered LOAD with 200.
sub revoke_and_refresh {
    my ($what, $t, $load, @nodes) = @_;
    my @tr = map { ($_->cred_info || {})->{token_requests} // 0 } @nodes;
    $t->mock('revoke');
    for my $i (0 .. $#nodes) {
        $nodes[$i]->wait_info_event(undef, "$what: node " . ($i + 1)
                                           . ' refreshing on its own',
                                    sub { $_[0]{token_requests} > $tr[$i] });
    }
    $load->wait_all_ok(10, time, "$what: a 200 from every node after its "
                                 . 'refresh');
}

# A fleet of N nodes with its own mock; undef if nginx -t refuses it (a
# failed test then).
sub fleet {
    my (%opt) = @_;

    my @n = RedisTest::fleet(%opt, start => 0);
    push @everyone, @n;
    my ($rc, $out) = $n[0]->test_conf;
    is($rc, 0, "nginx -t takes the configuration ($opt{what})") or do {
        diag($out);
        return;
    };
    $_->start for @n;
    return @n;
}

# -- configuration: nginx -t ------------------------------------------------------

SECTION_CONF: {
    my $t = SfTest->new;
    my $redis = RedisTest->new(dir => $t->dir);    # never started
    my $dir = $t->dir;
    my $key = RedisTest::write_key($t);

    open my $fh, '>', "$dir/open.pass" or die;
    print $fh "pass\n";
    close $fh;
    chmod 0644, "$dir/open.pass";

    my $check = sub {
        my ($what, $block, $zone, $expect) = @_;
        $t->simple_conf(http_pre => $block, zone_params => $zone);
        my ($rc, $out) = $t->test_conf;
        if ($expect) {
            isnt($rc, 0, "nginx -t refuses $what");
            like($out, $expect, "nginx -t: $what: says so") or diag($out);
        } else {
            is($rc, 0, "nginx -t takes $what") or diag($out);
        }
    };
    my $zone = "zone=sf:1m key=$key redis=fleet";

    $check->('the fleet configuration', $redis->conf_block, $zone);
    $check->('a host name as server', $redis->conf_block(server => 'localhost:' . $redis->port), $zone);
    $check->('redis= without key=', $redis->conf_block, 'zone=sf:1m redis=fleet',
             qr/key=/);
    $check->('redis= naming no sf_oauth_redis', $redis->conf_block,
             "zone=sf:1m key=$key redis=nosuch", qr/nosuch/);
    $check->('a server name that does not resolve',
             $redis->conf_block(server => 'no-such-host.invalid:6379'), $zone,
             qr/no-such-host\.invalid/);
    $check->('an sf_oauth_redis without server', $redis->conf_block(server => undef),
             $zone, qr/server/);
    $check->('a password_file readable by everyone',
             $redis->conf_block(password_file => "$dir/open.pass"), $zone,
             qr/readable by everyone/);
    $check->('a password env: that is not set',
             $redis->conf_block(password => 'env:SF_TEST_NOT_SET_REDIS'), $zone,
             qr/SF_TEST_NOT_SET_REDIS/);
    $check->('redis_down neither local nor fail',
             $redis->conf_block(redis_down => 'maybe'), $zone, qr/redis_down|maybe/);
    $check->('a ca_file that does not exist',
             $redis->conf_block(tls => 'on', ca_file => "$dir/no-such-ca.crt"), $zone,
             qr/no-such-ca\.crt/);

    # no redis=: "redis": null in sf_oauth_info
    $t->start_mock;
    $t->simple_conf;
    $t->start;
    my $r = $t->get('/sf_oauth_info');
    my $c = ($r->{json} || {})->{credentials}[0] || {};
    ok(exists $c->{redis} && !defined $c->{redis},
       'without redis=: sf_oauth_info has "redis":null')
        or diag($r->{content});
    $t->finish;
}

# -- Redis not running when nginx starts -----------------------------------------

SECTION_A: {
    my $t = SfTest->new;
    $t->start_mock;
    my $redis = RedisTest->new(dir => $t->dir);    # not started
    push @everyone, $redis;

    my @n = fleet(what => 'Redis down at start', first => $t, n => 2,
                  redis => $redis) or last SECTION_A;
    settle($redis, @n);

    for my $i (0, 1) {
        my @e = redis_errors($n[$i], $redis->server);
        is(scalar @e, 1, 'Redis down at start: one error line on node ' . ($i + 1))
            or diag(join "\n", @e);
        like($e[0] // '', qr/\Q${\ $redis->server }\E/,
             'Redis down at start: it names ' . $redis->server);
        like($e[0] // '', qr/retr/i, 'Redis down at start: it says it retries');
        is(connected($n[$i]), 0, 'Redis down at start: connected false');
    }

    my $r = $n[0]->get('/services/data/v59.0/down-at-start');
    is($r->{status}, 200, 'Redis down at start: a request works (uncoordinated)');
    is($n[1]->get('/services/data/v59.0/down-at-start')->{status}, 200,
       'Redis down at start: on node 2 too');
    cmp_ok(scalar(not_coordinated($n[0])), '<=', 1,
           'Redis down at start: at most one "not coordinated" line');

    $redis->start;
    ok(all_connected(@n), 'Redis started: every node connected within 5 s');

    my $before = $t->token_requests;
    $t->mock('revoke');
    my @s = $t->parallel(40, '/services/data/v59.0/resumed',
                         ports => [ map { $_->port } @n ], timeout => 30 * $S);
    is(scalar(grep { $_ == 200 } @s), 40, 'coordination resumed: 40 x 200')
        or diag(RedisTest::tally(@s));
    is($t->token_requests - $before, 1,
       'coordination resumed: one token request for the fleet');
}
RedisTest::finish_all(undef, splice @everyone);

# -- Redis killed and restarted under load ---------------------------------------

# The mock does not rotate here: while Redis is down (redis_down local)
# each node refreshes on its own, which a rotating refresh token cannot
# survive (see the README's redis_down).

SECTION_B: {
    my $t = SfTest->new;
    $t->start_mock;
    my $redis = RedisTest->new(dir => $t->dir);
    $redis->start;
    push @everyone, $redis;

    # failover_wait 0: redis_down at once, as before failover_wait was
    # (t/58-fleet-failover.t has the wait)
    my @n = fleet(what => 'Redis killed under load', first => $t,
                  redis => $redis, redis_conf => [ failover_wait => '0' ])
        or last SECTION_B;
    my @ports = map { $_->port } @n;

    ok(all_connected(@n), 'under load: connected');
    $t->parallel(30, '/services/data/v59.0/warm', ports => \@ports);

    # outage 1: the token stays valid
    my @mark = map { $_->log_mark } @n;
    my $load = RedisTest::Load->start(\@n, interval => 0.05);
    sleep 1;    # on purpose: the load runs before the outage
    $redis->kill9;
    outage_seen('outage 1', $redis, \@mark, @n);
    sleep 1;    # on purpose: the load runs through the outage
    $redis->restart;
    ok(all_connected(@n), 'outage 1: every node connected again');
    sleep 1;    # on purpose: the load runs after it
    my @r = $load->stop;
    my @bad = grep { $_->{status} != 200 } @r;
    is(scalar @bad, 0, 'outage 1 (token valid): ' . scalar(@r)
                       . ' requests, no error for a client')
        or diag(RedisTest::tally(map { "node$_->{node}:$_->{status}" } @bad));
    ok(@r > 3 * 40, 'outage 1: the load ran (' . scalar(@r) . ' requests)');
    for my $i (0 .. $#n) {
        cmp_ok(scalar(not_coordinated($n[$i], $mark[$i])), '<=', 1,
               'outage 1: at most one "not coordinated" line on node ' . ($i + 1));
    }

    # outage 2: two revokes during it, every node refreshes on its own
    @mark = map { $_->log_mark } @n;
    $load = RedisTest::Load->start(\@n, interval => 0.05);
    sleep 1;    # on purpose: the load runs before the outage
    $redis->kill9;
    outage_seen('outage 2', $redis, \@mark, @n);
    revoke_and_refresh('outage 2, revoke 1', $t, $load, @n);
    revoke_and_refresh('outage 2, revoke 2', $t, $load, @n);
    $redis->restart;
    ok(all_connected(@n), 'outage 2: every node connected again');
    sleep 1;    # on purpose: the load runs after it
    @r = $load->stop;
    @bad = grep { $_->{status} != 200 } @r;
    is(scalar @bad, 0, 'outage 2 (revoked twice): no error for a client')
        or diag(RedisTest::tally(map { "node$_->{node}:$_->{status}" } @bad));
    for my $i (0 .. $#n) {
        is(scalar(not_coordinated($n[$i], $mark[$i])), 1,
           'outage 2: one "not coordinated" error line on node ' . ($i + 1)
           . ', for two refreshes');
    }

    # Redis is back, empty: one refresh for the fleet again
    my $before = $t->token_requests;
    $t->mock('revoke');
    my @s = $t->parallel(90, '/services/data/v59.0/after', ports => \@ports,
                         timeout => 30 * $S);
    is(scalar(grep { $_ == 200 } @s), 90, 'after the restart: 90 x 200')
        or diag(RedisTest::tally(@s));
    is($t->token_requests - $before, 1,
       'after the restart: one token request for a revoke, fleet-wide');
    ok(length($redis->get($redis->key('record')) // ''),
       'after the restart: the record is in Redis again');
}
RedisTest::finish_all(undef, splice @everyone);

# -- redis_down fail -------------------------------------------------------------

SECTION_C: {
    my $t = SfTest->new;
    $t->start_mock;
    my $redis = RedisTest->new(dir => $t->dir);
    $redis->start;
    push @everyone, $redis;

    my @n = fleet(what => 'redis_down fail', first => $t, n => 1,
                  redis => $redis, redis_conf => [ redis_down => 'fail',
                                                   failover_wait => '0' ])
        or last SECTION_C;
    ok(all_connected(@n), 'redis_down fail: connected');

    is($n[0]->get('/services/data/v59.0/')->{status}, 200, 'redis_down fail: 200');
    $redis->kill9;

    my $r = $n[0]->get('/services/data/v59.0/valid');
    is($r->{status}, 200, 'redis_down fail, Redis down, the token valid: 200');

    my $before = $t->token_requests;
    $t->mock('revoke');
    $r = $n[0]->get('/services/data/v59.0/refresh');
    is($r->{status}, 502, 'redis_down fail, Redis down, a refresh needed: 502');
    like($r->{headers}{'content-type'} // '', qr{application/json},
         'redis_down fail: the 502 is JSON');
    ok($r->{json}, 'redis_down fail: the 502 body parses as JSON')
        or diag($r->{content});
    is($t->token_requests, $before, 'redis_down fail: no token request');
    is($n[0]->get('/services/data/v59.0/again')->{status}, 502,
       'redis_down fail: still 502 while Redis is down');
    is($t->token_requests, $before, 'redis_down fail: still no token request');

    # Redis back: a refresh works again, within 3 s (a short backoff after
    # the 502s is fine), with one token request
    $redis->restart;
    ok(all_connected(@n), 'redis_down fail: connected again');
    my $tries = 0;
    my $back = RedisTest::wait_for(3, sub {
        $tries++;
        $n[0]->get('/services/data/v59.0/back')->{status} == 200;
    });
    ok($back, "redis_down fail: Redis back, the refresh works ($tries tries)");
    is($t->token_requests, $before + 1, 'redis_down fail: one token request then');
}
RedisTest::finish_all(undef, splice @everyone);

# -- connection settings: TLS, passwords, ACL user, database, unix socket ----------

# One node against REDIS with the block's lines CONF; expects connected
# (and a request that works, its record in Redis) or one error line
# naming the server and matching CAUSE.
sub connect_case {
    my ($what, $redis, $conf, $cause, %opt) = @_;

    my $t = SfTest->new;
    $t->start_mock;
    my @n = fleet(what => $what, first => $t, n => 1, redis => $redis,
                  redis_conf => $conf) or return;
    my ($node) = @n;
    my @db = $opt{db} ? ('-n', $opt{db}) : ();

    if (!$cause) {
        ok(all_connected($node), "$what: connected");
        is($node->get('/services/data/v59.0/')->{status}, 200, "$what: 200");
        ok(RedisTest::wait_for(2, sub {
               length($redis->cli(@db, 'GET', $redis->key('record')) // '') }),
           "$what: the record went to Redis" . (@db ? " (database $opt{db})" : ''));
        is($redis->cli('EXISTS', $redis->key('record')), '0',
           "$what: not to database 0") if @db;
    } else {
        settle($redis, $node);
        is(connected($node), 0, "$what: not connected");
        my @e = redis_errors($node, $redis->server);
        is(scalar @e, 1, "$what: one error line")
            or diag(join "\n", @e);
        like($e[0] // '', $cause, "$what: it names the cause");
        is($node->get('/services/data/v59.0/')->{status}, 200,
           "$what: requests still work (redis_down local)");
    }

    $t->finish;
    @everyone = grep { $_ != $t } @everyone;

    # once the node is gone: a node still running would put its record
    # back (Redis lost its data?), into the next case's way (CI run 10)
    $redis->cli(@db, 'DEL', $redis->key($_)) for qw(record gen lease);
}

SECTION_D: {
    my $dir = SfTest->new->dir;

    my $tls = RedisTest->new(dir => $dir, tag => 'tls', tls => 1);
    $tls->start;
    connect_case('TLS with ca_file', $tls, []);
    connect_case('TLS with a wrong CA', $tls, [ ca_file => $tls->wrong_ca_file ],
                 qr/certificate|verif|SSL|TLS/i);
    connect_case('TLS with a wrong CA, ssl_verify off', $tls,
                 [ ca_file => $tls->wrong_ca_file, ssl_verify => 'off' ]);
    connect_case('TLS on, Redis plain', RedisTest->new(dir => $dir, tag => 'plain')->start,
                 [ tls => 'on', ca_file => $tls->ca_file ], qr/SSL|TLS|handshake/i);
    $tls->stop;

    my $acl = RedisTest->new(dir => $dir, tag => 'acl', user => 'fleet',
                             user_password => 'acl-pass-0123');
    $acl->start;
    connect_case('ACL user', $acl, []);
    connect_case('ACL user, wrong password', $acl,
                 [ password => 'wrong-pass' ], qr/auth|WRONGPASS|password/i);
    connect_case('ACL user, no password', $acl,
                 [ user => undef, password => undef ], qr/auth|NOAUTH/i);
    $acl->stop;

    my $pw = RedisTest->new(dir => $dir, tag => 'pw', password => 'req-pass-0123',
                            unix => 1);
    $pw->start;
    connect_case('requirepass', $pw, []);
    connect_case('requirepass, wrong password', $pw, [ password => 'nope' ],
                 qr/auth|WRONGPASS|password/i);

    my $pf = "$dir/redis.pass";
    open my $fh, '>', $pf or die;
    print $fh "req-pass-0123\n";
    close $fh;
    chmod 0600, $pf;
    connect_case('password_file', $pw, [ password => undef, password_file => $pf ]);

    local $ENV{SF_TEST_REDIS_PASS} = 'req-pass-0123';
    connect_case('password env:', $pw, [ password => 'env:SF_TEST_REDIS_PASS' ]);

    connect_case('database 3', $pw, [ database => 3 ], undef, db => 3);
    connect_case('database 99', $pw, [ database => 99 ], qr/database|DB index|SELECT/i);

    connect_case('unix socket', $pw, [ server => $pw->unix_server ]);
    $pw->stop;
}
RedisTest::finish_all(undef, splice @everyone);

# -- bad values in Redis -------------------------------------------------------

SECTION_F: {
    my $t = SfTest->new;
    $t->start_mock;
    my $redis = RedisTest->new(dir => $t->dir);
    $redis->start;
    push @everyone, $redis;
    $redis->subscribe;

    my @n = fleet(what => 'bad values', first => $t, n => 2, redis => $redis)
        or last SECTION_F;
    ok(all_connected(@n), 'bad values: connected');

    # two donors, each with its own mock: a record under another key
    # (donorA:), one of another zone (donorB:, zone "other")
    my $da = SfTest->new;
    $da->start_mock;
    push @everyone, RedisTest::fleet(first => $da, n => 1, redis => $redis,
                                     key => ('d4' x 32) . "\n",
                                     redis_conf => [ prefix => 'donorA:' ]);
    my $db = SfTest->new;
    $db->start_mock;
    push @everyone, RedisTest::fleet(first => $db, n => 1, redis => $redis,
                                     zone_name => 'other',
                                     redis_conf => [ prefix => 'donorB:' ]);
    all_connected($da, $db);
    $_->get('/services/data/v59.0/donor') for $da, $db;
    my $ka = $redis->key('record', prefix => 'donorA:');
    my $kb = $redis->key('record', prefix => 'donorB:', zone => 'other');
    RedisTest::wait_for(2, sub { length($redis->get($ka) // '')
                                 && length($redis->get($kb) // '') });
    my $other_key = $redis->get($ka);
    my $other_zone = $redis->get($kb);
    ok(length($other_key // ''), 'a record written with another key');
    ok(length($other_zone // ''), 'a record of another zone');

    my %token;
    for my $i (0, 1) {
        my $r = $n[$i]->get('/services/data/v59.0/warm');
        is($r->{status}, 200, 'bad values: warm on node ' . ($i + 1));
        $token{$i} = $r->{json}{authorization};
    }
    is($token{0}, $token{1}, 'both nodes have the fleet token');

    my $good = $redis->get($redis->key('record'));
    ok(length($good // ''), 'the good record');
    my @messages = $redis->messages;
    ok(@messages, 'the module published an event on ' . $redis->events_channel)
        or diag('no message seen: the tampering below publishes "sf:crm"');
    my $template = $messages[-1];

    my $flip = sub {
        my ($s, $at) = @_;
        substr($s, $at, 1) ^= "\x01";
        return $s;
    };
    my @cases = (
        [ 'garbage', 'this is not a record at all, just garbage' ],
        [ 'empty', '' ],
        [ 'truncated', substr($good, 0, int(length($good) / 2)) ],
        [ 'cut by one byte', substr($good, 0, length($good) - 1) ],
        [ 'first byte changed (the version)', $flip->($good, 0) ],
        [ 'a middle byte changed', $flip->($good, int(length($good) / 2)) ],
        [ 'the last byte changed', $flip->($good, length($good) - 1) ],
        [ 'encrypted with another key', $other_key ],
        [ "another zone's record", $other_zone ],
    );

    my $before = $t->token_requests;
    my @pids = map { [ sort $_->worker_pids ] } @n;

    for my $case (@cases) {
        my ($what, $value) = @$case;
        my @mark = map { $_->log_mark } @n;

        my $gen = $redis->get($redis->key('gen'));
        $gen = 0 unless defined $gen && $gen =~ /^\d+$/;
        is($redis->set($redis->key('record'), $value), 'OK', "$what: written");
        my $new = $redis->cli('INCR', $redis->key('gen'));

        my $msg = $template // 'sf:crm';
        $msg =~ s/\b$gen\b/$new/ if defined $template && $gen;
        $redis->publish($redis->events_channel, $msg);

        for my $i (0, 1) {
            my $logged = RedisTest::wait_for(3, sub {
                scalar $n[$i]->log_lines(qr/\[error\].*redis/i, $mark[$i])
            });
            ok($logged, "$what: an error line on node " . ($i + 1))
                or diag($n[$i]->error_log_since($mark[$i]));

            my $r = $n[$i]->get("/services/data/v59.0/bad");
            is($r->{status}, 200, "$what: node " . ($i + 1) . ': 200');
            is($r->{json}{authorization}, $token{$i},
               "$what: node " . ($i + 1) . ' keeps its own token');
        }
    }

    is($t->token_requests, $before, 'bad values: no token request');
    is_deeply([ map { [ sort $_->worker_pids ] } @n ], \@pids,
              'bad values: no worker crashed');

    # a refresh over the bad record works, and replaces it
    $t->mock('revoke');
    for my $i (0, 1) {
        is($n[$i]->get('/services/data/v59.0/after-bad')->{status}, 200,
           'a refresh after the bad values: 200 on node ' . ($i + 1));
    }
    isnt($redis->get($redis->key('record')), $cases[-1][1],
         'the refresh wrote a new record');
}
RedisTest::finish_all(undef, splice @everyone);

# -- no secret in clear in Redis ------------------------------------------------

SECTION_G: {
    my $t = SfTest->new;
    $t->start_mock;
    $t->mode('rotation');
    my $redis = RedisTest->new(dir => $t->dir);
    $redis->start;
    push @everyone, $redis;
    $redis->subscribe;

    my @n = fleet(what => 'no secret in Redis', first => $t, n => 2,
                  redis => $redis) or last SECTION_G;

    # connected first: a node that refreshes before it is (redis_down
    # local) would rotate the refresh token behind the fleet's back
    ok(all_connected(@n), 'secrets: connected');

    my @values;
    for my $round (1 .. 3) {
        $t->mock('revoke') if $round > 1;
        is($n[$round % 2]->get("/services/data/v59.0/s$round")->{status}, 200,
           "secrets: refresh $round");
        push @values, $redis->get($redis->key('record'));
    }

    my $stats = $t->mock('stats');
    is($stats->{token_requests}, 3, 'secrets: three refreshes');
    my @secrets = (@{ $stats->{issued_access_tokens} },
                   @{ $stats->{issued_refresh_tokens} },
                   $SfTest::CLIENT_SECRET);
    is(scalar @secrets, 3 + 4 + 1, 'secrets: 3 access tokens, 4 refresh tokens, the client secret');

    my @keys = $redis->key_names('*');
    ok((grep { $_ eq $redis->key('record') } @keys), 'secrets: the record key is there')
        or diag("@keys");
    push @values, map { $redis->get($_) // '' } @keys;
    push @values, $redis->messages;

    my $leaks = 0;
    for my $v (@values) {
        for my $s (@secrets) {
            next unless defined $v;
            # the tail: access tokens all start with the org id
            if (index($v, $s) >= 0 || index($v, substr($s, -16)) >= 0) {
                $leaks++;
                diag('a secret in Redis, starting ' . substr($s, 0, 8));
            }
        }
    }
    is($leaks, 0, 'secrets: no value or event in Redis holds an access or '
                  . 'refresh token or the client secret (' . scalar(@values)
                  . ' values)');

    # and not their hex SHA-256 either (a fingerprint is 8 hex digits: fine)
    my $hashes = 0;
    for my $v (@values) {
        $hashes += grep { index($v // '', sha256_hex($_)) >= 0 } @secrets;
    }
    is($hashes, 0, 'secrets: no full SHA-256 of a secret in Redis');
}
RedisTest::finish_all(undef, splice @everyone);

done_testing;
