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

done_testing;
