#!/usr/bin/perl

# Reloads that move a credential's record to another zone while its
# refresh runs (issue 22, item 4): under steady load, in rotation mode, a
# revoke starts a refresh, and while its token request is held at the
# mock, a reload
#   1) resizes the zone (a new shm zone; the old one is retired),
#   2) renames it,
#   3) moves the credential to another zone (the old zone is kept), and
#      back,
# and, for a fleet zone (two nodes, one Redis, the refresh B's),
#   4) resizes B's zone,
#   5) changes the prefix of the sf_oauth_redis block on every node: the
#      new keys never saw the old ones' lease, so the nodes take none there
#      for a lease's time to live unless B's outcome is written there
#      first (the quarantine of a new primary).
# nginx maps a new or resized zone only in the master, after the old
# workers were forked: the old worker's token request ends in the old
# zone, and its outcome (a rotated refresh token) must reach the new one
# (the zone "sf_oauth_carry").  For each: every client request 200, one
# token request for the refresh, no rotated-out refresh token presented,
# the new workers use the new token (HIT, the mock answers 200), the
# outcome was carried (the log says so), no alert or crit.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use RedisTest;
use Test::More;
use IO::Select;
use IO::Socket::INET;
use Time::HiRes qw(time);

my $S = SfTest::time_scale();

# how long the mock holds a token request: the reload happens meanwhile
my $hold = 1.5 * $S;

my $carried = qr/the outcome \(a token\) of a token request in flight when a reload moved its record to this sf_oauth_zone is stored/;

# One case: NODE (reloaded), LOADED (the nodes under load; the refresh is
# made by the first), EDIT (the configuration change, a sub), RELOAD (the
# nodes to reload, NODE by default), POKE (nodes sent one request right
# after the reload), HOLD (how long the mock holds the token request,
# $hold by default), MOCK (the SfTest of the mock), CARRIED (0: the reload
# keeps the zone, nothing is carried).
sub case {
    my (%o) = @_;
    my ($what, $node, $mock) = @o{qw(what node mock)};
    my @reload = @{ $o{reload} || [$node] };
    my @loaded = @{ $o{loaded} };

    my %mark = map { $_ => $_->log_mark } @reload;
    my $s0 = $mock->stats;
    my $tr0 = $s0->{token_requests};
    my $issued0 = @{ $s0->{issued_access_tokens} };

    # three clients on the node that refreshes, one on the others
    my $load = RedisTest::Load->start([ ($loaded[0]) x 3, @loaded[1 .. $#loaded] ],
                                      interval => 0.02);
    $load->wait_all_ok(10, time, "$what: the load gets 200s");

    $mock->mock('delay', 'seconds=' . ($o{hold} // $hold));
    $mock->mock('revoke');

    # the revoke's refresh: its token request reached the mock, which
    # holds it for $hold seconds (HOLD)
    SfTest::wait_event(10, "$what: a token request after the revoke",
                       sub { $mock->token_requests > $tr0 });

    $_->edit_conf($o{edit}) for @reload;
    $_->reload(old_may_stay => !!$o{poke}) for @reload;
    my $t1 = time;
    my @poked = map { RedisTest::bg_get($_, '/services/data/v59.0/poke') }
                @{ $o{poke} || [] };

    $load->wait_all_ok(15, $t1, "$what: a 200 from every client after the "
                                . 'reload');
    $mock->mock('delay', 'seconds=0.05');
    my @r = $load->stop;
    is($_->()->{status}, 200, "$what: a request right after the reload: 200")
        for @poked;

    my @bad = grep { $_->{status} != 200 } @r;
    is(scalar @bad, 0, "$what: every request 200 (" . scalar(@r)
                       . ' requests)')
        or diag(RedisTest::tally(map { "$_->{status}" } @bad));

    my $s = $mock->stats;
    is($s->{token_requests} - $tr0, 1, "$what: one token request");
    is(@{ $s->{issued_access_tokens} } - $issued0, 1,
       "$what: one token issued");
    RedisTest::no_reuse($mock, $what);

    # the new workers have the new token: the only one the mock takes
    my $api401 = $s->{api_401};
    for my $n (@reload) {
        my @h = map { $n->get("/services/data/v59.0/after$_") } 1 .. 6;
        is(scalar(grep { $_->{status} == 200
                         && ($_->{headers}{'x-sf-oauth-status'} // '')
                            eq 'HIT' } @h),
           6, "$what: the new workers' requests: 200, HIT");
    }
    $s = $mock->stats;
    is($s->{api_401}, $api401, "$what: the mock rejected none of them");
    is($s->{token_requests} - $tr0, 1, "$what: still one token request");

    if ($o{carried} // 1) {
        ok((grep { $_->error_log_since($mark{$_}) =~ $carried } @reload),
           "$what: the old worker's outcome was carried to the new zone")
            or diag(join "\n", map { $_->log_lines(qr/sf_oauth/, $mark{$_}) }
                               @reload);
    }

    for my $n (@reload) {
        my @alerts = grep { /\[(alert|crit|emerg)\]/ }
                     split /\n/, $n->error_log_since($mark{$n});
        is(scalar @alerts, 0, "$what: no alert or crit")
            or diag(join "\n", @alerts);
    }
}

# -- a single node --------------------------------------------------------------

{
    my $t = SfTest->new;
    $t->start_mock;
    $t->mode('rotation');

    # zones "sf" (crm) and "other" (no credential yet)
    $t->simple_conf(timeout => (5 * $S) . 's',
                    http_extra => "    sf_oauth_zone zone=other:1m;\n");
    $t->start;
    is($t->get('/services/data/v59.0/warm')->{status}, 200, 'warm');

    case(what => 'resize', node => $t, mock => $t, loaded => [$t],
         edit => sub { s/zone=sf:1m/zone=sf:2m/ or die });

    case(what => 'rename', node => $t, mock => $t, loaded => [$t],
         edit => sub { s/zone=sf:2m/zone=sf2:2m/ or die;
                       s/zone sf;/zone sf2;/ or die });

    case(what => 'move to another zone', node => $t, mock => $t,
         loaded => [$t],
         edit => sub { s/zone sf2;/zone other;/ or die });

    # and back, to the zone that the last reload left its old record in
    case(what => 'move back', node => $t, mock => $t, loaded => [$t],
         edit => sub { s/zone other;/zone sf2;/ or die });

    # -- an old worker's request that needs a new token after the reload:
    # it cannot refresh (the new workers may rotate the refresh token), the
    # new workers refresh for it, and it gets their token
    {
        my $what = 'old worker after the reload';
        my $mark = $t->log_mark;
        is($t->get('/services/data/v59.0/warm2')->{status}, 200, "$what: warm");
        my $tr0 = $t->token_requests;
        $t->mock('revoke');

        # a request with the dead token, whose 401 the mock holds back
        # until after the reload
        my $late = 2 * $S;
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                      PeerPort => $t->port) or die;
        print $s "GET /services/data/v59.0/old?late401=$late HTTP/1.1\r\n"
                 . "Host: localhost\r\nConnection: close\r\n\r\n";
        SfTest::wait_event(10, "$what: the request reached the mock", sub {
            grep { $_ =~ m{/old\?late401} } @{ $t->stats->{late401_log} }
        });
        $t->edit_conf(sub { s/zone=sf2:2m/zone=sf2:4m/ or die });
        $t->reload;

        my $answer = '';
        my $sel = IO::Select->new($s);
        my $t0 = time;
        my $end = $t0 + 60 * $S;
        my $err = '';
        while (time < $end) {
            next unless $sel->can_read(0.5);
            my $n = sysread($s, my $chunk, 65536);
            next if !defined $n && $!{EINTR};
            $err = defined $n ? 'EOF' : "$!";
            last unless $n;
            $answer .= $chunk;
        }
        close $s;

        like($answer, qr{^HTTP/1\.1 200}, "$what: the client gets 200")
            or diag(sprintf('after %.1f s (%s): %s', time - $t0, $err,
                            substr($answer, 0, 300)));
        like($answer, qr{X-SF-OAuth-Status: RETRY}i,
             "$what: replayed with the new token");
        is($t->token_requests - $tr0, 1, "$what: one token request");
        RedisTest::no_reuse($t, $what);
        like($t->error_log_since($mark),
             qr/a request of the worker processes before the reload needs a new token: refreshing for it/,
             "$what: a new worker refreshed for it");
        my $r = $t->get('/services/data/v59.0/after-old');
        is($r->{headers}{'x-sf-oauth-status'}, 'HIT',
           "$what: the new workers have that token");
        my @alerts = grep { /\[(alert|crit|emerg)\]/ }
                     split /\n/, $t->error_log_since($mark);
        is(scalar @alerts, 0, "$what: no alert or crit")
            or diag(join "\n", @alerts);
    }

    $t->finish;
}

# -- a fleet: two nodes, one Redis ----------------------------------------------

{
    my $t = SfTest->new;
    $t->start_mock;
    $t->mode('rotation');
    my $redis = RedisTest->new(dir => $t->dir);
    $redis->start;

    my ($A, $B) = RedisTest::fleet(redis => $redis, first => $t, n => 2,
                                   credential => { timeout => (5 * $S) . 's' });
    ok(RedisTest::all_connected(10, $A, $B), 'fleet: connected');
    is($A->get('/services/data/v59.0/warm')->{status}, 200, 'fleet: warm');

    # B alone under load: the refresh is B's
    case(what => 'fleet: resize', node => $B, mock => $t, loaded => [$B],
         edit => sub { s/zone=sf:1m/zone=sf:2m/ or die });
    RedisTest::all_synced(10, $A, $B);
    is($A->get('/services/data/v59.0/a')->{headers}{'x-sf-oauth-status'},
       'HIT', 'fleet: resize: A has the new token');

    # the fleet moves to another prefix, every node in one go, while B
    # refreshes: the zone is handed over, and the token reaches the new
    # place in Redis
    {
        eval {
            # a request to A right after the reload needs the new token
            # while B's token request is held: A's new workers would take
            # the new keys' lease at once, with the refresh token that B's
            # request rotates out
            case(what => 'fleet: prefix', node => $B, mock => $t,
                 loaded => [$B], reload => [$B, $A], poke => [$A],
                 hold => 4 * $S, carried => 0,
                 edit => sub { s/(sf_oauth_redis fleet \{\n)/$1        prefix other:;\n/
                               or die });
            RedisTest::all_connected(10, $A, $B);
            RedisTest::all_synced(10, $A, $B);
            1;
        } or fail("fleet: prefix: $@");

        ok(scalar(grep { /^other:/ } $redis->key_names), 'fleet: prefix: '
           . 'the record is under the new prefix');
        for my $n ($A, $B) {
            ok(scalar($n->log_lines(qr/\[warn\].*the fleet's keys moved \(a reload changed the prefix/, 0)),
               'fleet: prefix: node ' . $n->port . ' says that the keys moved');
        }
    }

    RedisTest::finish_all($redis, $B, $A);
}

done_testing;
