#!/usr/bin/perl

# make bench: what the module costs, and how it behaves under load.
#
#   A/B     wrk against (a) plain proxy_pass with a static
#           "proxy_set_header Authorization" and (b) sf_oauth with a cached
#           token, to the same fast nginx upstream that answers 200 only to
#           the expected bearer token; interleaved, ROUNDS rounds.
#   storm   500 connections under load while Salesforce revokes the token
#           twice: token requests per revoke, client-visible non-2xx, and
#           the added latency of the replayed requests.
#   soak    SOAK seconds of load while the mock's tokens live LIFETIME
#           seconds: client-visible errors, token requests, worker RSS.
#
# It prints a table and writes bench/results.md.  Environment: ROUNDS
# (default 3), DURATION per A/B run (8 s), SOAK (60 s), LIFETIME (5 s).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/../t/lib";
use SfTest;
use POSIX qw(floor);
use Test::More ();
use Time::HiRes qw(sleep time);

# the harness reports through Test::More; a benchmark has no plan
Test::More->builder->no_ending(1);
Test::More->builder->output('/dev/null');

my $rounds = $ENV{ROUNDS} || 3;
my $duration = $ENV{DURATION} || 8;
my $soak = $ENV{SOAK} || 60;
my $lifetime = $ENV{LIFETIME} || 5;
my $token = '00D5g000004Tmock!ARbenchmarkFixedToken0123456789abcdefghijklmnop'
            . 'qrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ';

my $t = SfTest->new(log_level => 'warn');
$t->start_mock;
$t->mock('fixed', "token=$token");

my $up = SfTest::free_port();

$t->write_conf("    sf_oauth_zone zone=sf:1m;\n" . $t->credential . <<"EOF");
    access_log off;

    log_format storm '\$msec \$sf_oauth_status \$status \$request_time';

    upstream fast {
        server 127.0.0.1:$up;
        keepalive 64;
    }

    upstream mock {
        server 127.0.0.1:%%MOCK%%;
    }

    # the fast upstream: 200 only for the expected token
    server {
        listen 127.0.0.1:$up;

        location / {
            if (\$http_authorization != "Bearer $token") {
                return 401 '[{"errorCode":"INVALID_SESSION_ID"}]';
            }
            return 200 '{"totalSize":1,"done":true,"records":[]}';
        }
    }

    server {
        listen 127.0.0.1:%%PORT%% reuseport;

        proxy_http_version 1.1;
        proxy_set_header Connection "";

        # a location's own proxy_set_header drops the inherited ones
        location /a/ {
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer $token";
            proxy_pass http://fast;
        }

        location /b/ {
            sf_oauth crm;
            proxy_pass http://fast;
        }

        location /s/ {
            sf_oauth crm;
            access_log %%DIR%%/storm.log storm;
            proxy_pass http://mock/services/;
        }
    }
EOF

$t->start;

my $port = $t->port;

# -- helpers -------------------------------------------------------------------

sub wrk {
    my ($path, %opt) = @_;

    my $c = $opt{connections} || 64;
    my $d = $opt{duration} || $duration;
    my $out = `wrk -t2 -c$c -d${d}s --latency http://127.0.0.1:$port$path 2>&1`;

    my %r = (raw => $out);
    ($r{rps}) = $out =~ /Requests\/sec:\s+([\d.]+)/;
    $r{p50} = latency($out, '50%');
    $r{p99} = latency($out, '99%');
    ($r{requests}) = $out =~ /(\d+) requests in/;
    ($r{non2xx}) = $out =~ /Non-2xx or 3xx responses: (\d+)/;
    $r{non2xx} //= 0;
    my ($connect, $read, $write, $timeout) =
        $out =~ /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/;
    $r{socket_errors} = ($connect // 0) + ($read // 0) + ($write // 0)
                        + ($timeout // 0);

    die "wrk failed:\n$out" unless $r{rps};

    return \%r;
}

sub latency {
    my ($out, $pct) = @_;

    my ($v, $unit) = $out =~ /^\s+\Q$pct\E\s+([\d.]+)(us|ms|s)$/m;
    return undef unless defined $v;
    return $v / 1000 if $unit eq 'us';
    return $v * 1000 if $unit eq 's';
    return $v;
}

sub worker_rss {
    my $kb = 0;
    for my $pid ($t->worker_pids) {
        my ($rss) = `ps -o rss= -p $pid` =~ /(\d+)/;
        $kb += $rss // 0;
    }
    return $kb;
}

sub median {
    my @v = sort { $a <=> $b } @_;
    return $v[floor($#v / 2)] if @v % 2;
    return ($v[$#v / 2 - 0.5] + $v[$#v / 2 + 0.5]) / 2;
}

# -- A/B -----------------------------------------------------------------------

# warm up both paths: the token is fetched once here
die 'the module path does not work' unless $t->get('/b/x')->{status} == 200;
die 'the baseline path does not work' unless $t->get('/a/x')->{status} == 200;
wrk('/a/warm', duration => 2);
wrk('/b/warm', duration => 2);

my (@a, @b);
for my $round (1 .. $rounds) {
    my @order = $round % 2 ? ('a', 'b') : ('b', 'a');
    for my $which (@order) {
        my $r = wrk("/$which/services/data/v59.0/query");
        push @{ $which eq 'a' ? \@a : \@b }, $r;
        printf "round %d %s: %.0f req/s, p50 %.3f ms, p99 %.3f ms, non-2xx %d\n",
               $round, $which, $r->{rps}, $r->{p50}, $r->{p99}, $r->{non2xx};
    }
}

# The machine's speed drifts between runs: each round's a and b ran back
# to back, so the ratios are taken per round, and their median reported.
my %ab;
for my $k (qw(rps p50 p99)) {
    $ab{a}{$k} = median(map { $_->{$k} } @a);
    $ab{b}{$k} = median(map { $_->{$k} } @b);
}
my @ratios = map { $b[$_]{rps} / $a[$_]{rps} } 0 .. $#a;
my @p99_ratios = map { $b[$_]{p99} / $a[$_]{p99} } 0 .. $#a;
my $ratio = median(@ratios);
my $p99_ratio = median(@p99_ratios);
my $ratios = join ', ', map { sprintf '%.3f', $_ } @ratios;
my $p99s = join ', ', map { sprintf '%.3f', $_ } @p99_ratios;
my $ab_errors = 0;
$ab_errors += $_->{non2xx} + $_->{socket_errors} for @a, @b;
my $token_requests_ab = $t->token_requests;

# -- storm -----------------------------------------------------------------------

$t->mock('fixed', 'token=');
$t->mock('revoke');
$t->get('/s/data/warm');

my $before = $t->token_requests;
my $revokes = 2;
my $storm_start = time;

my $pid = fork() // die;
if ($pid == 0) {
    sleep 4;
    for (1 .. $revokes) {
        $t->mock('revoke');
        sleep 4;
    }
    $t->{$_} = undef for qw(nginx_pid mock_pid);
    exit 0;
}

my $storm = wrk('/s/data/v59.0/sobjects', connections => 500, duration => 12);
waitpid($pid, 0);
my $storm_tokens = $t->token_requests - $before;

my (%lat, %count);
for my $line (split /\n/, $t->slurp('storm.log')) {
    my ($msec, $status, $code, $rt) = split / /, $line;
    next unless $msec >= $storm_start;
    $count{$status}++;
    push @{ $lat{$status} }, $rt * 1000;
}
my $hit_p50 = median(@{ $lat{HIT} || [0] });
my $retry_p50 = median(@{ $lat{RETRY} || [0] });

printf "storm: %d requests, %d revokes, %d token requests, %d non-2xx, "
       . "%d socket errors, %d replayed (p50 %.1f ms vs %.1f ms)\n",
       $storm->{requests}, $revokes, $storm_tokens, $storm->{non2xx},
       $storm->{socket_errors}, $count{RETRY} // 0, $retry_p50, $hit_p50;

# -- soak ------------------------------------------------------------------------

$t->mock('lifetime', "seconds=$lifetime&absolute=1");
$t->mock('revoke');
$t->get('/s/data/warm');
wrk('/s/data/warm', connections => 20, duration => 3);

$before = $t->token_requests;
my $rss_start = worker_rss();
my $soak_r = wrk('/s/data/v59.0/limits', connections => 20, duration => $soak);
my $rss_end = worker_rss();
my $soak_tokens = $t->token_requests - $before;

printf "soak: %d s, %d requests, %d non-2xx, %d socket errors, "
       . "%d token requests (tokens live %d s), worker RSS %d -> %d KiB\n",
       $soak, $soak_r->{requests}, $soak_r->{non2xx},
       $soak_r->{socket_errors}, $soak_tokens, $lifetime, $rss_start,
       $rss_end;

$t->stop;
$t->stop_mock;

# -- report ------------------------------------------------------------------------

my $cpu = `grep -m1 'model name' /proc/cpuinfo` =~ s/.*:\s*//r;
chomp $cpu;
my $ncpu = `nproc`;
chomp $ncpu;
my $kernel = `uname -sr`;
chomp $kernel;
my ($nginx) = `/usr/sbin/nginx -v 2>&1` =~ m{nginx/(\S+)};
my ($wrkv) = `wrk -v 2>&1` =~ /wrk \S*?([\d.]+)/;
my $date = `date -u '+%Y-%m-%d %H:%M UTC'`;
chomp $date;

my $table = sprintf <<'EOF',
| path | req/s | p50 ms | p99 ms |
|---|---|---|---|
| (a) proxy_pass, static Authorization | %.0f | %.3f | %.3f |
| (b) sf_oauth, cached token | %.0f | %.3f | %.3f |
| ratio b/a, median of the rounds' | %.3f | | %.3f |
EOF
    $ab{a}{rps}, $ab{a}{p50}, $ab{a}{p99}, $ab{b}{rps}, $ab{b}{p50},
    $ab{b}{p99}, $ratio, $p99_ratio;

my $report = <<"EOF";
# Benchmark results

$date, `make bench` (bench/bench.pl).

Machine: $ncpu CPU ($cpu), $kernel; nginx $nginx (Debian), wrk $wrkv.
nginx runs 2 workers; wrk, the mock and the upstream share the same CPUs,
so absolute numbers are low and only the ratios mean something.

## A/B: the hot path

wrk -t2 -c64, $duration s a run, $rounds rounds interleaved (a b, b a, ...);
medians of the runs, and of each round's ratio (a and b of a round ran
back to back, so the drift of a shared machine cancels). Both paths proxy to the same nginx upstream over a keepalive pool;
the upstream answers 200 only to the expected bearer token.

$table
Ratios b/a of each round (requests/s): $ratios; (p99): $p99s.
Errors in all A/B runs (non-2xx and socket errors): $ab_errors.
Token requests during the A/B runs: $token_requests_ab (the one at warm-up).

## Storm: tokens revoked under load

wrk -c500 for 12 s against the mock Salesforce as upstream, which revokes
every token twice (at 4 s and 8 s).

| | |
|---|---|
| requests | $storm->{requests} |
| revokes | $revokes |
| token requests | $storm_tokens |
| client-visible non-2xx | $storm->{non2xx} |
| socket errors | $storm->{socket_errors} |
| requests replayed (RETRY) | @{[ $count{RETRY} // 0 ]} |
| p50 latency, replayed / hit | @{[ sprintf '%.1f ms / %.1f ms', $retry_p50, $hit_p50 ]} |

## Soak: tokens that live $lifetime s

wrk -c20 for $soak s against the mock, whose tokens die $lifetime s after
they are issued.

| | |
|---|---|
| requests | $soak_r->{requests} |
| client-visible non-2xx | $soak_r->{non2xx} |
| socket errors | $soak_r->{socket_errors} |
| token requests | $soak_tokens (about one per lifetime: @{[ floor($soak / $lifetime) ]}) |
| worker RSS at start / end | $rss_start KiB / $rss_end KiB |
EOF

open my $fh, '>', "$FindBin::Bin/results.md" or die "results.md: $!";
print $fh $report;
close $fh;

print "\n$table\n";
print "written to bench/results.md\n";
