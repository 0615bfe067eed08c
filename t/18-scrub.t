#!/usr/bin/perl

# What the module prints of what it does not control.  sf_oauth_info
# escapes every string it prints and is sized from them, so a zone name at
# its maximum length comes out as valid JSON.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use JSON::PP;
use Test::More;

my $t = SfTest->new;
$t->start_mock;

# -- a zone name at its maximum length in sf_oauth_info ----------------------

my $zone64 = 'z' x 60 . '_-.9';

$t->write_conf("    sf_oauth_zone zone=$zone64:1m;\n"
               . $t->credential(zone => $zone64)
               . $t->credential(name => 'c2', zone => $zone64)
               . <<'EOF');
    server {
        listen 127.0.0.1:%%PORT%%;
        location /services/ {
            sf_oauth crm;
            proxy_pass http://127.0.0.1:%%MOCK%%;
        }
        location = /sf_oauth_info {
            sf_oauth_info;
        }
    }
EOF
$t->start;

is($t->get('/services/data/')->{status}, 200, 'zone name of 64: a request works');

my $r = $t->get('/sf_oauth_info');
is($r->{status}, 200, 'zone name of 64: sf_oauth_info answers');
my $info = eval { decode_json($r->{content}) };
ok($info, 'zone name of 64: sf_oauth_info is valid JSON') or diag($r->{content});
is_deeply([map { $_->{zone} } @{ $info->{credentials} || [] }],
          [$zone64, $zone64], 'zone name of 64: named in full');

$t->stop;

# -- instance_url: a scheme, a host and a port, nothing else ------------------

# The URL that proxy_pass $sf_oauth_instance_url sends every request to:
# with a path or query it would rewrite every request, with user
# information add credentials.  A bad one fails the token request.

sub esc { my ($s) = @_; $s =~ s/([^A-Za-z0-9])/sprintf('%%%02X', ord $1)/ger }

$t->mock('reset');
truncate $t->dir . '/error.log', 0;
$t->write_conf("    sf_oauth_zone zone=sf:1m;\n"
               . ($t->credential(timeout => '5s')
                  =~ s/(timeout 5s;)/$1\n        backoff 10ms 10ms;/r)
               . <<'EOF');
    server {
        listen 127.0.0.1:%%PORT%%;
        location /services/ {
            sf_oauth crm;
            add_header X-Instance $sf_oauth_instance_url always;
            proxy_pass $sf_oauth_instance_url;
        }
        location /fixed/ {
            sf_oauth crm;
            add_header X-Instance $sf_oauth_instance_url always;
            proxy_pass http://127.0.0.1:%%MOCK%%/services/;
        }
    }
EOF
$t->start;

my $base = $t->mock_url;
my $port = $t->mock_port;
my $path = qr/it has a path, a query or a fragment/;
my $badport = qr/it has an invalid port/;
my $host = qr/its host has characters other than letters, digits, "-" and "\."/;

my @bad = (
    [ "$base/evil?x=", $path ],
    [ "$base/services/", $path ],
    [ "$base?x=1", $path ],
    [ "$base#top", $path ],
    [ "$base//", $path ],
    [ "$base/.", $path ],
    [ "http://u:p\@127.0.0.1:$port", qr/it has user information/ ],
    [ "http://u\@127.0.0.1:$port", qr/it has user information/ ],
    [ "http://127.0.0.1:0", $badport ],
    [ "http://127.0.0.1:65536", $badport ],
    [ "http://127.0.0.1:", $badport ],
    [ "http://127.0.0.1:80x", $badport ],
    [ "http://127.0.0.1:123456", $badport ],
    [ "http://exa_mple.com", $host ],
    [ "http://unix:sock", $host ],
    [ "https://UNIX:a.b", $host ],
    [ "http://unix:443", $host ],
    [ "http://127.0.0.1%2f.example.com", $host ],
    [ "http://[::1", qr/it has an invalid IPv6 address/ ],
    [ "http://[]:$port", qr/it has an invalid IPv6 address/ ],
    [ "http:///services", qr/it has no host/ ],
    [ "ftp://127.0.0.1", qr/it is not an http or https URL/ ],
);

my $n = 0;

for my $case (@bad) {
    my ($url, $why) = @$case;

    $t->mock('instance_url', 'url=' . esc($url));
    select(undef, undef, undef, 0.05);          # the 10 ms backoff

    $r = $t->get('/services/data/v59.0/');
    $n++;
    is($r->{status}, 502, "instance_url $url: 502");
    like(ref $r->{json} eq "HASH" ? $r->{json}{error_description} // "" : "",
         qr/the token response has no usable "instance_url": $why/,
         "instance_url $url: says why") or diag($r->{content});
    ok(!defined $r->{headers}{'x-instance'}, "instance_url $url: not exposed");
}

my $stats = $t->mock('stats');
is($stats->{token_requests}, $n, 'one token request per bad instance_url');
is($stats->{token_ok}, $n, 'each of them answered with a token');
is($stats->{api_requests} + $stats->{not_found}, 0,
   'none of those tokens was used');

like($t->error_log,
     qr/\[error\].*credential "crm": the token response has no usable "instance_url": it has user information/,
     'the error log says why');
unlike($t->error_log, qr/u:p\@|evil/, 'the error log does not echo the URL');

# good ones: a trailing "/" is stripped, IPv6 and a port are fine
my @good = (
    [ "$base/", $base, '/services/' ],
    [ "HTTP://127.0.0.1:$port", "HTTP://127.0.0.1:$port", '/services/' ],
    [ "http://[::1]:$port", "http://[::1]:$port", '/fixed/' ],
    [ 'https://na1.my.salesforce.com', 'https://na1.my.salesforce.com',
      '/fixed/' ],
    [ $base, $base, '/services/' ],
);

# the last bad one's 10 ms backoff is over before the first good one
select(undef, undef, undef, 0.05);

for my $case (@good) {
    my ($url, $want, $loc) = @$case;

    $t->mock('revoke');
    $t->mock('instance_url', 'url=' . esc($url));
    $t->get("/fixed/data/v59.0/");              # the 401, then a new token

    $r = $t->get("${loc}data/v59.0/");
    is($r->{status}, 200, "instance_url $url: 200") or diag($r->{content});
    is($r->{headers}{'x-instance'}, $want, "instance_url $url: $want");
    is($r->{json}{path}, '/services/data/v59.0/',
       "instance_url $url: the request URI unchanged");
}

$t->stop;

$t->finish;

# -- error texts of the endpoint: echoed only in a known-safe form ------------

# A hostile or broken endpoint echoes secrets in its error texts, whole or
# cut anywhere; redaction only knows whole secrets, and only those this
# worker has seen.  So nothing of an endpoint's text is echoed beyond
# Salesforce's own codes and descriptions: no prefix of any secret may
# reach a response, the debug log or the access log.

my $s = SfTest->new(log_level => 'debug');
$s->start_mock;
my $sdir = $s->dir;

open my $kf, '>', "$sdir/key" or die;
print $kf 'c3' x 32, "\n";
close $kf;
chmod 0600, "$sdir/key";

$s->simple_conf;
my $conf = $s->slurp('nginx.conf');
$conf =~ s{sf_oauth_zone zone=sf:1m;}
          {sf_oauth_zone zone=sf:1m state=$sdir/state/sf.state key=$sdir/key;};
$conf =~ s{(client_id [^;]+;)}
          {$1\n        introspect on;\n        refresh_ahead 1s;\n        backoff 10ms 10ms;\n        hold 10ms;};
open my $cf, '>', "$sdir/nginx.conf" or die;
print $cf $conf;
close $cf;

$s->mode('rotation');
$s->start;

my @bodies;

$r = $s->get('/services/data/');
is($r->{status}, 200, 'scrub: a token, with a rotated refresh token');
$r = $s->get('/services/data/');
is($r->{headers}{'x-sf-oauth-status'}, 'HIT', 'scrub: then hits');

# each hostile answer fails the refresh after a 401
$s->mock('revoke');

my @leaky = (
    [ 'leaky_cut_refresh',
      qr/^Salesforce answered HTTP 400: invalid_grant: \(description withheld: \d+ bytes\)$/ ],
    [ 'leaky_cut_secret',
      qr/^Salesforce answered HTTP 400: \(error code withheld: 73 bytes\): \(description withheld: 265 bytes\)$/ ],
    [ 'leaky_prefix',
      qr/^Salesforce answered HTTP 400: invalid_grant: \(description withheld: \d+ bytes\)$/ ],
    [ 'leaky_code',
      qr/^Salesforce answered HTTP 400: \(error code withheld: 37 bytes\): \(description withheld: 27 bytes\)$/ ],
    [ 'redirect_leaky',
      qr/^the token endpoint redirects \(HTTP 302\) to "https:\/\/login\.example\.com" and a path or query of \d+ bytes \(withheld\)$/ ],
    [ 'leaky',
      qr/^Salesforce answered HTTP 400: invalid_request: \(description withheld: \d+ bytes\)$/ ],
    [ 'invalid_client',
      qr/^Salesforce answered HTTP 400: invalid_client: invalid client credentials$/ ],
);

for my $case (@leaky) {
    my ($mode, $want) = @$case;

    $s->mode($mode);
    select(undef, undef, undef, 0.05);          # the 10 ms backoff

    $r = $s->get('/services/data/');
    is($r->{status}, 502, "$mode: 502");
    like(ref $r->{json} eq 'HASH' ? $r->{json}{error_description} // '' : '',
         $want, "$mode: the endpoint's text is withheld, its size said")
        or diag($r->{content});
    push @bodies, $r->{content}, $s->get('/sf_oauth_info')->{content};
}

# a new token, saved in the state file
$s->mode('normal');
select(undef, undef, undef, 0.05);
$r = $s->get('/services/data/');
is($r->{status}, 200, 'scrub: a new token');
$s->stop;

# a full restart: the token is restored from the state file and
# introspected before any request uses it; the answer echoes it
$s->mode('leaky_introspect');
$s->start;

my $warned;
for (1 .. 100) {
    last if ($warned) = $s->error_log =~ /(token introspection failed: .*)/;
    select(undef, undef, undef, 0.1);
}

like($warned // '',
     qr/token introspection failed: Salesforce answered HTTP 400: invalid_request: \(description withheld: \d+ bytes\); asking again in 30 s/,
     'introspection error: the echoed token is withheld');
like($s->error_log, qr/restored 1 credentials from the state file/,
     'introspection error: the token came from the state file');

$s->mode('normal');
push @bodies, $s->get('/sf_oauth_info')->{content};
$s->stop;

$stats = $s->mock('stats');
my @secrets = ($SfTest::CLIENT_SECRET, $SfTest::REFRESH_TOKEN,
               @{ $stats->{issued_access_tokens} },
               @{ $stats->{issued_refresh_tokens} });
ok(@{ $stats->{issued_access_tokens} } >= 2, 'scrub: access tokens issued');
ok(@{ $stats->{issued_refresh_tokens} } >= 2, 'scrub: a refresh token rotated');
ok($stats->{introspections} >= 1, 'scrub: the restored token was introspected');

my %texts = (
    'error.log' => $s->error_log,
    'access.log' => $s->slurp('access.log'),
    'response bodies' => join("\n", @bodies),
);

ok(length $texts{'error.log'} > 10000, 'scrub: the debug log was written');

for my $name (sort keys %texts) {
    my @found = grep { index($texts{$name}, substr($_, 0, 12)) >= 0 } @secrets;
    is(scalar @found, 0, "$name: no 12-character prefix of any secret")
        or diag(map { substr($_, 0, 12) . "...\n" } @found);
}

$s->finish;

done_testing;
