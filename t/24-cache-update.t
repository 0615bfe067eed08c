#!/usr/bin/perl

# proxy_cache_background_update in an sf_oauth location: the background
# update is a clone subrequest made inside the proxy's handler.  It carries
# the token like the main request (never the client's own Authorization),
# and a 401 to it is not cached: it drops the dead token, and the next
# request gets a new one.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use Test::More;
use Time::HiRes qw(sleep);

my $t = SfTest->new;
$t->start_mock;

$t->simple_conf(
    http_extra => "    proxy_cache_path %%DIR%%/cache keys_zone=sfc:1m;\n",
    location_extra => <<'EOF');
            proxy_cache sfc;
            proxy_cache_valid 200 1s;
            proxy_cache_use_stale updating;
            proxy_cache_background_update on;
            add_header X-Cache $upstream_cache_status always;
EOF
$t->start;


sub bg_case {
    my ($name, $u, $hdr, $revoke) = @_;

    is($t->get($u, headers => $hdr)->{status}, 200, "$name: 200, cached");
    sleep 2.2;              # on purpose: the cached answer (1 s) expires
    $t->mock('revoke') if $revoke;

    my $seen = () = grep { $_->{path} eq $u } @{ $t->stats->{api_log} };
    my $r = $t->get($u, headers => $hdr);
    is($r->{status}, 200, "$name: expired, the stale 200");
    is($r->{headers}{'x-cache'}, 'STALE', "$name: updated in the background");

    # the background update reaches the mock
    SfTest::wait_for(5, sub {
        grep({ $_->{path} eq $u } @{ $t->stats->{api_log} }) > $seen });

    my @log = grep { $_->{path} eq $u } @{ $t->mock('stats')->{api_log} };
    is($log[-1]{status}, $revoke ? 401 : 200,
       "$name: the background update went to Salesforce with "
       . ($revoke ? 'the revoked token' : 'the token'));

    for my $i (1, 2) {
        $r = $t->get($u, headers => $hdr);
        is($r->{status}, 200, "$name: client $i after the update gets 200")
            or diag("got $r->{status} X-Cache: "
                    . ($r->{headers}{'x-cache'} // '') . " $r->{content}");
    }
}

bg_case('client header', '/services/data/bga?cache401=1',
        { Authorization => 'Bearer the-client-own' }, 0);
bg_case('revoked', '/services/data/bgb?cache401=1', {}, 1);

# more than 20 headers: the header list has a second part, which a clone
# subrequest shares with the main request
bg_case('25 headers', '/services/data/bgc?cache401=1',
        { map { ("X-Pad-$_" => "v$_") } 1 .. 25 }, 0);

$t->finish;

done_testing;
