#!/usr/bin/perl

# Issue 22's reload test as the issue states it: 20 reloads in a row, each
# while a slow refresh (the mock takes 3 s over every token request, and
# holds it until the reload's new workers run) runs,
# under steady load on every node, in rotation mode.  Two setups side by
# side, each with its own mock Salesforce (one refresh token each):
#   - a single node T, zones "sf" (the credential's) and "other": reloads
#     that resize the credential's zone, rename it, move the credential to
#     the other zone and back;
#   - a fleet of two nodes A and B, one Redis (and a second redis-server),
#     zones "sf" and "fo" with redis=fleet on each: reloads of both nodes
#     (the refresh is either node's) that resize or rename the zone, move
#     the credential to "fo" and back, change the sf_oauth_redis block's
#     prefix, and its server to the second redis-server and back.  A
#     change of the Redis block is made on every node of the fleet in one
#     go: a prefix or server changed on one node only splits the fleet in
#     two, which is documented (guide-fleet.md) and is t/40's subject.
# Each reload: revoke, wait until the mock has the refresh's token request,
# edit the configuration and reload; the new workers start while the
# token request is held (the mock's gate, opened once they run).  Expect,
# for each: no client request
# other than 200, one token request, no rotated-out refresh token
# presented (the mock revoked nothing), the new workers' requests HIT with
# the new token (the mock answers 200, no 401), the old workers exit, no
# alert or crit; for a reload that moves the single node's record, the old
# worker's outcome carried to the new zone (sf_oauth_carry).  At the end,
# every nginx process the test saw is gone.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use RedisTest;
use Test::More;

use Time::HiRes qw(sleep time);

my $S = SfTest::time_scale();

# how long the mock takes over a token request (the slow refresh), at
# least: it also holds each one (/__mock/gate) until the reload's new
# workers run, which under valgrind takes seconds (a fixed 8 s delay was
# not enough once, beside t/32 and t/11 in make test-valgrind); the
# credential's timeout covers that hold (59 s under valgrind)
my $delay = 3;

my $carried = qr/the outcome \(a token\) of a token request in flight when a reload moved its record to this sf_oauth_zone is stored/;

# every nginx pid seen (masters and workers): none may be left at the end
my %seen_pid;

sub nginx_alive {
    my ($pid) = @_;

    open my $fh, '<', "/proc/$pid/cmdline" or return 0;
    local $/;
    my $cmd = <$fh> // '';
    close $fh;
    return $cmd =~ /nginx/ && $cmd !~ /^\0*$/;
}

# -- the single node ------------------------------------------------------------

my $t = SfTest->new(mock_args => ['--token-delay', $delay]);
$t->start_mock;
$t->mode('rotation');
$t->simple_conf(timeout => (3 * $delay + 5 * $S) . 's',
                http_extra => "    sf_oauth_zone zone=other:1m;\n");
$t->start;
is($t->get('/services/data/v59.0/warm')->{status}, 200, 'T: warm');

# -- the fleet --------------------------------------------------------------------

my $f = SfTest->new(mock_args => ['--token-delay', $delay]);
$f->start_mock;
$f->mode('rotation');
my $redis = RedisTest->new(dir => $f->dir);
$redis->start;
mkdir $f->dir . '/r2';
my $redis2 = RedisTest->new(dir => $f->dir . '/r2');
$redis2->start;
my ($r1, $r2) = ($redis->server, $redis2->server);

my ($A, $B) = RedisTest::fleet(redis => $redis, first => $f, n => 2,
                               start => 0,
                               credential => {
                                   timeout => (3 * $delay + 5 * $S) . 's' });
for my $n ($A, $B) {
    # a second fleet zone, to move the credential to
    $n->edit_conf(sub {
        s/(    sf_oauth_zone zone=sf:1m key=(\S+) redis=fleet;\n)/$1    sf_oauth_zone zone=fo:1m key=$2 redis=fleet;\n/
            or die 'no fleet zone';
    });
    $n->start;
}
ok(RedisTest::all_connected(10, $A, $B), 'fleet: connected');
is($A->get('/services/data/v59.0/warm')->{status}, 200, 'fleet: warm');
RedisTest::all_synced(10, $A, $B);
is($B->get('/services/data/v59.0/warm')->{headers}{'x-sf-oauth-status'},
   'HIT', "fleet: B has A's token");

# -- the 20 reloads -------------------------------------------------------------

my $prefix = sub {
    my ($p) = @_;
    return sub {
        s/\n        prefix [^;]+;//;
        s/(sf_oauth_redis fleet \{\n)/$1        prefix $p;\n/ if defined $p;
    };
};
my $server = sub {
    my ($to) = @_;
    return sub { s/server 127\.0\.0\.1:\d+;/server $to;/ or die 'no server' };
};
my $both = sub {
    my @e = @_;
    return sub { for my $e (@e) { $e->() } };
};

# [what, nodes ('T' or 'F'), edit, the record moves to another zone, the
# fleet's place in Redis after it: a hashref of redis, prefix, zone]
my @steps = (
    [ 'resize',            'T', sub { s/zone=sf:1m/zone=sf:2m/ or die }, 1 ],
    [ 'resize',            'F', sub { s/zone=sf:1m/zone=sf:2m/ or die }, 1 ],
    [ 'rename',            'T', sub { s/zone=sf:2m/zone=sf2:2m/ or die;
                                      s/zone sf;/zone sf2;/ or die }, 1 ],
    [ 'prefix p1:',        'F', $prefix->('p1:'), 0, { prefix => 'p1:' } ],
    [ 'move to "other"',   'T', sub { s/zone sf2;/zone other;/ or die }, 1 ],
    [ 'server: redis 2',   'F', $server->($r2), 0, { redis => $redis2 } ],
    [ 'move back',         'T', sub { s/zone other;/zone sf2;/ or die }, 1 ],
    [ 'rename',            'F', sub { s/zone=sf:2m/zone=fz:2m/ or die;
                                      s/zone sf;/zone fz;/ or die }, 1,
      { zone => 'fz' } ],
    [ 'resize',            'T', sub { s/zone=sf2:2m/zone=sf2:3m/ or die }, 1 ],
    [ 'server: redis 1',   'F', $server->($r1), 0, { redis => $redis } ],
    [ 'rename back',       'T', sub { s/zone=sf2:3m/zone=sf:3m/ or die;
                                      s/zone sf2;/zone sf;/ or die }, 1 ],
    [ 'move to "fo"',      'F', sub { s/zone fz;/zone fo;/ or die }, 1,
      { zone => 'fo' } ],
    [ 'move to "other"',   'T', sub { s/zone sf;/zone other;/ or die }, 1 ],
    [ 'prefix p2:',        'F', $prefix->('p2:'), 0, { prefix => 'p2:' } ],
    [ 'move back',         'T', sub { s/zone other;/zone sf;/ or die }, 1 ],
    [ 'move back',         'F', sub { s/zone fo;/zone fz;/ or die }, 1,
      { zone => 'fz' } ],
    [ 'resize and rename', 'T', sub { s/zone=sf:3m/zone=sf3:1m/ or die;
                                      s/zone sf;/zone sf3;/ or die }, 1 ],
    [ 'server: redis 2, prefix p3:', 'F',
      $both->($server->($r2), $prefix->('p3:')), 0,
      { redis => $redis2, prefix => 'p3:' } ],
    [ 'resize',            'T', sub { s/zone=sf3:1m/zone=sf3:2m/ or die }, 1 ],
    [ 'resize, server: redis 1, default prefix', 'F',
      $both->(sub { s/zone=fz:2m/zone=fz:1m/ or die }, $server->($r1),
              $prefix->(undef)), 1,
      { redis => $redis, prefix => 'sf_oauth:' } ],
);
is(scalar @steps, 20, '20 reloads');

my $load = RedisTest::Load->start([ $t, $A, $B ], interval => 0.02);
$load->wait_all_ok(10, time, 'the load gets 200s from every node');

# where the fleet's record is in Redis
my %place = (redis => $redis, prefix => 'sf_oauth:', zone => 'sf');

my $i = 0;
for my $step (@steps) {
    my ($what, $which, $edit, $moves, $place) = @$step;
    $i++;
    $what = "$i: " . ($which eq 'T' ? 'T' : 'fleet') . ": $what";
    my $mock = $which eq 'T' ? $t : $f;
    my @nodes = $which eq 'T' ? ($t) : ($A, $B);

    my %mark = map { $_ => $_->log_mark } @nodes;
    my $s0 = $mock->stats;
    my $t0 = time;

    for my $n (@nodes) {
        $n->edit_conf($edit);
        my ($rc, $out) = $n->test_conf;
        is($rc, 0, "$what: nginx -t") or diag($out);
    }

    $mock->mock('gate', 'open=0');
    $mock->mock('revoke');
    SfTest::wait_event(10, "$what: the revoke's token request reached the "
                           . 'mock',
                       sub { $mock->token_requests > $s0->{token_requests} });

    # the reload, while the mock holds that token request
    my %old = map { $_ => [ $_->worker_pids ] } @nodes;
    $seen_pid{$_} = 1 for map { @$_ } values %old;
    kill 'HUP', $_->{nginx_pid} for @nodes;
    SfTest::wait_event(10, "$what: the new workers started", sub {
        for my $n (@nodes) {
            my %o = map { $_ => 1 } @{ $old{$n} };
            return 0 if grep({ !$o{$_} } $n->worker_pids) < 2;
        }
        return 1;
    });
    $seen_pid{$_} = 1 for map { $_->worker_pids } @nodes;
    $mock->mock('gate', 'open=1');

    # the old workers end once their token request did
    SfTest::wait_event($delay + 10, "$what: the old workers exited", sub {
        !grep { kill 0, $_ } map { @$_ } values %old
    });
    pass("$what: the old workers exited");
    SfTest::wait_event($delay + 10, "$what: the token request answered",
                       sub { $mock->stats->{token_ok} > $s0->{token_ok} });
    if ($which eq 'F') {
        RedisTest::all_connected(10, $A, $B)
            or die "$what: the new workers did not connect to Redis\n";
        RedisTest::all_synced(10, $A, $B);

        # the outcome reached the fleet's new place in Redis: at once when
        # the record moved (it is carried), within the periodic read's
        # second (the record put back) when the Redis block changed
        %place = (%place, %{ $place || {} });
        my $k = "$place{prefix}$place{zone}:crm:";
        my $gen = RedisTest::node_redis($A)->{fleet_generation};
        RedisTest::wait_for(5, sub {
            ($place{redis}->get("${k}gen") // '') eq $gen
        });
        is($place{redis}->get("${k}gen"), $gen,
           "$what: Redis ($place{redis}{port}, $k) has the nodes' "
           . 'generation');
        my @rec = $place{redis}->key_names("${k}record");
        is(scalar @rec, 1, "$what: and its record");
    }
    $load->wait_all_ok(15, time, "$what: a 200 from every node after the "
                                 . 'reload');

    my @bad = grep { $_->{t} >= $t0 && $_->{status} != 200 } $load->results;
    is(scalar @bad, 0, "$what: every request 200")
        or diag(RedisTest::tally(map { "node$_->{node}:$_->{status}" }
                                 @bad));

    # the new workers have the new token: the only one the mock takes
    my $api401 = $mock->stats->{api_401};
    for my $n (@nodes) {
        my @h = map { $n->get("/services/data/v59.0/after$i-$_") } 1 .. 6;
        is(scalar(grep { $_->{status} == 200
                         && ($_->{headers}{'x-sf-oauth-status'} // '')
                            eq 'HIT' } @h),
           6, "$what: the new workers' requests: 200, HIT");
    }
    my $s = $mock->stats;
    is($s->{api_401}, $api401, "$what: the mock rejected none of them");
    is($s->{token_requests} - $s0->{token_requests}, 1,
       "$what: one token request");
    is(@{ $s->{issued_access_tokens} } - @{ $s0->{issued_access_tokens} }, 1,
       "$what: one token issued");
    RedisTest::no_reuse($mock, $what);

    if ($which eq 'T' && $moves) {
        like($t->error_log_since($mark{$t}), $carried,
             "$what: the old worker's outcome was carried to the new zone");
    } elsif ($moves) {
        ok((grep { $_->error_log_since($mark{$_}) =~ $carried } @nodes),
           "$what: the old worker's outcome was carried to the new zone")
            or diag(join "\n", map { $_->log_lines(qr/sf_oauth/, $mark{$_}) }
                               @nodes);
    }

    for my $n (@nodes) {
        my @alerts = grep { /\[(alert|crit|emerg)\]/ }
                     split /\n/, $n->error_log_since($mark{$n});
        is(scalar @alerts, 0, "$what: no alert or crit")
            or diag(join "\n", @alerts);
    }
}

my @r = $load->stop;
my @bad = grep { $_->{status} != 200 } @r;
is(scalar @bad, 0, 'the whole run: every request 200 (' . scalar(@r)
                   . ' requests)')
    or diag(RedisTest::tally(map { "node$_->{node}:$_->{status}" } @bad));
my %per = map { $_ => 0 } 0 .. 2;
$per{ $_->{node} }++ for @r;
ok(!grep({ $per{$_} < 20 } keys %per), 'every node was under load ('
   . join(', ', map { "$_: $per{$_}" } sort keys %per) . ')');

# the fleet's record followed it to redis 1, default prefix
RedisTest::all_synced(10, $A, $B);
ok(scalar(grep { /^sf_oauth:/ } $redis->key_names),
   'fleet: the record is in redis 1 under the default prefix');

$seen_pid{$_} = 1 for map { ($_->{nginx_pid}, $_->worker_pids) } $t, $A, $B;
$t->finish;
RedisTest::finish_all($redis, $B, $A);
ok($redis2->finish, 'redis 2 ran to the end');

my @left = grep { nginx_alive($_) } sort keys %seen_pid;
is(scalar @left, 0, 'no nginx process left (' . scalar(keys %seen_pid)
                    . ' seen)')
    or diag(`ps -o pid,ppid,args -p @{[ join ',', @left ]}`);

done_testing;
