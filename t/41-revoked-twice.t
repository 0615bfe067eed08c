#!/usr/bin/perl

# A request whose token dies twice while it is under way: Salesforce
# revokes, another request's refresh gets a new token, Salesforce revokes
# again, and only then does the slow request's 401 come.  The newer token
# it is replayed with was got before its 401, so the 401 to that replay is
# that token's death too, not a 401 that no refresh cures: the request is
# replayed once more, with a token got after its 401, and the client gets
# 200.  The same with a fleet, where the node learned the newer token from
# Redis.  And a 401 that no refresh cures still costs one replay: a
# request is replayed at most twice, and at most once after a token
# request made for it.  Under concurrency too: a request whose replay
# used another request's new token, when that request's replay got 401
# already, gets its 401 at once, with no second hold and no second token
# request.  And a node's request replayed with a token the fleet got
# after its 401, which Salesforce killed as it was issued, is replayed
# once more.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use RedisTest;
use POSIX ();
use Test::More;
use Time::HiRes qw(sleep time);

my $S = SfTest::time_scale();

# GET "path" on "node" in a child, or POST "body"; returns a sub that
# waits for its status ("200 but" when "check" does not like the answer)
sub slow_get {
    my ($node, $path, $body, $check) = @_;
    my $pid = fork() // die "fork: $!";
    if ($pid == 0) {
        my $r = defined $body
            ? $node->http('POST', $path, body => $body, timeout => 30 * $S,
                          headers => { 'Content-Type' => 'text/xml',
                                       SOAPAction => '""' })
            : $node->get($path, timeout => 30 * $S);
        POSIX::_exit($r->{status} == 200 ? ($check && !$check->($r) ? 3 : 0)
                     : $r->{status} == 401 ? 1 : 2);
    }
    return sub {
        waitpid($pid, 0);
        return (200, 401, 'another status', '200 but')[$? >> 8];
    };
}

# Waits until the mock checked the token of a request to PATH (its path
# and query) that has ?late401: the slow request holds the dead token and
# its 401 is on the way.
sub late401_begun {
    my ($t, $path) = @_;

    SfTest::wait_event(10, "the mock's late 401 for $path", sub {
        grep { $_ eq $path } @{ $t->stats->{late401_log} || [] };
    });
}

my $ENV_NS = 'http://schemas.xmlsoap.org/soap/envelope/';
my $SOAP = qq{<soapenv:Envelope xmlns:soapenv="$ENV_NS"><soapenv:Body>}
         . qq{<query xmlns="urn:partner.soap.sforce.com"><queryString>}
         . qq{SELECT Id FROM Account</queryString></query></soapenv:Body>}
         . qq{</soapenv:Envelope>};

# -- one node ---------------------------------------------------------------

{
    my $t = SfTest->new;
    $t->start_mock;
    $t->simple_conf;
    $t->start;

    is($t->get('/services/data/warm')->{status}, 200, 'one node: warm');
    my $before = $t->token_requests;
    my $mark = $t->log_mark;

    $t->mock('revoke');
    my $slow_path = '/services/data/slow?late401=' . (1.5 * $S);
    my $slow = slow_get($t, $slow_path);
    late401_begun($t, $slow_path);
    is($t->get('/services/data/fast')->{status}, 200,
       'one node: a revoke, another request refreshes: 200');
    $t->mock('revoke');

    is($slow->(), 200, 'one node: the slow request, its token and the next '
                       . 'one revoked meanwhile: 200');
    is($t->token_requests - $before, 2,
       'one node: two token requests, one per revoke');
    unlike($t->error_log_since($mark), qr/a refresh does not cure/,
           'one node: no "a refresh does not cure" warning');
    is($t->cred_info->{replays}, 3,
       'one node: 3 replays counted (the fast request 1, the slow one 2)');

    # the same for SOAP: the second fault is read afresh, not after the
    # first one's body, and the client gets one whole answer
    $before = $t->token_requests;
    $t->mock('revoke');
    $slow_path = '/services/Soap/u/59.0?late401=' . (1.5 * $S);
    $slow = slow_get($t, $slow_path, $SOAP, sub {
        my ($r) = @_;
        my @env = $r->{content} =~ /<\/\w+:Envelope>/g;
        return @env == 1
               && $r->{content} =~ /queryResponse/
               && $r->{content} !~ /INVALID_SESSION_ID/;
    });
    late401_begun($t, $slow_path);
    is($t->get('/services/data/fast2')->{status}, 200,
       'one node, SOAP: a revoke, another request refreshes: 200');
    $t->mock('revoke');
    is($slow->(), 200, 'one node, SOAP: the slow call, its session and the '
                       . 'next one revoked meanwhile: 200, one whole answer');
    is($t->token_requests - $before, 2,
       'one node, SOAP: two token requests, one per revoke');

    # a 401 that no refresh cures: one token request and one replay
    $before = $t->token_requests;
    my $api = $t->mock('stats')->{api_requests};
    is($t->get('/services/data/no?reject=1')->{status}, 401,
       'one node: an uncurable 401 reaches the client');
    is($t->token_requests - $before, 1, 'one node: after one token request');
    is($t->mock('stats')->{api_requests} - $api, 2,
       'one node: and one replay');

    $t->finish;
}

# -- one node: a token that cured a 401 dies under a replay -----------------

# Two requests get their 401 from one revoke and wait for one refresh.
# The first one's replay gets 200 with the new token; Salesforce revokes
# again while the second one's replay is on its way (the mock's recheck:
# the token was live when it came, dead when it is checked again).  The
# new token was got after the second request's 401, by this node, but it
# cured a 401 already: its 401 now is that token's death, and the second
# request is replayed once more.

{
    my $t = SfTest->new;
    $t->start_mock;
    $t->simple_conf;
    $t->start;

    is($t->get('/services/data/warm')->{status}, 200, 'cured, then dead: warm');
    my $before = $t->token_requests;
    my $mark = $t->log_mark;

    # the token request slow, well within the credential's timeout (10 s)
    $t->mock('delay', 'seconds=' . ($S > 3 ? 3 : $S));
    $t->mock('revoke');
    my $a_path = '/services/data/a?late401=' . (0.5 * $S);
    my $a = slow_get($t, $a_path);
    late401_begun($t, $a_path);
    my $b_path = '/services/data/b?recheck=' . (3 * $S);
    my $b = slow_get($t, $b_path);
    late401_begun($t, $b_path);
    $t->mock('delay', 'seconds=0.05');

    is($a->(), 200, 'cured, then dead: the first request, replayed: 200');
    $t->mock('revoke');
    is($b->(), 200, 'cured, then dead: the second request, its replay\'s '
                    . 'token revoked on the way: 200');
    is(scalar(grep { $_->{path} eq $b_path } @{ $t->stats->{api_log} }), 3,
       'cured, then dead: the second request was replayed twice');
    is($t->token_requests - $before, 2,
       'cured, then dead: two token requests, one per revoke');
    unlike($t->error_log_since($mark), qr/a refresh does not cure/,
           'cured, then dead: no "a refresh does not cure" warning');

    $t->finish;
}

# -- a 401 that no refresh cures, under concurrency -------------------------

# The slow request's token is checked, then its 401 comes "late" seconds
# later.  Meanwhile the fast request's 401 refreshes, and its replay gets
# 401 again: 401s are not cured lately.  The slow request is replayed with
# the fast one's token, got before its 401: a 401 to that replay could be
# a second revocation, but with 401s not cured lately it is the same 401,
# and it passes at once.  Else it would be held once more, until the
# next refresh that the rate limit allows, and cost a token request.

{
    my $t = SfTest->new;
    $t->start_mock;
    $t->simple_conf;
    $t->start;

    is($t->get('/services/data/warm')->{status}, 200, 'uncured: warm');
    my $before = $t->token_requests;
    my $replays = $t->cred_info->{replays};
    my $mark = $t->log_mark;

    my $late = 1 * $S;
    my $slow_path = "/services/data/slow?reject=1&late401=$late";
    my $t0 = time;
    my $slow = slow_get($t, $slow_path);
    late401_begun($t, $slow_path);

    is($t->get('/services/data/fast?reject=1')->{status}, 401,
       'uncured: the fast request, refreshed and replayed: 401');
    my $fast = time - $t0;
    cmp_ok($fast, '<', $late,
           sprintf('uncured: its replay\'s 401 came before the slow '
                   . 'request\'s first (%.1f s)', $fast));

    is($slow->(), 401, 'uncured: the slow request, replayed with the fast '
                       . 'one\'s token: 401');
    my $took = time - $t0;

    is($t->token_requests - $before, 1,
       'uncured: one token request, none for the slow request');
    is(scalar(grep { $_->{path} eq $slow_path }
                   @{ $t->stats->{api_log} }), 2,
       'uncured: the slow request was replayed once, not held twice');
    cmp_ok($took, '<', 3 * $late,
           sprintf('uncured: its 401 passed at once, after two late 401s '
                   . '(%.1f s, %.1f s each)', $took, $late));
    is($t->cred_info->{replays} - $replays, 2,
       'uncured: 2 replays counted, one a request');
    my @warn = $t->error_log_since($mark) =~ /a refresh does not cure/g;
    is(scalar @warn, 1, 'uncured: "a refresh does not cure" logged once');

    $t->finish;
}

# -- a fleet of two ---------------------------------------------------------

# The rotating mock, Redis and two nodes; node 0 gets the first token and
# node 1 learns it from Redis.  Returns the mock's node, Redis, the nodes.
sub fleet_of_two {
    my ($what) = @_;

    my $first = SfTest->new;
    $first->start_mock;
    $first->mode('rotation');
    my $redis = RedisTest->new(dir => $first->dir);
    $redis->start;
    my @n = RedisTest::fleet(redis => $redis, first => $first, n => 2);
    RedisTest::all_connected(5 * $S, @n);

    is($n[0]->get('/services/data/warm')->{status}, 200, "$what: warm");
    ok(RedisTest::wait_for(3 * $S, sub {
           ((RedisTest::node_redis($n[1]) || {})->{fleet_generation} // 0)
           == 1 }), "$what: node 1 learned generation 1");

    return ($first, $redis, @n);
}

{
    my ($first, $redis, @n) = fleet_of_two('fleet');
    my $before = $first->token_requests;
    my $mark = $n[1]->log_mark;

    # node 1's slow request; node 0 refreshes, node 1 learns it from Redis
    $first->mock('revoke');
    my $slow_path = '/services/data/slow?late401=' . (3 * $S);
    my $slow = slow_get($n[1], $slow_path);
    late401_begun($first, $slow_path);
    is($n[0]->get('/services/data/fast')->{status}, 200,
       'fleet: a revoke, node 0 refreshes: 200');
    ok(RedisTest::wait_for(2 * $S, sub {
           ((RedisTest::node_redis($n[1]) || {})->{fleet_generation} // 0)
           == 2 }), 'fleet: node 1 learned generation 2 from Redis');
    $first->mock('revoke');

    is($slow->(), 200, 'fleet: node 1\'s slow request, its token and the '
                       . 'fleet\'s next one revoked meanwhile: 200');
    is($first->token_requests - $before, 2,
       'fleet: two token requests, one per revoke');
    my $s = $first->mock('stats');
    is_deeply($s->{valid_refresh_tokens}, [ $s->{issued_refresh_tokens}[-1] ],
              'fleet: no rotated-out refresh token reused');
    unlike($n[1]->error_log_since($mark), qr/a refresh does not cure/,
           'fleet: no "a refresh does not cure" warning');

    $_->finish for reverse @n;
    $redis->finish;
}

# -- a fleet of two: the fleet's new token dies as it is issued ------------

# Node 1's request gets its 401 and waits for node 0's refresh, which it
# learns from Redis; Salesforce kills that token as it is issued (a
# revoke right after the token request, or while the fleet had no
# primary).  The token was got after the request's 401, but not by node
# 1: its replay's 401 is that token's death, not a 401 that no refresh
# cures.  Node 1 drops it, refreshes with the refresh token the fleet
# rotated to, and replays once more.

{
    my ($first, $redis, @n) = fleet_of_two('dead on issue');
    my $before = $first->token_requests;
    my $mark = $n[1]->log_mark;

    # node 0 refreshes, slowly; node 1's request waits for it
    # well within the credential's timeout (10 s), under valgrind too
    $first->mock('delay', 'seconds=' . (1.5 * $S > 6 ? 6 : 1.5 * $S));
    $first->mock('revoke');
    $first->mock('revoke_issued', 'count=1');
    my $fast = slow_get($n[0], '/services/data/fast');
    SfTest::wait_event(5 * $S, "node 0's token request at the mock", sub {
        $first->token_requests > $before
    });
    $first->mock('delay', 'seconds=0.05');
    my $slow = slow_get($n[1], '/services/data/node1');

    is($slow->(), 200, 'dead on issue: node 1\'s request, replayed with '
                       . 'the fleet\'s new token that died as it was '
                       . 'issued: 200');
    $fast->();
    is(scalar(grep { $_->{path} eq '/services/data/node1' }
                   @{ $first->stats->{api_log} }), 3,
       'dead on issue: node 1\'s request was replayed twice');
    is($first->token_requests - $before, 2,
       'dead on issue: two token requests, one per dead token');
    RedisTest::no_reuse($first, 'dead on issue');
    unlike($n[1]->error_log_since($mark), qr/a refresh does not cure/,
           'dead on issue: no "a refresh does not cure" warning on node 1');

    $_->finish for reverse @n;
    $redis->finish;
}

done_testing;
