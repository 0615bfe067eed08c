#!/usr/bin/perl

# The retry schedule: transient failures back off exponentially between
# the "backoff" bounds, operator-action failures hold for "hold", requests
# in the meantime fail fast with Retry-After, and a reload that changes the
# credential ends a hold at once.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use Test::More;
use Time::HiRes qw(sleep time);

my $t = SfTest->new;
$t->start_mock;

# -- an outage: 500 requests over 5 s -----------------------------------------

$t->mode('down');
$t->simple_conf(http_extra => '') ;
my $conf = $t->slurp('nginx.conf');
$conf =~ s/(client_id [^;]+;)/$1\n        backoff 1s 4s;/;
open my $fh, '>', $t->dir . '/nginx.conf' or die;
print $fh $conf;
close $fh;
$t->start;

my $start = time;
my (%status, $slowest);
for my $round (1 .. 10) {
    my $t0 = time;
    $status{$_}++ for $t->parallel(50, '/services/data/');
    my $took = time - $t0;
    $slowest = $took if !$slowest || $took > $slowest;
    sleep 0.5 - $took if $took < 0.5;     # on purpose: the outage's pace
}
my $span = time - $start;

is_deeply(\%status, { 502 => 500 }, '500 requests during the outage: all 502');
ok($slowest < 1, sprintf('they fail fast: 50 at once in at most %.2f s', $slowest));

# 0 s, then after about 1 s, 2 s, 4 s (a fifth less at most): 4 attempts
# in 5 s at the very most
my $n = $t->token_requests;
ok($n >= 2 && $n <= 4,
   sprintf('%d token requests in %.1f s: as the backoff allows (2 to 4)', $n, $span));

my $r = $t->get('/services/data/');
like($r->{headers}{'retry-after'}, qr/^[1-4]$/, 'Retry-After within the bounds');

my @lines = grep { /\[error\].*sf_oauth/ } split /\n/, $t->error_log;
is(scalar @lines, $n, 'one error line per token request, not per request');

$t->mode('normal');
# the backoff ends: sf_oauth_info's retry_in (s) reaches 0
$t->wait_info_event(undef, 'the end of the backoff (retry_in 0)',
                    sub { $_[0]{retry_in} == 0 }, 10);
is($t->get('/services/data/')->{status}, 200, 'after the outage: 200');

$t->stop;

# -- an operator-action failure holds --------------------------------------

$t->mock('reset');
$t->mode('invalid_grant');
$conf =~ s/backoff 1s 4s;/backoff 1s 4s;\n        hold 3s;/;
open $fh, '>', $t->dir . '/nginx.conf' or die;
print $fh $conf;
close $fh;
truncate $t->dir . '/error.log', 0;
$t->start;

is($t->get('/services/data/')->{status}, 502, 'invalid_grant: 502');
$r = $t->get('/services/data/');
like($r->{headers}{'retry-after'}, qr/^[23]$/, 'invalid_grant: Retry-After is the hold');

$t->mode('normal');
my @s = $t->parallel(100, '/services/data/');
is(scalar(grep { $_ == 502 } @s), 100, 'during the hold: every request fails fast');
is($t->token_requests, 1, 'during the hold: no token request');
# the hold ends: sf_oauth_info's retry_in (s) reaches 0
$t->wait_info_event(undef, 'the end of the hold (retry_in 0)',
                    sub { $_[0]{retry_in} == 0 }, 10);
is($t->get('/services/data/')->{status}, 200, 'after the hold: retried, 200');
is($t->token_requests, 2, 'after the hold: one token request');

@lines = grep { /\[error\].*sf_oauth/ } split /\n/, $t->error_log;
is(scalar @lines, 1, 'one error line for the hold');

$t->stop;

# -- a reload with a fixed credential ends the hold at once --------------------

$t->mock('reset');
$t->mode('invalid_grant');
$t->simple_conf;                            # hold: 5 min by default
$t->start;
is($t->get('/services/data/')->{status}, 502, 'invalid_grant: 502');
like($t->get('/services/data/')->{headers}{'retry-after'}, qr/^(29\d|300)$/,
     'the default hold is 5 minutes');

$t->mode('normal');
$t->simple_conf(refresh_token => 'a-new-refresh-token');
$t->mock('reset');
$t->reload;
$r = $t->get('/services/data/');
is($t->token_requests, 1, 'the reload ended the hold: a token request at once');
like($r->{json}{error_description} // '', qr/invalid_grant/,
     'with the new refresh token (which this mock does not know)');

$t->finish;

done_testing;
