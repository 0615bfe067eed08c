#!/usr/bin/perl

# A 401 that the module holds, under the configurations and failures that
# real proxies see: a refresh that fails while the 401 is still streaming
# (HTTP/1.1 and HTTP/2), a short send_timeout, proxy_cache, and
# proxy_intercept_errors with error_page 401.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use Test::More;
use Time::HiRes qw(sleep time);

my $t = SfTest->new;
$t->start_mock;

my $h2_port = SfTest::free_port();
my $other = SfTest::free_port();
my $crash_port = SfTest::free_port();

mkdir $t->dir . '/html';
open my $fh, '>', $t->dir . '/html/custom401.html' or die;
print $fh "custom 401 page\n";
close $fh;

# one credential for each case of a refresh that fails during a 401: a
# failed refresh holds its credential
my @crash = qw(h1slow h1big h2slow h2big);
my $creds = join '', map { $t->credential(name => $_) } @crash;
my $locs = join '', map { <<"EOF" } @crash;
        location /$_/ {
            sf_oauth $_;
            proxy_pass http://127.0.0.1:%%MOCK%%/services/;
        }
EOF

$t->simple_conf(
    http_extra => $creds . <<'EOF' . $locs . <<'EOF2' . $locs . <<'EOF3',
    proxy_cache_path %%DIR%%/cache keys_zone=sfc:1m;

    server {
        listen 127.0.0.1:H2PORT http2;
EOF
    }

    server {
        listen 127.0.0.1:CRASHPORT;
EOF2
    }

    server {
        listen 127.0.0.1:OTHERPORT;

        location /services/short/ {
            sf_oauth crm;
            send_timeout 1s;
            proxy_pass http://127.0.0.1:%%MOCK%%/services/;
        }

        location /services/cached/ {
            sf_oauth crm;
            proxy_cache sfc;
            proxy_cache_valid any 5m;
            add_header X-Cache $upstream_cache_status always;
            proxy_pass http://127.0.0.1:%%MOCK%%/services/;
        }

        location /services/intercept/ {
            sf_oauth crm;
            proxy_intercept_errors on;
            error_page 401 /custom401.html;
            proxy_pass http://127.0.0.1:%%MOCK%%/services/;
        }

        location /services/named/ {
            sf_oauth crm;
            proxy_intercept_errors on;
            error_page 401 = @denied;
            proxy_pass http://127.0.0.1:%%MOCK%%/services/;
        }

        location @denied {
            return 403 "denied\n";
        }

        location = /custom401.html {
            root %%DIR%%/html;
        }
    }
EOF3
);

my $conf = $t->slurp('nginx.conf');
$conf =~ s/H2PORT/$h2_port/;
$conf =~ s/OTHERPORT/$other/;
$conf =~ s/CRASHPORT/$crash_port/;
open $fh, '>', $t->dir . '/nginx.conf' or die;
print $fh $conf;
close $fh;

$t->start;

is($t->get('/services/data/')->{status}, 200, 'warm-up: 200');
my @workers = sort $t->worker_pids;

# -- send_timeout does not end a held request ----------------------------

is($t->http('GET', '/services/short/data/', port => $other)->{status}, 200,
   'send_timeout 1s: a token');
$t->mock('delay', 'seconds=2.5');
$t->mock('revoke');
{
    # a POST: a client does not silently send it again on a new connection
    my $start = time;
    my $r = $t->http('POST', '/services/short/data/held', port => $other,
                     body => '{"a":1}');
    is($r->{status}, 200,
       'a held 401 outlives send_timeout 1s: replayed after a 2.5 s refresh');
    cmp_ok(time - $start, '>=', 2, 'it waited for the refresh');
    unlike($t->slurp('access.log'), qr{"POST /services/short/data/held[^"]*" 408 },
           'no 408 in the access log');
}
$t->mock('delay', 'seconds=0.05');

# -- error_page 401 with proxy_intercept_errors --------------------------

$t->mock('revoke');
my $before = $t->token_requests;
my @status;
for my $i (1 .. 21) {
    my $r = $t->http('GET', "/services/intercept/data/i$i", port => $other);
    push @status, $r->{status};
}
is($status[0], 401, 'intercept: the first answer is the custom 401 page');
is(scalar(grep { $_ == 200 } @status), 20,
   'intercept: the other 20 are 200: the dead token was dropped')
    or diag("@status");
is($t->token_requests, $before + 1, 'intercept: one refresh');

$t->mock('revoke');
$before = $t->token_requests;
my $r = $t->http('GET', '/services/named/data/n1', port => $other);
is($r->{status}, 403, 'error_page 401 = @named: the named location answers');
is($t->http('GET', '/services/named/data/n2', port => $other)->{status}, 200,
   'error_page 401 = @named: the next request has a new token');
is($t->token_requests, $before + 1, 'error_page 401 = @named: one refresh');

# -- proxy_cache never keeps a 401 ---------------------------------------

$t->mock('api_mode', 'mode=reject');
{
    my $r = $t->http('GET', '/services/cached/data/c?cache401=1',
                     port => $other);
    is($r->{status}, 401, 'proxy_cache: an uncured 401 passes through');
}
$t->mock('api_mode', 'mode=normal');
{
    my $r = $t->http('GET', '/services/cached/data/c?cache401=1',
                     port => $other);
    is($r->{status}, 200, 'proxy_cache: the 401 was not cached');
    isnt($r->{headers}{'x-cache'} // '', 'HIT', 'proxy_cache: no HIT');
    my @keys = `grep -rl 'cache401' ${\ $t->dir}/cache 2>/dev/null`;
    my $k401 = grep { `head -c 4096 $_` =~ /\b401\b/ } @keys;
    is($k401, 0, 'no cache file holds the 401');
}

is(join(' ', sort $t->worker_pids), join(' ', @workers), 'no worker died');

# -- the refresh fails while the 401 still streams -----------------------

for my $c (@crash) {
    my $r = $c =~ /^h1/
        ? $t->http('GET', "/$c/data/", port => $crash_port)
        : { status => `curl -s -o /dev/null -w '%{http_code}' --http2-prior-knowledge http://127.0.0.1:$h2_port/$c/data/` };
    is($r->{status}, 200, "$c: a token");
}

$t->mode('invalid_grant');
$t->mock('revoke');

for my $case (['h1slow', 'slow401=1'], ['h1big', 'big401=4000000']) {
    my ($c, $q) = @$case;
    my $r = $t->http('GET', "/$c/data/v59.0/x?$q", port => $crash_port);
    is($r->{status}, 502, "$q, refresh fails: 502");
    is($r->{json}{error}, 'sf_oauth_token_unavailable',
       "$q: the module's JSON error");
    unlike($r->{content}, qr/INVALID_SESSION_ID|xxxxxxxx/,
           "$q: nothing of the 401 leaked");
}

# the same over HTTP/2, several streams on one connection
for my $case (['h2slow', 'slow401=1'], ['h2big', 'big401=4000000']) {
    my ($c, $q) = @$case;
    my $out = `h2load -n 3 -c 1 -m 3 'http://127.0.0.1:$h2_port/$c/data/h2?$q' 2>&1`;
    like($out, qr/status codes: 0 2xx, 0 3xx, 0 4xx, 3 5xx/,
         "HTTP/2 $q: 3 streams, the refresh fails: 3 x 502")
        or diag($out);
}

# on purpose: a worker that crashed on a stream has time to be replaced
sleep 0.5;
is(join(' ', sort $t->worker_pids), join(' ', @workers),
   'no worker died');
unlike($t->error_log, qr/exited on signal|request count is zero/,
       'no crash, no "request count is zero"');
is($t->get('/sf_oauth_info')->{status}, 200, 'the workers serve on');

$t->finish;

done_testing;
