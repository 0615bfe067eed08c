#!/usr/bin/perl

# A fleet: three nginx nodes share one token and one refresh through Redis
# (sf_oauth_redis, sf_oauth_zone ... redis=fleet).  One mock Salesforce in
# "rotation" mode, which revokes everything when a rotated-out refresh
# token is presented again: any refresh that two nodes did with the same
# refresh token shows as a dead fleet there.
#
#   - 300 cold requests over the three nodes: one token request
#   - 10 x (revoke, 50 requests per node): 10 token requests, no 401 for a
#     client, no reuse of a rotated-out refresh token
#   - a refresh by node 1 reaches nodes 2 and 3 without a request of theirs
#     (pub/sub): their fleet_generation within 1 s, their next request uses
#     the new token at once
#   - the node that holds the Redis lease dies (SIGKILL, all its processes)
#     during the refresh: another node refreshes once the lease expired,
#     every request on the others succeeds, no reuse
#
# The mock's stats name no "reuse" counter: a reuse shows as
# valid_refresh_tokens empty (the mock revoked everything) and as a token
# request that failed (token_requests > token_ok).

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use RedisTest;
use POSIX ();
use Test::More;
use Time::HiRes qw(sleep time);

my $S = SfTest::time_scale();

# token requests slow enough that the cold requests all arrive meanwhile
my $first = SfTest->new(mock_args => ['--token-delay', '0.3']);
$first->start_mock;
$first->mode('rotation');

my $redis = RedisTest->new(dir => $first->dir);
$redis->start;

# timeout 5s: the lease of a dead node should not take the 10 s default
my %fleet = (redis => $redis, credential => { timeout => '5s' });
my @n = RedisTest::fleet(%fleet, first => $first, start => 0);
my @ports = map { $_->port } @n;

{
    my ($rc, $out) = $n[0]->test_conf;
    is($rc, 0, 'nginx -t takes sf_oauth_redis and sf_oauth_zone redis=')
        or do {
            diag($out);
            RedisTest::finish_all($redis, @n);
            done_testing;
            exit;
        };
}

$_->start for @n;

my $connected = RedisTest::all_connected(5, @n);
ok($connected, 'sf_oauth_info: every node is connected to Redis');
is((RedisTest::node_redis($n[0]) || {})->{name}, 'fleet',
   'sf_oauth_info: redis.name is the sf_oauth_redis block');
{
    my $info = RedisTest::node_redis($n[0]) || {};
    is($info->{role}, 'master', 'sf_oauth_info: role: master, by ROLE');
    ok(exists $info->{sentinel} && !defined $info->{sentinel}
       && exists $info->{sentinel_subscribed}
       && !defined $info->{sentinel_subscribed},
       'sf_oauth_info: no sentinel: sentinel and sentinel_subscribed null');
    ok(RedisTest::wait_for(5, sub {
           ((RedisTest::node_redis($n[0]) || {})->{last_ok_ms} // '')
               =~ /^\d+$/ }),
       'sf_oauth_info: last_ok_ms, since a command last worked');
}


sub auths_of {
    my ($answers) = @_;
    my %a;
    for (@$answers) {
        $a{$1}++ if /"authorization":\s*"([^"]*)"/;
    }
    return \%a;
}

# -- 300 cold requests over the three nodes ------------------------------------

{
    my @answers;
    my @s = $first->parallel(300, '/services/data/v59.0/cold',
                             ports => \@ports, timeout => 60 * $S,
                             answers => \@answers);
    is(scalar(grep { $_ == 200 } @s), 300, 'cold: 300 x 200')
        or diag(RedisTest::tally(@s));
    is($first->stats->{token_requests}, 1, 'cold: exactly 1 token request');
    my $auths = auths_of(\@answers);
    is(scalar keys %$auths, 1, 'cold: one token in every answer, on every node')
        or diag(join "\n", map { "$auths->{$_} x " . substr($_, 0, 20) } keys %$auths);
    RedisTest::no_reuse($first, 'cold');

    my @gen = map { (RedisTest::node_redis($_) || {})->{fleet_generation} } @n;
    ok(defined $gen[0] && $gen[0] >= 1, 'cold: fleet_generation at least 1')
        or diag(explain \@gen);
    is_deeply(\@gen, [ ($gen[0]) x 3 ], 'cold: the same fleet_generation on every node');
    is($redis->get($redis->key('gen')), $gen[0],
       'Redis holds the fleet generation as a plain integer under <prefix>sf:crm:gen');
    ok(length($redis->get($redis->key('record')) // ''),
       'Redis holds the record under <prefix>sf:crm:record');
    is_deeply([ map { (RedisTest::node_redis($_) || {})->{lease_owner} } @n ],
              [ '', '', '' ], 'cold: afterwards, no lease_owner on any node');
    is($redis->get($redis->key('lease')), '', 'cold: no lease in Redis afterwards');
}

# -- 10 rounds of revoke and 50 requests per node --------------------------------

{
    my $before = $first->stats->{token_requests};
    my (%all, $bad);

    for my $round (1 .. 10) {
        $first->mock('revoke');
        my @s = $first->parallel(150, "/services/data/v59.0/round$round",
                                 ports => \@ports, timeout => 60 * $S);
        $all{$_}++ for @s;
        $bad .= "round $round: " . RedisTest::tally(@s) . "\n" if grep { $_ != 200 } @s;
    }

    diag($bad) if $bad;
    is($all{200} // 0, 1500, '10 rounds: 1500 x 200');
    is($all{401} // 0, 0, '10 rounds: no client got a 401');
    is($first->stats->{token_requests} - $before, 10,
       '10 rounds: exactly 10 token requests, one per revoke for the fleet');
    RedisTest::no_reuse($first, '10 rounds');
}

# -- a refresh reaches the other nodes without a request of theirs ---------------

{
    my @old = map { (RedisTest::node_redis($_) || {})->{fleet_generation} // -1 } @n;

    $first->mock('revoke');
    my $r = $n[0]->get('/services/data/v59.0/node1');
    is($r->{status}, 200, 'node 1 after a revoke: 200');
    is($r->{headers}{'x-sf-oauth-status'}, 'RETRY', 'node 1 refreshed (RETRY)');
    my $start = time;
    my $token = $r->{json}{authorization} // '';

    # the token is written back to Redis after the answer went out: wait
    # for node 1's write-back rather than read its generation once
    my $gen = -1;
    RedisTest::wait_for(1, sub {
        $gen = (RedisTest::node_redis($n[0]) || {})->{fleet_generation} // -1;
        $gen > $old[0];
    });
    ok($gen > $old[0], "node 1's fleet_generation went up ($old[0] -> $gen)");

    my $seen = $gen >= 1 && RedisTest::wait_for(1, sub {
        !grep { ((RedisTest::node_redis($_) || {})->{fleet_generation} // -1) != $gen }
              @n[1, 2]
    });
    my $took = time - $start;
    ok($seen, sprintf('nodes 2 and 3 show fleet_generation %d within 1 s (%.2f s)',
                      $gen, $took))
        or diag(explain [ map { RedisTest::node_redis($_) } @n[1, 2] ]);

    my $s = $first->stats;
    for my $i (1, 2) {
        my $r = $n[$i]->get("/services/data/v59.0/node" . ($i + 1));
        is($r->{status}, 200, 'node ' . ($i + 1) . ': 200');
        is($r->{json}{authorization}, $token,
           'node ' . ($i + 1) . ": the token node 1 got");
    }
    my $s2 = $first->stats;
    is($s2->{api_401} - $s->{api_401}, 0,
       'nodes 2 and 3 never sent the revoked token: they knew the new one');
    is($s2->{token_requests}, $s->{token_requests},
       'nodes 2 and 3: no token request');
}

# -- the lease owner dies during the refresh ------------------------------------

# Runs N requests over the nodes of @$nodes in a child; returns a sub that
# waits for it and gives the statuses per node index.
sub background {
    my ($nodes, $per_node, $tag) = @_;

    my @p = map { $_->port } @$nodes;
    my $file = $first->dir . "/bg.$tag";
    my $kid = fork() // die;
    if ($kid == 0) {
        $_->{nginx_pid} = undef for @n;
        $first->{mock_pid} = undef;
        $redis->{pid} = undef;
        $redis->{subs} = [];
        my @s = $first->parallel($per_node * @p, "/services/data/v59.0/$tag",
                                 ports => \@p, timeout => 90 * $S);
        open my $fh, '>', $file or POSIX::_exit(1);
        print $fh "@s";
        close $fh;
        POSIX::_exit(0);
    }

    return sub {
        waitpid($kid, 0);
        open my $fh, '<', $file or return {};
        my @s = split ' ', scalar(<$fh>) // '';
        my %by;
        push @{ $by{ $_ % @p } }, $s[$_] for 0 .. $#s;
        return \%by;
    };
}

# Waits until some node holds the Redis lease and its token request is at
# the mock; returns (owner string, node index) or ().
sub lease_owner_at_mock {
    my ($requests_before, @nodes) = @_;

    my ($owner, $node);
    RedisTest::wait_for(10, sub {
        $owner = $redis->get($redis->key('lease'));
        return 0 unless $owner && $first->stats->{token_requests} > $requests_before;
        my $pid = RedisTest::lease_pid($owner) or return 0;
        $node = RedisTest::node_of_pid($pid, @nodes);
        return $node;
    });

    return ($owner, $node);
}

sub kill_lease_owner {
    my ($tag, $setup, $expect_requests) = @_;

    my @alive = grep { $_->{nginx_pid} } @n;
    my $before = $first->stats->{token_requests};

    $setup->();
    $first->mock('revoke');
    my $wait = background(\@alive, 20, $tag);

    my ($owner, $victim) = lease_owner_at_mock($before, @alive);
    ok($victim, "$tag: a node holds the Redis lease ("
                . ($owner // 'none') . '), its token request at the mock')
        or do { $wait->(); return };

    my @infos = map { $_->cred_info } @alive;
    ok((grep { ($_->{redis}{lease_owner} // '') eq $owner } @infos),
       "$tag: sf_oauth_info's lease_owner names the owner in Redis");

    my ($vi) = grep { $alive[$_] == $victim } 0 .. $#alive;
    my $start = time;
    my @killed = $victim->kill_node;
    ok(@killed >= 3, "$tag: the owner's node killed: master and workers");

    my $by = $wait->();
    my $took = time - $start;
    my @survivors = grep { $_ != $vi } 0 .. $#alive;
    my @s = map { @{ $by->{$_} || [] } } @survivors;
    diag(sprintf "$tag: the surviving nodes' requests: %s, done %.1f s after the kill",
         RedisTest::tally(@s), $took);
    is(scalar(@s), 20 * @survivors, "$tag: an answer for every request on the survivors");
    is(scalar(grep { $_ != 200 } @s), 0, "$tag: every request on the survivors got 200");

    for my $i (@survivors) {
        my $r = $alive[$i]->get("/services/data/v59.0/$tag-after");
        is($r->{status}, 200, "$tag: a survivor afterwards: 200");
    }

    my $lease = $redis->get($redis->key('lease')) // '';
    isnt($lease, $owner, "$tag: the dead node's lease is gone");

    my $s = $first->stats;
    if (defined $expect_requests) {
        is($s->{token_requests} - $before, $expect_requests,
           "$tag: $expect_requests token requests: the dead owner's, then one takeover");
    } else {
        ok($s->{token_requests} - $before >= 2, "$tag: another node refreshed");
    }

    return $victim;
}

# The owner's token request never gets through (hang_once: the mock holds
# it without an answer and without rotating, then answers the next ones
# without rotation): the takeover presents the same, still live, refresh
# token.  A reuse would make the mock revoke everything.
my $dead = kill_lease_owner('hung', sub { $first->mode('hang_once') }, 2);
RedisTest::no_reuse($first, 'hung', 1);
$first->mode('rotation');   # lets the dead owner's request go

# A new node in the dead one's place: three nodes again
if ($dead) {
    my $new = SfTest->new(mock_of => $first);
    RedisTest::configure_node($new, %fleet);
    $new->start;
    push @n, $new;
    ok(RedisTest::all_connected(5, $new),
       'a new node joins: connected');
    my $before = $first->stats;
    my $r = $new->get('/services/data/v59.0/newnode');
    is($r->{status}, 200, 'a new node joins: 200');
    is($r->{json}{authorization}, 'Bearer ' . $before->{issued_access_tokens}[-1],
       'a new node joins: it uses the fleet token');
    my $after = $first->stats;
    is($after->{token_requests}, $before->{token_requests},
       'a new node joins: no token request');
    is($after->{api_401}, $before->{api_401},
       'a new node joins: it took the token from Redis before the request went out');
}

# As t/09: the owner dies while its token request takes 3 s at the mock.
# In "rotation" mode this cannot end well (the mock rotates for a client
# that is gone: the new refresh token is lost, and the old one is dead),
# so here the mock does not rotate: the takeover may meet "token request
# is already being processed", and retries.
kill_lease_owner('slow', sub { $first->mode('normal'); $first->mock('delay', 'seconds=3') });
$first->mock('delay', 'seconds=0.3');
is_deeply($first->stats->{valid_refresh_tokens}, [ $first->stats->{issued_refresh_tokens}[-1] ],
          'slow: the refresh token is still alive');

RedisTest::finish_all($redis, @n);

done_testing;
