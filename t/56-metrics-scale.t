#!/usr/bin/perl

# sf_oauth_info?format=prometheus with 1,000 credentials in two zones: the
# default output (a series per credential) and scope=zone (summed per
# zone) both pass `promtool check metrics`; scope=zone stays small, and
# counts the credentials by state.  The sizes and the scrape times (curl's
# time_total, the median of 10) are printed for the record.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use Test::More;
use Time::HiRes qw(sleep time);

die "promtool is not installed: install Debian's prometheus package "
    . "(make deps)\n" unless grep { -x "$_/promtool" } split /:/, $ENV{PATH};

my $N = 1000;

# scope=zone with two zones, whatever their number of credentials: about
# 2.4 KB a zone today; a bound that a series per credential would break
# at once (one series of one credential is ~60 bytes: 200 of them pass it)
my $ZONE_BOUND = 12 * 1024;

my $t = SfTest->new;
$t->start_mock;

# c1 .. c500 in zone a, c501 .. c1000 in zone b; c1 is used
my $creds = '';
for my $i (1 .. $N) {
    $creds .= $t->credential(name => "c$i", zone => $i <= $N / 2 ? 'a' : 'b');
}

$t->write_conf(
    "    sf_oauth_zone zone=a:16m;\n"
    . "    sf_oauth_zone zone=b:16m;\n"
    . $creds
    . <<'EOF');
    server {
        listen 127.0.0.1:%%PORT%% reuseport default_server;

        location /services/ {
            sf_oauth c1;
            proxy_pass http://127.0.0.1:%%MOCK%%;
        }

        location = /sf_oauth_info {
            allow 127.0.0.1;
            deny all;
            sf_oauth_info;
        }
    }
EOF
$t->start;

sub scrape {
    my ($scope) = @_;
    my $url = '/sf_oauth_info?format=prometheus'
              . ($scope ? "&scope=$scope" : '');
    my $r = $t->get($url, timeout => 30 * SfTest->time_scale);
    is($r->{status}, 200, "$url: 200");
    return $r->{content} // '';
}

# the value of the sample of $name with exactly these labels
sub lval {
    my ($text, $name, %l) = @_;

    my $labels = join ',', map { "$_=\"$l{$_}\"" } sort keys %l;
    for my $line (split /\n/, $text) {
        next unless $line =~ /^\Q$name\E\{([^}]*)\} (\S+)$/;
        my ($got, $v) = ($1, $2);
        my $sorted = join ',', sort split /,/, $got;
        return $v if $sorted eq $labels;
    }
    return undef;
}


is($t->get('/services/data/v59.0/')->{status}, 200, 'c1: 200');

# the request's count reaches the zone within a second
my $zone;
SfTest::wait_event(10, 'the request counted', sub {
    $zone = scrape('zone');
    my $sum = 0;
    $sum += lval($zone, 'sf_oauth_requests_total', zone => 'a',
                 status => $_) // 0 for qw(hit wait);
    return $sum == 1;
});

my $full = scrape();
$t->promtool_check($full, "the default scope, $N credentials");
$t->promtool_check($zone, "scope=zone, $N credentials");

my $valid = () = $full =~ /^sf_oauth_token_valid\{/mg;
is($valid, $N, "the default scope: sf_oauth_token_valid of $N credentials");
is(lval($full, 'sf_oauth_token_valid', credential => 'c1', zone => 'a'), 1,
   'c1 has a token');
is(lval($full, 'sf_oauth_token_requests_total', credential => 'c1',
        zone => 'a', result => 'success'), 1, 'c1: 1 token request');

unlike($zone, qr/credential=/, 'scope=zone: no credential label');
cmp_ok(length $zone, '<', $ZONE_BOUND,
       "scope=zone with $N credentials: under $ZONE_BOUND bytes ("
       . length($zone) . ')');

my %state;
for my $z (qw(a b)) {
    for my $st (qw(valid held backoff not_connected no_token)) {
        $state{$z}{$st} = lval($zone, 'sf_oauth_credentials',
                               zone => $z, state => $st);
    }
}
is_deeply(\%state,
          { a => { valid => 1, held => 0, backoff => 0, not_connected => 0,
                   no_token => $N / 2 - 1 },
            b => { valid => 0, held => 0, backoff => 0, not_connected => 0,
                   no_token => $N / 2 } },
          'scope=zone: sf_oauth_credentials counts each zone\'s credentials '
          . 'by state');
is(lval($zone, 'sf_oauth_token_requests_total', zone => 'a',
        result => 'success'), 1, 'scope=zone: a made 1 token request');
is(lval($zone, 'sf_oauth_token_requests_total', zone => 'b',
        result => 'success'), 0, 'scope=zone: b made none');

# for the record: sizes, lines, and curl's time_total (median of 10)
{
    my %size;
    for my $scope ('', 'zone') {
        my $text = $scope ? $zone : $full;
        my $lines = () = $text =~ /\n/g;
        my $median = 'no curl';
        if (grep { -x "$_/curl" } split /:/, $ENV{PATH}) {
            my $url = 'http://127.0.0.1:' . $t->port
                      . '/sf_oauth_info?format=prometheus'
                      . ($scope ? "&scope=$scope" : '');
            my @times = sort { $a <=> $b }
                        map { `curl -s -o /dev/null -w '%{time_total}' '$url'` }
                        1 .. 10;
            $median = sprintf '%.4f s', ($times[4] + $times[5]) / 2;
        }
        diag(sprintf '%-16s %9d bytes %6d lines, time_total median %s',
             $scope ? "scope=$scope" : 'default scope', length $text, $lines,
             $median);
        $size{$scope} = length $text;
    }
    cmp_ok($size{zone} * 100, '<', $size{''},
           'scope=zone is under 1 % of the default scope\'s size');
}

$t->finish;

done_testing;
