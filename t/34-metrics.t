#!/usr/bin/perl

# The Prometheus metrics: sf_oauth_info?format=prometheus checked by
# promtool, its names, types and labels, no secret in it; a real
# prometheus server (Debian's package) scrapes it and the test reads,
# through its query API, what the test caused: one token request and three
# replays after a revoke, the org's API usage (Sforce-Limit-Info), counters
# that survive a reload; the alerting rules of prometheus/sf_oauth.rules.yml
# pass promtool's checks and unit tests, load into the server and fire on
# what they should.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use File::Temp qw(tempdir);
use HTTP::Tiny;
use JSON::PP;
use POSIX qw(:sys_wait_h);
use Test::More;
use Time::HiRes qw(sleep time);

for my $tool (qw(promtool prometheus)) {
    die "$tool is not installed: install Debian's prometheus package "
        . "(make deps)\n" unless grep { -x "$_/$tool" } split /:/, $ENV{PATH};
}

my $scale = SfTest->can('time_scale') ? SfTest::time_scale()
                                      : ($ENV{SF_TEST_VALGRIND} ? 10 : 1);
my $RULES = "$SfTest::ROOT/prometheus/sf_oauth.rules.yml";

# every metric of the default scope (a series per credential), with its
# type
my %WANT = (
    sf_oauth_token_requests_total                     => 'counter',
    sf_oauth_replays_total                            => 'counter',
    sf_oauth_rejected_tokens_total                    => 'counter',
    sf_oauth_ahead_refreshes_total                    => 'counter',
    sf_oauth_wait_timeouts_total                      => 'counter',
    sf_oauth_requests_total                           => 'counter',
    sf_oauth_token_valid                              => 'gauge',
    sf_oauth_token_age_seconds                        => 'gauge',
    sf_oauth_backoff_seconds                          => 'gauge',
    sf_oauth_token_held                               => 'gauge',
    sf_oauth_api_requests_used                        => 'gauge',
    sf_oauth_api_requests_limit                       => 'gauge',
    sf_oauth_token_request_duration_seconds           => 'histogram',
);

# the metrics with a label for the outcome: its name and every value, each
# always a sample
my %LABEL = (
    sf_oauth_token_requests_total =>
        [ result => qw(success transient_failure operator_failure dropped) ],
    sf_oauth_requests_total => [ status => qw(hit wait retry error) ],
    sf_oauth_credentials =>
        [ state => qw(valid held backoff not_connected no_token) ],
);

# scope=zone: the counters and the histogram summed, the credentials
# counted by state, the highest API usage; no per-credential gauge
my %WANT_ZONE = (
    (map { $_ => $WANT{$_} } grep { $WANT{$_} ne 'gauge' } keys %WANT),
    sf_oauth_credentials                              => 'gauge',
    sf_oauth_api_requests_max_ratio                   => 'gauge',
);

# -- nginx: three credentials, two zones ------------------------------------
#
# crm gets tokens; bad has a wrong client secret (invalid_client: an
# operator failure, on hold); down is in another zone, against a second
# mock that answers 503 (a transient failure, backoff).

my $t = SfTest->new;
$t->start_mock;
my $m2 = $t->start_extra_mock;
$m2->mode('down');

$t->write_conf(
    "    sf_oauth_zone zone=sf:1m;\n"
    . "    sf_oauth_zone zone=edge:1m;\n"
    . $t->credential
    . $t->credential(name => 'bad', client_secret => 'not-the-secret-4242')
    . $t->credential(name => 'down', zone => 'edge',
                     token_url => 'http://127.0.0.1:%%MOCK2%%'
                                  . '/services/oauth2/token')
    . <<'EOF');
    server {
        listen 127.0.0.1:%%PORT%% reuseport default_server;

        location /services/ {
            sf_oauth crm;
            add_header X-SF-OAuth-Status $sf_oauth_status always;
            add_header X-Worker $pid always;
            proxy_pass http://127.0.0.1:%%MOCK%%;
        }

        location /bad/ {
            sf_oauth bad;
            add_header X-SF-OAuth-Status $sf_oauth_status always;
            proxy_pass http://127.0.0.1:%%MOCK%%/services/;
        }

        location /down/ {
            sf_oauth down;
            add_header X-SF-OAuth-Status $sf_oauth_status always;
            proxy_pass http://127.0.0.1:%%MOCK2%%/services/;
        }

        location = /sf_oauth_info {
            allow 127.0.0.1;
            deny all;
            sf_oauth_info;
        }
    }
EOF
$t->start;

my @CREDS = qw(crm bad down);
my %ZONE = (crm => 'sf', bad => 'sf', down => 'edge');

# -- helpers ----------------------------------------------------------------

# (a test only when it fails: the waits below scrape many times)
sub scrape {
    my $r = $t->get('/sf_oauth_info?format=prometheus', timeout => 10 * $scale);
    fail("format=prometheus: $r->{status} $r->{content}")
        unless $r->{status} == 200;
    return $r;
}

# { type => {family => type}, help => {family => text},
#   samples => [{name, labels => {}, value}], bad => [lines not parsed] }
sub parse {
    my ($text) = @_;
    my %m = (type => {}, help => {}, samples => [], bad => [],
             text => $text);

    for my $line (split /\n/, $text) {
        if ($line =~ /^# HELP (\S+) (.*)$/) {
            $m{help}{$1} = $2;
        } elsif ($line =~ /^# TYPE (\S+) (\S+)$/) {
            $m{type}{$1} = $2;
        } elsif ($line =~ /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/) {
            my ($name, $l, $v) = ($1, $2 // '', $3);
            my %labels;
            while ($l =~ /\G([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?/gc) {
                $labels{$1} = $2;
            }
            push @{ $m{bad} }, $line if (pos($l) // 0) != length $l;
            push @{ $m{samples} }, { name => $name, labels => \%labels,
                                     value => $v };
        } else {
            push @{ $m{bad} }, $line;
        }
    }

    return \%m;
}

# the value of a sample of a credential (undef when there is none); $more:
# the bucket's le, or {label => value} of its other labels
sub val {
    my ($m, $name, $cred, $more) = @_;

    $more = { le => $more } if defined $more && !ref $more;
    return lval($m, $name, { %{ $more // {} }, credential => $cred });
}

# the value of the first sample of $name with these labels
sub lval {
    my ($m, $name, $want) = @_;

    for my $s (@{ $m->{samples} }) {
        next unless $s->{name} eq $name;
        next if grep { ($s->{labels}{$_} // '') ne $want->{$_} } keys %$want;
        return $s->{value};
    }

    return undef;
}

# the sum over the outcome label of a labeled metric
sub total {
    my ($m, $name, $cred) = @_;

    my ($label, @values) = @{ $LABEL{$name} };
    my $sum = 0;
    for my $v (@values) {
        my $x = val($m, $name, $cred, { $label => $v });
        return undef unless defined $x;
        $sum += $x;
    }
    return $sum;
}

sub metrics { parse(scrape()->{content}) }

# the exposition format's order: one HELP and one TYPE per family, before
# its samples, and a family's samples together
sub families_together {
    my ($m, $what) = @_;

    my (@order, %heads);
    for my $line (split /\n/, $m->{text}) {
        if ($line =~ /^# (HELP|TYPE) (\S+)/) {
            $heads{$2}{$1}++;
            push @order, $2 unless @order && $order[-1] eq $2;
            next;
        }
        my ($name) = $line =~ /^(\w+)/ or next;
        my $base = $name =~ s/_(bucket|sum|count)$//r;
        $name = $base if ($m->{type}{$base} // '') eq 'histogram';
        push @order, $name unless @order && $order[-1] eq $name;
    }
    my %seen;
    my @split = grep { $seen{$_}++ } @order;
    is_deeply(\@split, [], "$what: each family's samples together, after "
                           . 'its HELP and TYPE');
    is_deeply([ grep { ($heads{$_}{HELP} // 0) != 1
                       || ($heads{$_}{TYPE} // 0) != 1 } sort keys %heads ],
              [], "$what: one HELP and one TYPE per family");
}


# polls until the sub returns true, for up to $secs seconds (scaled)
sub wait_until {
    my ($secs, $cond) = @_;

    my $end = time + $secs * $scale;
    while (time < $end) {
        return 1 if $cond->();
        sleep 0.2;
    }
    return $cond->();
}

# -- before any request: no token, no API usage known -----------------------

{
    my $r = scrape();
    is($r->{status}, 200, 'format=prometheus: 200');
    like($r->{headers}{'content-type'} // '',
         qr{^text/plain; version=0\.0\.4(; charset=utf-8)?$},
         'the text exposition format\'s content type');
    $t->promtool_check($r->{content}, 'no token, no API usage yet');

    my $m = parse($r->{content});
    for my $c (@CREDS) {
        is(val($m, 'sf_oauth_token_valid', $c), 0, "$c: no valid token yet");
        is(val($m, 'sf_oauth_token_age_seconds', $c), undef,
           "$c: no token age without a token");
        is(val($m, 'sf_oauth_api_requests_used', $c), undef,
           "$c: no API usage before Salesforce said any");
        for my $res (@{ $LABEL{sf_oauth_token_requests_total} }[1 .. 4]) {
            is(val($m, 'sf_oauth_token_requests_total', $c,
                   { result => $res }), 0,
               "$c: no token request yet (result=\"$res\")");
        }
        for my $st (@{ $LABEL{sf_oauth_requests_total} }[1 .. 4]) {
            is(val($m, 'sf_oauth_requests_total', $c, { status => $st }), 0,
               "$c: no request yet (status=\"$st\")");
        }
    }

    my $info = $t->cred_info('crm');
    ok($info && exists $info->{api_usage} && !defined $info->{api_usage},
       'JSON: api_usage is null before any REST answer');
}

# -- one request each: a token, a hold, a backoff ---------------------------

my %status;    # credential => its $sf_oauth_status

{
    my $r = $t->get('/services/data/v59.0/');
    is($r->{status}, 200, 'crm: 200');
    $status{crm} = $r->{headers}{'x-sf-oauth-status'} // '';

    $r = $t->get('/bad/data/v59.0/');
    is($r->{status}, 502, 'bad (wrong client secret): 502');
    $status{bad} = $r->{headers}{'x-sf-oauth-status'} // '';
    like($r->{content}, qr/invalid_client/, 'bad: invalid_client');

    $r = $t->get('/down/data/v59.0/');
    is($r->{status}, 502, 'down (the token endpoint answers 503): 502');
    $status{down} = $r->{headers}{'x-sf-oauth-status'} // '';

    like($status{crm}, qr/^(HIT|WAIT)$/, "crm: $status{crm}");
    is($status{bad}, 'ERROR', 'bad: ERROR');
    is($status{down}, 'ERROR', 'down: ERROR');
}

# each request's status reaches the zone within a second (the worker that
# served it flushes on its next request or on its 1 s timer)
my $m;
ok(wait_until(5, sub {
       $m = metrics();
       !grep { (val($m, 'sf_oauth_requests_total', $_,
                    { status => lc $status{$_} }) // 0) != 1
               || total($m, 'sf_oauth_requests_total', $_) != 1 } @CREDS;
   }), 'each request is counted by its $sf_oauth_status within 5 s, in '
       . 'sf_oauth_requests_total{status="..."}, and only there')
    or diag(join "\n", map { "$_: $status{$_} "
                             . (val($m, 'sf_oauth_requests_total', $_,
                                    { status => lc $status{$_} }) // '-') }
                       @CREDS);

my $text = scrape()->{content};
$m = parse($text);
$t->promtool_check($text, 'a token, a hold, a backoff; API usage known and '
                      . 'unknown');

is_deeply($m->{bad}, [], 'every line parses as a comment or a sample');
families_together($m, 'the default scope');

# -- names, types, help, labels ----------------------------------------------

for my $name (sort keys %WANT) {
    is($m->{type}{$name}, $WANT{$name}, "$name is a $WANT{$name}");
    ok(length($m->{help}{$name} // ''), "$name has a HELP text");
}

for my $name (sort keys %{ $m->{type} }) {
    my $type = $m->{type}{$name};
    like($name, qr/^sf_oauth_[a-z][a-z0-9_]*[a-z0-9]$/,
         "$name: the sf_oauth_ prefix, snake case");
    if ($type eq 'counter') {
        like($name, qr/_total$/, "$name: a counter ends in _total");
    } else {
        unlike($name, qr/_total$/, "$name: only counters end in _total");
    }
    unlike($name,
           qr/_(ms|msec|milliseconds|microseconds|us|minutes|hours|days|kb|kilobytes|mb|megabytes|percent)(_|$)/,
           "$name: base units");
    ok(exists $m->{help}{$name}, "$name: HELP and TYPE");
}

{
    my (%bad_labels, %unknown, %missing, %per_cred, %wrong_zone);

    for my $s (@{ $m->{samples} }) {
        my $family = $s->{name};
        if (!$m->{type}{$family}) {
            my $base = $family =~ s/_(bucket|sum|count)$//r;
            $family = $base if ($m->{type}{$base} // '') eq 'histogram';
        }
        $unknown{ $s->{name} }++ unless $m->{type}{$family};

        my $own = $LABEL{$family} ? $LABEL{$family}[0] : '';
        my @extra = grep { $_ ne 'credential' && $_ ne 'zone' && $_ ne $own
                           && !($_ eq 'le' && $s->{name} =~ /_bucket$/) }
                    keys %{ $s->{labels} };
        $bad_labels{ $s->{name} } = "@extra" if @extra;
        if ($own) {
            my $v = $s->{labels}{$own} // '(none)';
            $bad_labels{ $s->{name} } = "$own=$v"
                unless grep { $_ eq $v }
                       @{ $LABEL{$family} }[1 .. $#{ $LABEL{$family} }];
        }
        $missing{ $s->{name} }++
            unless defined $s->{labels}{credential}
                   && defined $s->{labels}{zone};

        my $c = $s->{labels}{credential} // '';
        $wrong_zone{"$s->{name}/$c"} = $s->{labels}{zone}
            if ($s->{labels}{zone} // '') ne ($ZONE{$c} // '?');
        $per_cred{$family}{$c}++ if $family eq $s->{name};
    }

    is_deeply(\%unknown, {}, 'every sample belongs to a TYPE\'d family');
    is_deeply(\%bad_labels, {},
              'no label but credential and zone (and le on buckets, result '
              . 'and status on their metrics, with their values only)');
    is_deeply(\%missing, {}, 'every sample has credential and zone');
    is_deeply(\%wrong_zone, {},
              'zone is the credential\'s zone (sf, and edge for down)');

    # one sample per credential of every counter and of the gauges that
    # always have a value
    for my $name (grep { $WANT{$_} eq 'counter' } keys %WANT,
                  qw(sf_oauth_token_valid sf_oauth_backoff_seconds
                     sf_oauth_token_held))
    {
        my $n = $LABEL{$name} ? @{ $LABEL{$name} } - 1 : 1;
        is_deeply($per_cred{$name}, { map { $_ => $n } @CREDS },
                  "$name: $n sample(s) per credential");
    }
}

# -- values --------------------------------------------------------------------

is(val($m, 'sf_oauth_token_valid', 'crm'), 1, 'crm: token_valid 1');
is(val($m, 'sf_oauth_token_valid', 'bad'), 0, 'bad: token_valid 0');
is(val($m, 'sf_oauth_token_valid', 'down'), 0, 'down: token_valid 0');

{
    my $age = val($m, 'sf_oauth_token_age_seconds', 'crm');
    ok(defined $age && $age >= 0 && $age <= 10 * $scale,
       'crm: token_age_seconds ' . ($age // 'missing'));
}
is(val($m, 'sf_oauth_token_age_seconds', 'bad'), undef, 'bad: no token age');
is(val($m, 'sf_oauth_token_age_seconds', 'down'), undef, 'down: no token age');

{
    my $b = val($m, 'sf_oauth_backoff_seconds', 'bad') // -1;
    ok($b > 60 && $b <= 300,
       "bad: on hold, backoff_seconds $b in ]60, 300]");
    is(val($m, 'sf_oauth_backoff_seconds', 'crm'), 0, 'crm: no backoff');
    my $d = val($m, 'sf_oauth_backoff_seconds', 'down') // -1;
    ok($d >= 0 && $d <= 60, "down: a transient backoff ($d s), 60 s at most");
}

is(val($m, 'sf_oauth_token_held', 'bad'), 1, 'bad: held (an operator failure)');
is(val($m, 'sf_oauth_token_held', 'down'), 0, 'down: not held (transient)');
is(val($m, 'sf_oauth_token_held', 'crm'), 0, 'crm: not held');

sub tokens { val($m, 'sf_oauth_token_requests_total', $_[0],
                 { result => $_[1] }) }

is(total($m, 'sf_oauth_token_requests_total', 'crm'), 1,
   'crm: 1 token request');
is(tokens('crm', 'success'), 1, 'crm: 1 result="success"');
is(total($m, 'sf_oauth_token_requests_total', 'bad'), 1,
   'bad: 1 token request');
is(tokens('bad', 'operator_failure'), 1, 'bad: 1 result="operator_failure"');
is(tokens('bad', 'transient_failure'), 0, 'bad: no transient failure');
is(total($m, 'sf_oauth_token_requests_total', 'down'), $m2->token_requests,
   'down: as many token requests as the second mock got');
is(tokens('down', 'transient_failure'), $m2->token_requests,
   'down: each a result="transient_failure"');
is(tokens('down', 'operator_failure'), 0, 'down: no operator failure');
is(tokens($_, 'dropped'), 0, "$_: no token request dropped") for @CREDS;

# the JSON counts a token request when it starts: none is in flight now
for my $c (@CREDS) {
    my $info = $t->cred_info($c);
    is(total($m, 'sf_oauth_token_requests_total', $c),
       $info->{token_requests},
       "$c: the sum over result is the JSON's token_requests");
}
is($t->token_requests, 2, 'the first mock got 2 token requests (crm, bad)');

for my $c (@CREDS) {
    my @le = map { $_->{labels}{le} }
             grep { $_->{name} eq 'sf_oauth_token_request_duration_seconds_bucket'
                    && $_->{labels}{credential} eq $c } @{ $m->{samples} };
    my @v = map { val($m, 'sf_oauth_token_request_duration_seconds_bucket',
                      $c, $_) } @le;
    my $count = val($m, 'sf_oauth_token_request_duration_seconds_count', $c);

    is($le[-1], '+Inf', "$c: the histogram ends with le=\"+Inf\"");
    ok(!grep({ $le[$_] ne '+Inf' && $le[$_ + 1] ne '+Inf'
               && $le[$_] >= $le[$_ + 1] } 0 .. $#le - 1),
       "$c: bucket bounds grow (@le)");
    ok(!grep({ $v[$_] > $v[$_ + 1] } 0 .. $#v - 1),
       "$c: buckets are cumulative (@v)");
    is($v[-1], $count, "$c: le=\"+Inf\" is the count");
    is($count, total($m, 'sf_oauth_token_requests_total', $c),
       "$c: one observation per token request");
    my $sum = val($m, 'sf_oauth_token_request_duration_seconds_sum', $c);
    ok(defined $sum && $sum > 0 && $sum < 30 * $scale,
       "$c: the sum, in seconds (" . ($sum // 'missing') . ')');
}

{
    my $stats = $t->mock('stats');
    is(val($m, 'sf_oauth_api_requests_used', 'crm'), $stats->{api_requests},
       "crm: api_requests_used is the mock's ($stats->{api_requests})");
    is(val($m, 'sf_oauth_api_requests_limit', 'crm'), 15000,
       'crm: api_requests_limit 15000');
    is(val($m, 'sf_oauth_api_requests_used', $_), undef,
       "$_: no API usage (no REST answer)") for qw(bad down);
    is(val($m, 'sf_oauth_api_requests_limit', $_), undef,
       "$_: no API limit (no REST answer)") for qw(bad down);
}

# -- no secret, no fingerprint -------------------------------------------------

sub no_secret_in {
    my ($text, $what) = @_;

    my $stats = $t->mock('stats');
    my $info = $t->get('/sf_oauth_info')->{json};
    my @fps = grep { defined && length }
              map { ($_->{token_fp}, $_->{refresh_token_fp}) }
              @{ $info->{credentials} || [] };
    my @secrets = ($SfTest::CLIENT_SECRET, $SfTest::REFRESH_TOKEN,
                   'not-the-secret-4242',
                   @{ $stats->{issued_access_tokens} || [] },
                   @{ $stats->{issued_refresh_tokens} || [] });

    ok(@fps >= 3, 'sf_oauth_info has fingerprints to look for ('
                  . scalar(@fps) . ')');
    ok(@{ $stats->{issued_access_tokens} || [] } >= 1,
       'the mock issued tokens to look for');
    my @found = grep { index($text, $_) >= 0 } @secrets;
    is(scalar(@found), 0, "no secret in the metrics ($what)");
    @found = grep { index($text, $_) >= 0 } @fps;
    is_deeply(\@found, [], "no fingerprint in the metrics ($what)");
    unlike($text, qr/fp|fingerprint|secret/i,
           "no fingerprint or secret by name ($what)");
}

no_secret_in($text, 'a token, a hold');

# -- JSON ------------------------------------------------------------------------

{
    my $r = $t->get('/sf_oauth_info?format=json');
    is($r->{status}, 200, 'format=json: 200');
    like($r->{headers}{'content-type'} // '', qr/json/, 'format=json: JSON');
    my ($crm) = grep { $_->{name} eq 'crm' } @{ $r->{json}{credentials} || [] };
    my $stats = $t->mock('stats');
    is($crm->{api_usage}{used}, $stats->{api_requests}, 'JSON: api_usage.used');
    is($crm->{api_usage}{limit}, 15000, 'JSON: api_usage.limit');
    ok(defined $crm->{api_usage}{age} && $crm->{api_usage}{age} >= 0
       && $crm->{api_usage}{age} < 10 * $scale,
       'JSON: api_usage.age ' . ($crm->{api_usage}{age} // 'missing'));
    my ($bad) = grep { $_->{name} eq 'bad' } @{ $r->{json}{credentials} || [] };
    ok($bad && exists $bad->{api_usage} && !defined $bad->{api_usage},
       'JSON: bad\'s api_usage is null');

    my $plain = $t->get('/sf_oauth_info');
    is_deeply([ map { $_->{name} } @{ $plain->{json}{credentials} || [] } ],
              [ map { $_->{name} } @{ $r->{json}{credentials} || [] } ],
              'no format: the same JSON');

    for my $f (qw(bogus PROMETHEUS prometheusx)) {
        $r = $t->get("/sf_oauth_info?format=$f");
        is($r->{status}, 400, "format=$f: 400");
    }
}

# -- scope=zone: the counters summed per zone ------------------------------

{
    my $full = metrics();
    my $r = $t->get('/sf_oauth_info?format=prometheus&scope=zone');
    is($r->{status}, 200, 'scope=zone: 200');
    like($r->{headers}{'content-type'} // '',
         qr{^text/plain; version=0\.0\.4(; charset=utf-8)?$},
         'scope=zone: the text exposition format');
    $t->promtool_check($r->{content}, 'scope=zone');

    my $z = parse($r->{content});
    is_deeply($z->{bad}, [], 'scope=zone: every line parses');
    families_together($z, 'scope=zone');
    is_deeply($z->{type}, \%WANT_ZONE,
              'scope=zone: the counters, the histogram, sf_oauth_credentials '
              . 'and sf_oauth_api_requests_max_ratio, no per-credential '
              . 'gauge');

    my (%bad, %want, %got);
    for my $s (@{ $z->{samples} }) {
        my $family = $s->{name} =~ s/_(bucket|sum|count)$//r;
        $family = $s->{name} unless $z->{type}{$family};
        my $own = $LABEL{$family} ? $LABEL{$family}[0] : '';
        my @extra = grep { $_ ne 'zone' && $_ ne $own
                           && !($_ eq 'le' && $s->{name} =~ /_bucket$/) }
                    keys %{ $s->{labels} };
        $bad{ $s->{name} } = "@extra" if @extra;
        $bad{ $s->{name} } = 'no zone' unless defined $s->{labels}{zone};
        next unless ($z->{type}{$family} // '') =~ /^(counter|histogram)$/;
        my $key = join ',', $s->{name},
                  map { "$_=$s->{labels}{$_}" } sort keys %{ $s->{labels} };
        $got{$key} = $s->{value};
    }
    # compared as numbers to a millisecond: the module prints sums with 3
    # decimals ("0.100"), and adding the credentials' may leave float noise
    $_ = sprintf('%.3f', $_) for values %got;
    is_deeply(\%bad, {}, 'scope=zone: no credential label; zone, and result, '
                         . 'status, state or le where they belong');

    # each counter of a zone is the sum of its credentials' of a scrape
    # before (nothing happens meanwhile: no request, down in its backoff)
    for my $s (@{ $full->{samples} }) {
        my $family = $s->{name} =~ s/_(bucket|sum|count)$//r;
        $family = $s->{name} unless $full->{type}{$family};
        next unless ($full->{type}{$family} // '') =~ /^(counter|histogram)$/;
        my %l = %{ $s->{labels} };
        delete $l{credential};
        my $key = join ',', $s->{name}, map { "$_=$l{$_}" } sort keys %l;
        $want{$key} += $s->{value};
    }
    $_ = sprintf('%.3f', $_) for values %want;
    ok(keys %want > 20, 'the full scrape has counters to add up ('
                        . scalar(keys %want) . ')');
    is_deeply(\%got, \%want,
              'scope=zone: every counter and histogram sample is the sum of '
              . 'its zone\'s credentials\'');

    my %state;
    for my $zone (qw(sf edge)) {
        for my $st (@{ $LABEL{sf_oauth_credentials} }[1 .. 5]) {
            $state{$zone}{$st} = lval($z, 'sf_oauth_credentials',
                                      { zone => $zone, state => $st });
        }
    }
    is_deeply(\%state,
              { sf => { valid => 1, held => 1, backoff => 0,
                        not_connected => 0, no_token => 0 },
                edge => { valid => 0, held => 0, backoff => 1,
                          not_connected => 0, no_token => 0 } },
              'scope=zone: sf_oauth_credentials: crm valid and bad held in '
              . 'sf, down in backoff in edge');

    my $used = val($full, 'sf_oauth_api_requests_used', 'crm');
    my $limit = val($full, 'sf_oauth_api_requests_limit', 'crm');
    my $ratio = lval($z, 'sf_oauth_api_requests_max_ratio', { zone => 'sf' });
    ok(defined $ratio && $used && $limit
       && abs($ratio - $used / $limit) < 0.0001,
       "scope=zone: sf's API usage ratio " . ($ratio // 'missing')
       . " is crm's $used/$limit");
    is(lval($z, 'sf_oauth_api_requests_max_ratio', { zone => 'edge' }), undef,
       'scope=zone: no API usage ratio for edge (no REST answer)');

    cmp_ok(length $r->{content}, '<', length scrape()->{content},
           'scope=zone is smaller than the full scrape');
    no_secret_in($r->{content}, 'scope=zone');

    my $c = parse($t->get('/sf_oauth_info?format=prometheus&scope=credential')
                  ->{content});
    is_deeply($c->{type}, \%WANT,
              'scope=credential: the default, a series per credential');

    for my $v ('bogus', 'ZONE', 'zones', '') {
        $r = $t->get("/sf_oauth_info?format=prometheus&scope=$v");
        is($r->{status}, 400, "scope=$v: 400");
        like($r->{content},
             qr/unknown scope: use scope=credential .* or scope=zone/,
             "scope=$v: the page names the values allowed");
        like($r->{headers}{'content-type'} // '', qr{^text/plain},
             "scope=$v: text/plain");
    }
}

# -- a real Prometheus -------------------------------------------------------

my $prom_port = SfTest::free_port();
my $prom_dir = tempdir('sf_oauth_prom_XXXXXX', TMPDIR => 1,
                       CLEANUP => !$ENV{SF_TEST_KEEP});
my $prom_pid;

END {
    # no daemon left behind, whatever happened
    if ($prom_pid) {
        local $?;
        kill 'KILL', $prom_pid;
        waitpid($prom_pid, 0);
    }
}

{
    my $nginx_port = $t->port;
    open my $fh, '>', "$prom_dir/prometheus.yml" or die;
    print $fh <<"EOF";
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s

rule_files:
  - $RULES

scrape_configs:
  - job_name: sf_oauth
    metrics_path: /sf_oauth_info
    params:
      format: [prometheus]
    static_configs:
      - targets: ['127.0.0.1:$nginx_port']
EOF
    close $fh;

    my $out = `promtool check config $prom_dir/prometheus.yml 2>&1`;
    is($? >> 8, 0, 'promtool check config: the scrape configuration')
        or diag($out);

    $prom_pid = fork() // die "fork: $!";
    if ($prom_pid == 0) {
        open STDOUT, '>>', "$prom_dir/prometheus.log";
        open STDERR, '>&', \*STDOUT;
        exec 'prometheus', "--config.file=$prom_dir/prometheus.yml",
             "--storage.tsdb.path=$prom_dir/data",
             "--web.listen-address=127.0.0.1:$prom_port";
        die "exec prometheus: $!";
    }
    SfTest::wait_port($prom_port, 'prometheus', 600);
}

my $ua = HTTP::Tiny->new(timeout => 10);

sub prom_get {
    my ($path, %q) = @_;

    my $url = "http://127.0.0.1:$prom_port$path";
    $url .= '?' . $ua->www_form_urlencode(\%q) if %q;
    my $r = $ua->get($url);
    my $j = eval { decode_json($r->{content}) };
    return ($j && ($j->{status} // '') eq 'success') ? $j->{data} : undef;
}

sub prom_query {
    my ($q) = @_;
    my $d = prom_get('/api/v1/query', query => $q);
    return $d ? $d->{result} : [];
}

# the one value of a query (undef when it has none or several); of a
# plain selector, its latest sample of the last seconds, so that a scrape
# that failed (a slow nginx under valgrind) and its stale marker do not
# hide it
sub prom_val {
    my ($q) = @_;
    $q = 'last_over_time(' . $q . '[' . 10 * $scale . 's])'
        if $q =~ /^\w+(\{[^}]*\})?$/;
    $q = 'sum(last_over_time(' . $1 . '[' . 10 * $scale . 's]))'
        if $q =~ /^sum\((\w+\{[^}]*\})\)$/;
    my $r = prom_query($q);
    return @$r == 1 ? $r->[0]{value}[1] : undef;
}

sub prom_alerts {
    my $d = prom_get('/api/v1/alerts');
    return $d ? @{ $d->{alerts} } : ();
}

ok(wait_until(30, sub {
       my $r = $ua->get("http://127.0.0.1:$prom_port/-/ready");
       $r->{status} == 200;
   }), 'prometheus is ready')
    or diag(`tail -20 $prom_dir/prometheus.log`);

ok(wait_until(30, sub {
       (prom_val('up{job="sf_oauth"}') // 0) == 1
       && defined prom_val('sum(sf_oauth_token_requests_total'
                           . '{credential="crm"})');
   }), 'prometheus scrapes sf_oauth_info?format=prometheus')
    or diag(encode_json(prom_get('/api/v1/targets') // {}));

{
    my $r;
    wait_until(10, sub {
        $r = prom_query('sf_oauth_token_valid');
        @$r == 3;
    });
    is(scalar(@$r), 3, 'prometheus: token_valid of 3 credentials');
    is_deeply([ sort keys %{ $r->[0]{metric} || {} } ],
              [ qw(__name__ credential instance job zone) ],
              'prometheus: labels credential and zone, and its own');
    my %v = map { $_->{metric}{credential} => $_->{value}[1] } @$r;
    is_deeply(\%v, { crm => 1, bad => 0, down => 0 },
              'prometheus: token_valid 1 for crm, 0 for bad and down');

    my $d = prom_get('/api/v1/targets');
    my ($target) = @{ $d->{activeTargets} || [] };
    is($target->{lastError} // 'none', '', 'the scrape has no error');
}

# -- a revoke under 3 concurrent requests: 1 token request, 3 replays --------

{
    my $tr_q = 'sum(sf_oauth_token_requests_total{credential="crm"})';
    my $rt_q = 'sf_oauth_requests_total{credential="crm",status="retry"}';
    my $tr0 = prom_val($tr_q);
    my $rp0 = prom_val('sf_oauth_replays_total{credential="crm"}');
    my $rt0 = prom_val($rt_q);
    my $rj0 = prom_val('sf_oauth_rejected_tokens_total{credential="crm"}');
    is($tr0, 1, 'prometheus: 1 token request of crm before the revoke');
    is($rp0, 0, 'prometheus: no replay before the revoke');

    my $before = $t->token_requests;
    $t->mock('revoke');

    # the 401 comes late (late401: seconds after the mock checked the
    # token), so that all three are sent with the dead token before the
    # first 401 is read; slow401's 50 ms were too few under valgrind
    # beside other tests (CI run 14: 2 of 3 replayed)
    my $late = $ENV{SF_TEST_VALGRIND} ? 3 : 1;
    my @answers;
    my @status = $t->parallel(3, "/services/data/v59.0/query?late401=$late",
                              answers => \@answers,
                              timeout => 30 * $scale);
    is("@status", '200 200 200', '3 concurrent requests after a revoke: 200');
    my $retries = grep { /^X-SF-OAuth-Status: RETRY\r?$/mi } @answers;
    is($retries, 3, 'all 3 were replayed (RETRY)');
    is($t->token_requests, $before + 1, 'one token request for the three');

    my ($tr, $rp, $rt, $rj);
    ok(wait_until(15, sub {
           $tr = prom_val($tr_q);
           $rp = prom_val('sf_oauth_replays_total{credential="crm"}');
           $rt = prom_val($rt_q);
           ($tr // 0) == $tr0 + 1 && ($rp // 0) == $rp0 + 3
           && ($rt // 0) == $rt0 + 3;
       }), 'prometheus sees the revoke within 15 s');
    is($tr - $tr0, 1, 'prometheus: sf_oauth_token_requests_total went up by 1');
    is($rp - $rp0, 3, 'prometheus: sf_oauth_replays_total went up by 3');
    is($rt - $rt0, 3,
       'prometheus: sf_oauth_requests_total{status="retry"} went up by 3');
    $rj = prom_val('sf_oauth_rejected_tokens_total{credential="crm"}');
    is($rj - $rj0, 1,
       'prometheus: sf_oauth_rejected_tokens_total went up by 1 (one dead '
       . 'token)');
    is(prom_val('sf_oauth_token_requests_total{credential="crm",'
                . 'result="success"}'),
       2, 'prometheus: 2 token requests of crm succeeded');
}

# -- the alerting rules, loaded into this server ---------------------------

{
    my $d;
    ok(wait_until(10, sub {
           $d = prom_get('/api/v1/rules');
           my @r = map { @{ $_->{rules} } } @{ $d->{groups} || [] };
           @r == 4 && !grep { ($_->{health} // '') ne 'ok' } @r;
       }), 'prometheus loaded the 4 rules of sf_oauth.rules.yml, all healthy')
        or diag(encode_json($d // {}));

    my @firing;
    ok(wait_until(10, sub {
           @firing = grep { $_->{labels}{alertname} eq 'SfOAuthOperatorFailure'
                            && $_->{state} eq 'firing' } prom_alerts();
           @firing;
       }), 'SfOAuthOperatorFailure fires');
    is_deeply([ map { $_->{labels}{credential} } @firing ], ['bad'],
              'SfOAuthOperatorFailure: for bad (on hold) only, not for down '
              . '(transient) or crm');

    my @pending = grep { $_->{labels}{alertname} eq 'SfOAuthNoValidToken' }
                  prom_alerts();
    # pending for a minute (for: 1m), then firing: a slow run may be past it
    is_deeply([ sort map { "$_->{labels}{credential}:"
                           . ($_->{state} =~ s/^firing$/pending/r) } @pending ],
              [ 'bad:pending', 'down:pending' ],
              'SfOAuthNoValidToken: pending (or firing) for bad and down, '
              . 'not crm');
    ok(!grep({ $_->{labels}{alertname} =~ /ApiUsage|Replay/ } prom_alerts()),
       'no API usage or replay alert');
}

# -- the org's API usage ---------------------------------------------------

{
    $t->mock('api_limit', 'limit=100');
    for (1 .. 3) {
        my $r = $t->get("/services/data/v59.0/sobjects/$_");
        is($r->{status}, 200, "API request $_ after the limit change: 200");
    }
    my $used = $t->mock('stats')->{api_requests};

    my $mm;
    ok(wait_until(5, sub {
           $mm = metrics();
           (val($mm, 'sf_oauth_api_requests_used', 'crm') // -1) == $used
           && (val($mm, 'sf_oauth_api_requests_limit', 'crm') // -1) == 100;
       }), "the gauges show $used/100 within 5 s");
    is(val($mm, 'sf_oauth_api_requests_used', 'crm'), $used,
       "sf_oauth_api_requests_used $used");
    is(val($mm, 'sf_oauth_api_requests_limit', 'crm'), 100,
       'sf_oauth_api_requests_limit 100');

    my $info = $t->cred_info('crm');
    is($info->{api_usage}{used}, $used, "JSON: api_usage.used $used");
    is($info->{api_usage}{limit}, 100, 'JSON: api_usage.limit 100');

    my ($pu, $pl);
    ok(wait_until(15, sub {
           $pu = prom_val('sf_oauth_api_requests_used{credential="crm"}');
           $pl = prom_val('sf_oauth_api_requests_limit{credential="crm"}');
           ($pu // -1) == $used && ($pl // -1) == 100;
       }), 'prometheus sees the API usage within 15 s');
    is($pu, $used, "prometheus: sf_oauth_api_requests_used $used");
    is($pl, 100, 'prometheus: sf_oauth_api_requests_limit 100');
    cmp_ok($used / 100, '<', 0.9, 'under 90 % of the limit');

    # a few rule evaluations at that usage: no alert (the rule's
    # lastEvaluation in /api/v1/rules: 3 times seen, 2 new ones at least)
    my %evaluated;
    SfTest::wait_event(15, 'two evaluations of SfOAuthApiUsageHigh', sub {
        my $d = prom_get('/api/v1/rules') || {};
        my ($rule) = grep { ($_->{name} // '') eq 'SfOAuthApiUsageHigh' }
                     map { @{ $_->{rules} || [] } } @{ $d->{groups} || [] };
        $evaluated{ $rule->{lastEvaluation} } = 1
            if $rule && $rule->{lastEvaluation};
        return keys %evaluated >= 3;
    });
    ok(!grep({ $_->{labels}{alertname} eq 'SfOAuthApiUsageHigh' }
             prom_alerts()), "SfOAuthApiUsageHigh: quiet at $used/100");

    # -- the latest usage wins, whichever worker saw it --------------------
    #
    # Each worker flushes its usage at most once a second: the one that saw
    # an older value may flush it after the one that saw the newest.  A
    # round: both workers idle and flushed (2.5 s); request 1 on worker A
    # goes to the zone at once; request 2 on A waits for A's timer; the
    # next request that lands on B, B's first, goes at once, and is the
    # newest.  Then A's timer fires with its older value.
    my ($round, $newest, $zone_used, @trace);
    for my $try (1 .. 15) {
        sleep 2.5;      # on purpose: both workers idle, and flushed
        my @seq;
        for my $i (1 .. 12) {
            my $r = $t->get("/services/data/v59.0/order/$try/$i");
            my $w = $r->{headers}{'x-worker'} // '?';
            push @seq, [ $w, time ];
            last if @seq >= 2 && $w ne $seq[0][0];
        }
        my ($wa, $wb) = ($seq[0][0], $seq[-1][0]);
        @trace = map { $_->[0] } @seq;

        # A, A (pending), then B at its first, soon enough (before A's
        # timer): otherwise another round
        next unless @seq >= 3 && $seq[1][0] eq $wa && $wb ne $wa
                    && !grep({ $_->[0] ne $wa } @seq[0 .. $#seq - 1])
                    && $seq[-1][1] - $seq[1][1] < 0.7
                    && $seq[1][1] - $seq[0][1] < 0.7;

        $round = $try;
        $newest = $t->mock('stats')->{api_requests};
        last;
    }
    ok($round, 'a round with an older usage pending on one worker and the '
               . "newest on the other (@trace)");
    sleep 2 * $scale;   # on purpose: A's timer flushes its older value
    $zone_used = val(metrics(), 'sf_oauth_api_requests_used', 'crm');
    is($zone_used, $newest,
       'the zone keeps the newest API usage, not an older one that another '
       . 'worker flushed later');
    is($t->cred_info('crm')->{api_usage}{used}, $newest,
       'JSON: api_usage.used is the newest too');

    # the next request uses the last one
    my $now = $t->mock('stats')->{api_requests};
    $t->mock('api_limit', 'limit=' . ($now + 1));
    is($t->get('/services/data/v59.0/last')->{status}, 200, 'one more: 200');

    my @firing;
    ok(wait_until(15, sub {
           @firing = grep { $_->{labels}{alertname} eq 'SfOAuthApiUsageHigh'
                            && $_->{state} eq 'firing' } prom_alerts();
           @firing;
       }), 'SfOAuthApiUsageHigh fires at ' . ($now + 1) . '/' . ($now + 1));
    is_deeply([ map { $_->{labels}{credential} } @firing ], ['crm'],
              'SfOAuthApiUsageHigh: for crm');
}

# -- counters survive a reload ----------------------------------------------

{
    # everything counted has reached the zone.  On purpose a sleep: a
    # worker flushes its counts a second after its last request (its
    # timer), and nothing outside it shows what it has not flushed yet; the
    # API usage is no sign, as it may reach the zone in the response's
    # header phase, before the request is counted in its log phase
    sleep 1.5 * $scale;
    my $before = metrics();
    my $t0 = time;

    # a request counted in a worker but not yet in the zone at the reload:
    # the worker flushes it on its way out
    my $r = $t->get('/services/data/v59.0/before-reload');
    is($r->{status}, 200, 'a request right before the reload: 200');
    is($r->{headers}{'x-sf-oauth-status'}, 'HIT', 'HIT');
    my $tokens = $t->token_requests;

    $t->reload;

    my $after = metrics();
    my @changed;
    for my $s (@{ $before->{samples} }) {
        my $type = $before->{type}{ $s->{name} }
                   // $before->{type}{ $s->{name} =~ s/_(bucket|sum|count)$//r }
                   // '';
        next unless $type eq 'counter' || $type eq 'histogram';
        my $c = $s->{labels}{credential};
        my $want = $s->{value};
        $want++ if $s->{name} eq 'sf_oauth_requests_total' && $c eq 'crm'
                   && $s->{labels}{status} eq 'hit';
        my $got = lval($after, $s->{name}, $s->{labels});
        my $l = join ',', map { "$_=$s->{labels}{$_}" }
                          sort keys %{ $s->{labels} };
        push @changed, "$s->{name}\{$l} $want -> " . ($got // 'missing')
            unless defined $got && $got == $want;
    }
    is_deeply(\@changed, [], 'after a reload every counter is what it was '
                             . '(and the HIT before it is counted)');
    is($t->token_requests, $tokens, 'the reload made no token request');
    is(val($after, 'sf_oauth_token_valid', 'crm'), 1,
       'after the reload: crm still has its token');
    my $hold = val($before, 'sf_oauth_backoff_seconds', 'bad') // -1;
    my $left = val($after, 'sf_oauth_backoff_seconds', 'bad') // -1;
    my $spent = time - $t0;
    ok($hold > 0 && $left <= $hold && $left >= $hold - $spent - 2,
       "after the reload: bad's hold goes on ($hold s, then $left s "
       . sprintf('%.1f s later)', $spent));
    is(val($after, 'sf_oauth_token_held', 'bad'), 1,
       'after the reload: bad is still held');
    $t->promtool_check($after->{text}, 'after a reload');

    my $hit = val($after, 'sf_oauth_requests_total', 'crm',
                  { status => 'hit' });
    ok(wait_until(15, sub {
           (prom_val('sf_oauth_requests_total{credential="crm",status="hit"}')
            // -1) == $hit;
       }), "prometheus sees the HIT of before the reload ($hit)");
    my %resets = map {
        my $q = "sum(resets($_\[10m]))";
        ($_ => prom_val($q) // 'no value');
    } (grep({ $WANT{$_} eq 'counter' } keys %WANT),
       'sf_oauth_token_request_duration_seconds_count');
    is_deeply(\%resets, { map { $_ => 0 } keys %resets },
              'prometheus saw no counter reset ('
              . scalar(keys %resets) . ' counters)');
    is(prom_val('sum(sf_oauth_token_requests_total{credential="crm"})'), 2,
       'prometheus: sf_oauth_token_requests_total still 2 after the reload');
    is(prom_val('sf_oauth_replays_total{credential="crm"}'), 3,
       'prometheus: sf_oauth_replays_total still 3 after the reload');

    no_secret_in(scrape()->{content}, 'after a revoke and a reload');
}

# -- the rules' own checks --------------------------------------------------

{
    my $out = `promtool check rules $RULES 2>&1`;
    is($? >> 8, 0, 'promtool check rules prometheus/sf_oauth.rules.yml')
        or diag($out);
    like($out, qr/SUCCESS: 4 rules found/, '4 rules');

    $out = `cd $SfTest::ROOT/prometheus && promtool test rules sf_oauth.rules.test.yml 2>&1`;
    is($? >> 8, 0, 'promtool test rules: each rule fires when it should, '
                   . 'and only then') or diag($out);
}

# docs/operations.md shows each rule's PromQL as the file has it
{
    my $norm = sub { my $e = shift; $e =~ s/\s+/ /g; $e =~ s/^ | $//g; $e };

    open my $fh, '<', $RULES or die "$RULES: $!";
    my $rules = do { local $/; <$fh> };
    close $fh;
    open $fh, '<', "$SfTest::ROOT/docs/operations.md"
        or die "docs/operations.md: $!";
    my $readme = do { local $/; <$fh> };
    close $fh;

    my %file = map { $_->[0] => $norm->($_->[1]) }
               map { [ /- alert: (\w+)\n\s+expr: \|\n((?:\s{10}.*\n)+)/ ] }
               $rules =~ /(- alert: \w+\n\s+expr: \|\n(?:\s{10}.*\n)+)/g;
    my %doc = map { $_->[0] => $norm->($_->[1]) }
              map { [ /^# (\w+)[^\n]*\n(.*)$/s ] }
              $readme =~ /```promql\n(# SfOAuth.*?)```/sg;

    is(scalar(keys %file), 4, 'the rules file has 4 alerts');
    is_deeply(\%doc, \%file,
              'docs/operations.md shows each alert\'s PromQL as in the '
              . 'rules file');
}

# -- prometheus stops -------------------------------------------------------

{
    kill 'TERM', $prom_pid;
    my $gone = 0;
    for (1 .. 200) {
        if (waitpid($prom_pid, WNOHANG) == $prom_pid) {
            $gone = 1;
            last;
        }
        sleep 0.1;
    }
    ok($gone, 'prometheus stopped on TERM');
    unless ($gone) {
        kill 'KILL', $prom_pid;
        waitpid($prom_pid, 0);
    }
    undef $prom_pid;
}

$t->finish;

done_testing;
