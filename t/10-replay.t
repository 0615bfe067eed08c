#!/usr/bin/perl

# The 401 replay: when Salesforce answers 401 to a cached token, the module
# refreshes once and sends the same request again; the client sees only the
# second answer.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use Digest::SHA qw(sha256_hex);
use IO::Socket::INET;
use Test::More;
use Time::HiRes qw(sleep);

my $t = SfTest->new;
$t->start_mock;

open my $fh, '>', $t->dir . '/htpasswd' or die;
print $fh "user:{PLAIN}secret\n";
close $fh;

my $h2_port = SfTest::free_port();
my $other = SfTest::free_port();

$t->simple_conf(
    http_extra => <<'EOF',
    client_body_buffer_size 16k;
    client_max_body_size 10m;
    log_format replay '$request_method $uri $status $sf_oauth_status '
                      'up=[$upstream_status]';
    access_log %%DIR%%/replay.log replay;

    upstream mock_pool {
        server 127.0.0.1:%%MOCK%%;
        keepalive 4;
    }

    server {
        listen 127.0.0.1:H2PORT http2;

        location /services/ {
            sf_oauth crm;
            add_header X-SF-OAuth-Status $sf_oauth_status always;
            proxy_pass http://127.0.0.1:%%MOCK%%;
        }
    }

    server {
        listen 127.0.0.1:OTHERPORT;

        location /services/ka/ {
            sf_oauth crm;
            add_header X-SF-OAuth-Status $sf_oauth_status always;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://mock_pool;
        }

        location /services/stream/ {
            sf_oauth crm;
            add_header X-SF-OAuth-Status $sf_oauth_status always;
            proxy_request_buffering off;
            proxy_pass http://127.0.0.1:%%MOCK%%;
        }

        location /services/nobuf/ {
            sf_oauth crm;
            add_header X-SF-OAuth-Status $sf_oauth_status always;
            proxy_buffering off;
            gzip on;
            gzip_types application/json;
            proxy_pass http://127.0.0.1:%%MOCK%%/services/;
        }

        location /services/auth/ {
            auth_basic "sf";
            auth_basic_user_file %%DIR%%/htpasswd;
            sf_oauth crm;
            add_header X-SF-OAuth-Status "[$sf_oauth_status]" always;
            proxy_pass http://127.0.0.1:%%MOCK%%;
        }
    }
EOF
);

my $conf = $t->slurp('nginx.conf');
$conf =~ s/H2PORT/$h2_port/;
$conf =~ s/OTHERPORT/$other/;
open $fh, '>', $t->dir . '/nginx.conf' or die;
print $fh $conf;
close $fh;

$t->start;

sub last_api {
    my ($n) = @_;
    my $log = $t->mock('stats')->{api_log};
    return @$log[-$n .. -1];
}

# warm up: a token in the cache
is($t->get('/services/data/')->{status}, 200, 'warm-up: 200');

# -- every method, replayed after a revoke --------------------------------

for my $method (qw(GET POST PATCH PUT DELETE HEAD)) {
    my $body = $method =~ /^(POST|PATCH|PUT)$/
               ? '{"Name":"' . $method . '","n":' . int(rand(1e6)) . '}' : undef;

    $t->mock('revoke');
    my $before = $t->token_requests;

    my $r = $t->http($method, "/services/data/v59.0/sobjects/Account/$method",
                     body => $body,
                     headers => { 'Content-Type' => 'application/json',
                                  'X-Custom' => 'kept' });

    is($r->{status}, 200, "$method: the client sees 200");
    is($r->{headers}{'x-sf-oauth-status'}, 'RETRY', "$method: status RETRY");
    is($t->token_requests, $before + 1, "$method: one refresh");

    my ($first, $second) = last_api(2);
    is($first->{status}, 401, "$method: the first attempt got 401");
    is($second->{status}, 200, "$method: the replay got 200");
    is($second->{method}, $method, "$method: same method");
    is($second->{path}, "/services/data/v59.0/sobjects/Account/$method",
       "$method: same URI");
    is($second->{body_sha256}, $first->{body_sha256},
       "$method: same body on both attempts");
    is($second->{body_sha256}, sha256_hex($body // ''),
       "$method: the body is what the client sent");

    next if $method eq 'HEAD';
    is($r->{json}{headers}{'X-Custom'}, 'kept', "$method: same headers");
    is($r->{json}{authorization},
       'Bearer ' . $t->mock('stats')->{issued_access_tokens}[-1],
       "$method: the replay carries the new token");
}

# -- a body larger than client_body_buffer_size, from a temp file ---------

{
    my $body = join('', map { chr(32 + ($_ * 7) % 90) } 1 .. 1048576);
    $t->mock('revoke');

    my $r = $t->http('POST', '/services/data/v59.0/composite', body => $body);
    is($r->{status}, 200, '1 MiB POST: 200');
    is($r->{json}{body_length}, 1048576, '1 MiB POST: whole body replayed');

    my ($first, $second) = last_api(2);
    is($first->{status}, 401, '1 MiB POST: first attempt 401');
    is($first->{body_sha256}, sha256_hex($body), '1 MiB POST: first body intact');
    is($second->{body_sha256}, sha256_hex($body), '1 MiB POST: replayed body intact');
}

# -- response shapes after a replay ---------------------------------------

$t->mock('revoke');
my $r = $t->get('/services/data/chunked?n=50');
is($r->{status}, 200, 'chunked response after a replay: 200');
is(scalar(() = $r->{content} =~ /"chunk"/g), 50, 'chunked: all 50 chunks');
is($r->{headers}{'x-sf-oauth-status'}, 'RETRY', 'chunked: RETRY');

$t->mock('revoke');
$r = $t->get('/services/data/big?bytes=' . 20 * 1048576);
is($r->{status}, 200, '20 MiB response after a replay: 200');
is(length $r->{content}, 20 * 1048576, '20 MiB: every byte');
is(sha256_hex($r->{content}),
   sha256_hex(substr((join '', map { chr } 0 .. 255) x 256 x 320, 0, 20 * 1048576)),
   '20 MiB: the right bytes');

for my $shape ('empty401=1', 'html401=1') {
    $t->mock('revoke');
    $r = $t->get("/services/data/x?$shape");
    is($r->{status}, 200, "401 with $shape: replayed");
    is($r->{headers}{'x-sf-oauth-status'}, 'RETRY', "401 with $shape: RETRY");
}

# -- proxy_buffering off and gzip ------------------------------------------

$t->mock('revoke');
$r = $t->http('GET', '/services/nobuf/data/big?bytes=3000000',
              port => $other);
is($r->{status}, 200, 'proxy_buffering off: replayed');
is(length $r->{content}, 3000000, 'proxy_buffering off: every byte');

$t->mock('revoke');
$r = $t->http('GET', '/services/nobuf/data/chunked?n=20',
              port => $other, headers => { 'Accept-Encoding' => 'gzip' });
is($r->{status}, 200, 'gzip: replayed');
is($r->{headers}{'content-encoding'}, 'gzip', 'gzip: compressed');

# -- keepalive on both sides ----------------------------------------------

{
    $t->http('GET', '/services/ka/data/', port => $other);
    $t->mock('revoke');

    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $other) or die;
    my @status;
    for my $i (1 .. 3) {
        $t->mock('revoke') if $i > 1;
        print $s "GET /services/ka/data/v59.0/$i HTTP/1.1\r\nHost: localhost\r\n\r\n";
        my ($status, $len, $ka) = (0, 0, 1);
        while (my $line = <$s>) {
            $status = $1 if $line =~ m{^HTTP/1\.1 (\d+)};
            $len = $1 if $line =~ /^Content-Length: (\d+)/i;
            last if $line eq "\r\n";
        }
        read($s, my $buf, $len);
        push @status, $status;
    }
    is("@status", '200 200 200',
       'client keepalive: three replayed requests on one connection');

    my ($first, $second) = last_api(2);
    is($second->{peer_port}, $first->{peer_port},
       'upstream keepalive: the replay reused the pooled connection');
}

# -- HTTP/2 ---------------------------------------------------------------

$t->mock('revoke');
my $before = $t->token_requests;
my $h2 = `h2load -n 8 -c 1 -m 8 http://127.0.0.1:$h2_port/services/data/h2 2>&1`;
like($h2, qr/status codes: 8 2xx, 0 3xx, 0 4xx, 0 5xx/,
     'HTTP/2: 8 concurrent streams on one connection, all replayed to 200')
    or diag($h2);
is($t->token_requests, $before + 1, 'HTTP/2: one refresh');
like($t->slurp('replay.log'), qr{^GET /services/data/h2 200 RETRY}m,
     'HTTP/2: the streams were replayed');

# -- many at once after a revoke -------------------------------------------

$t->mock('revoke');
$before = $t->token_requests;
my @status = $t->parallel(100, '/services/data/v59.0/query');
is(scalar(grep { $_ == 200 } @status), 100, '100 concurrent 401s: all replayed to 200')
    or diag(join ' ', @status);
is($t->token_requests, $before + 1, '100 concurrent 401s: exactly 1 refresh');

# -- a 401 that nginx itself makes is not replayed ------------------------

$before = $t->token_requests;
$r = $t->http('GET', '/services/auth/data/', port => $other);
is($r->{status}, 401, 'auth_basic 401: passed to the client');
like($r->{headers}{'www-authenticate'} // '', qr/Basic/, 'auth_basic 401: nginx\'s own');
is($t->token_requests, $before, 'auth_basic 401: no refresh');

$t->mock('revoke');
$r = $t->http('GET', '/services/auth/data/',
              port => $other,
              headers => { Authorization => 'Basic dXNlcjpzZWNyZXQ=' });
is($r->{status}, 200, 'auth_basic passed, Salesforce 401: replayed');
is($r->{json}{authorization_count}, 1, 'the client\'s Basic credentials replaced');

# -- proxy_request_buffering off --------------------------------------------

$t->mock('revoke');
$r = $t->http('GET', '/services/stream/data/', port => $other);
is($r->{status}, 200, 'request buffering off, no body: replayed');

$t->mock('revoke');
$r = $t->http('POST', '/services/stream/data/', body => 'x' x 300000,
              port => $other);
is($r->{status}, 401, 'request buffering off, streamed body: 401 passed through');
is($r->{json}[0]{errorCode}, 'INVALID_SESSION_ID', 'streamed body: Salesforce\'s 401 body');
like($t->error_log, qr/upstream 401 passed through, not replayed: the request body was streamed/,
     'streamed body: the log says why');
is($t->get('/services/data/')->{status}, 200,
   'the next request gets a new token');

# -- a client that goes away during the refresh ----------------------------

$t->mode('slow');
$t->mock('revoke');
{
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $t->port) or die;
    print $s "GET /services/data/gone HTTP/1.1\r\nHost: localhost\r\n\r\n";

    # the client leaves once its request waits for the refresh
    $t->wait_info(undef, sub { $_[0]{refreshing} }, 10);
    close $s;
}

# the slow refresh (2 s) ends without its client
$t->wait_info(undef, sub { !$_[0]{refreshing} }, 10);
$t->mode('normal');
$r = $t->get('/services/data/after-gone');
is($r->{status}, 200, 'after a client left during the wait: 200');

# -- the access log -------------------------------------------------------

my $log = $t->slurp('replay.log');
like($log, qr{^GET /services/data/v59\.0/sobjects/Account/GET 200 RETRY up=\[401 : 200\]$}m,
     '$upstream_status shows both attempts');
like($log, qr{^GET /services/data/gone 499 RETRY}m,
     'the client that left: 499');

my $info = $t->get('/sf_oauth_info')->{json}{credentials}[0];
my $retries = () = $t->slurp('replay.log') =~ / RETRY /g;
is($info->{replays}, $retries, "sf_oauth_info counts the replays ($retries)");
ok($info->{rejected_tokens} >= 10,
   "sf_oauth_info counts the rejected tokens ($info->{rejected_tokens})");

# -- a refresh that fails during a replay -----------------------------------

$t->mode('invalid_grant');
$t->mock('revoke');
$r = $t->get('/services/data/refresh-fails');
is($r->{status}, 502, 'refresh fails during a replay: 502');
is($r->{json}{error}, 'sf_oauth_token_unavailable', 'the module\'s JSON error');
like($r->{json}{error_description}, qr/invalid_grant/, 'with Salesforce\'s reason');
is($r->{headers}{'x-sf-oauth-status'}, 'ERROR', 'status ERROR');
unlike($r->{content}, qr/INVALID_SESSION_ID/, 'nothing of the 401 leaked');

$t->stop;

# -- a 401 on the replay passes through, once ------------------------------

$t->mock('reset');
$t->start;
is($t->get('/services/data/')->{status}, 200, 'fresh start: 200');

$t->mock('api_mode', 'mode=reject');
$before = $t->token_requests;
my $api_before = $t->mock('stats')->{api_requests};
$r = $t->get('/services/data/rejected');
is($r->{status}, 401, '401 on the replay: passed to the client');
is($r->{json}[0]{errorCode}, 'INVALID_SESSION_ID', '401 on the replay: its body');
is($r->{headers}{'x-sf-oauth-status'}, 'RETRY', '401 on the replay: RETRY');
is($t->token_requests, $before + 1, '401 on the replay: exactly 1 refresh');
is($t->mock('stats')->{api_requests}, $api_before + 2, '401 on the replay: 2 attempts');
like($t->error_log, qr/a refresh does not cure this 401/, 'the log says a refresh does not help');

# no refresh storm: further 401s wait for a growing interval, and then
# share one refresh; their replays get 401 too and pass
@status = $t->parallel(20, '/services/data/still-rejected');
is(scalar(grep { $_ == 401 } @status), 20, 'later 401s pass through')
    or diag("@status");
is($t->token_requests, $before + 2, 'no refresh storm: one more refresh for all 20');

$t->finish;

done_testing;
