#!/usr/bin/perl

# The refresh ahead of expiry: with "lifetime" (the org's session timeout)
# a worker refreshes a token in the background before it would die, so
# requests after an idle spell neither wait nor get a 401 to replay; under
# steady use the sliding timeout never runs out and nothing is refreshed.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use Test::More;
use Time::HiRes qw(sleep);

my $t = SfTest->new;
$t->start_mock;
$t->mock('lifetime', 'seconds=3');

sub conf {
    my ($extra) = @_;
    $t->simple_conf->edit_conf(sub { s/(client_id [^;]+;)/$1\n$extra/ });
}

# a request every 0.5 s for 8 s
sub steady_pattern {
    my (%status);
    for (1 .. 16) {
        my $r = $t->get('/services/data/');
        $status{"$r->{status} $r->{headers}{'x-sf-oauth-status'}"}++;
        sleep 0.5;          # on purpose: the pace of the traffic
    }
    return \%status;
}

sub idle_pattern {
    my (%status);
    for (1 .. 4) {
        my $r = $t->get('/services/data/');
        $status{"$r->{status} $r->{headers}{'x-sf-oauth-status'}"}++;
        sleep 3.5;          # on purpose: idle spells that age the token
    }
    return \%status;
}

# -- without lifetime: a request after an idle spell finds a dead token -----

conf('');
$t->start;
$t->get('/services/data/');
my $without = idle_pattern();
ok($without->{'200 RETRY'}, 'without lifetime: idle tokens die and are replayed')
    or diag(explain $without);
$t->stop;

# -- with lifetime: refreshed ahead, every request a hit -----------------------

$t->mock('reset');
$t->mock('lifetime', 'seconds=3');
truncate $t->dir . '/error.log', 0;
conf("        lifetime 3s;\n        refresh_ahead 1s;");
$t->start;

is($t->get('/services/data/')->{headers}{'x-sf-oauth-status'}, 'WAIT',
   'cold start: WAIT');
my $with = idle_pattern();
is_deeply($with, { '200 HIT' => 4 },
          'with lifetime: after every idle spell, a hit: no wait, no replay');

my $ahead = () = $t->error_log =~ /refreshing the token ahead of its expiry/g;
ok($ahead >= 4, "refreshed ahead in the background ($ahead times)");
is($t->mock('stats')->{api_401}, 0, 'Salesforce never saw a dead token');

my $info = $t->get('/sf_oauth_info')->{json}{credentials}[0];
is($info->{ahead_refreshes}, $ahead, 'sf_oauth_info counts them');

# -- steady use: the sliding timeout never runs out ----------------------------

my $before = $t->token_requests;
is_deeply(steady_pattern(), { '200 HIT' => 16 }, 'steady use for 8 s: all hits');
ok($t->token_requests - $before <= 1,
   'steady use: no refresh needed (at most one already due)');

$t->stop;

# -- introspect on: the expiry asked of Salesforce, no lifetime configured ------

$t->mock('reset');
$t->mock('lifetime', 'seconds=3');
truncate $t->dir . '/error.log', 0;
conf("        introspect on;\n        refresh_ahead 1s;");
$t->start;

is($t->get('/services/data/')->{headers}{'x-sf-oauth-status'}, 'WAIT',
   'introspect: cold start');
my $intro = idle_pattern();
is_deeply($intro, { '200 HIT' => 4 },
          'introspect: after every idle spell, a hit');
my $stats = $t->mock('stats');
ok($stats->{introspections} >= 4,
   "introspect: Salesforce was asked ($stats->{introspections} times)");
is($stats->{api_401}, 0, 'introspect: Salesforce never saw a dead token');
like($t->error_log, qr/refreshing the token ahead of its expiry in \d+ s/,
     'introspect: the refresh is logged with the expiry');

# steady use: the expiry slides, introspection says so, nothing is refreshed
$before = $t->token_requests;
is_deeply(steady_pattern(), { '200 HIT' => 16 },
          'introspect, steady use: all hits');
ok($t->token_requests - $before <= 1, 'introspect, steady use: no refresh');
ok($t->mock('stats')->{introspections} > $stats->{introspections},
   'introspect, steady use: the expiry was checked again');

$t->finish;

done_testing;
