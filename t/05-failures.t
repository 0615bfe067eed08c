#!/usr/bin/perl

# Every way the token endpoint can fail gives the waiting request a 502
# JSON error that says why, one error-level log line naming the credential
# and the cause, and a backoff: a burst of requests during it makes no
# new token request.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use Test::More;

my $t = SfTest->new;
$t->start_mock;

my $dead_port = SfTest::free_port();

my @cases = (
    [ 'invalid_grant', 'invalid_grant', {},
      qr/Salesforce answered HTTP 400: invalid_grant: expired access\/refresh token/,
      qr/refresh token was revoked or has expired/ ],
    [ 'invalid_client', 'invalid_client', {},
      qr/Salesforce answered HTTP 400: invalid_client: invalid client credentials/,
      qr/check client_id and client_secret/ ],
    [ 'down', 'down', {},
      qr/HTTP 503 from the token endpoint, non-JSON body of \d+ bytes/,
      qr/Salesforce may be down or in maintenance/ ],
    [ 'hang', 'hang', { timeout => '1s' },
      qr/token request failed: Operation timed out after \d+ milliseconds/,
      qr/slow or unreachable/ ],
    [ 'garbage', 'garbage', {},
      qr/HTTP 200 from the token endpoint with a non-JSON body of 18 bytes, expected a JSON object/,
      qr/check that token_url/ ],
    [ 'empty', 'empty', {},
      qr/HTTP 200 from the token endpoint with an empty body/,
      qr/check that token_url/ ],
    [ 'huge', 'huge', {},
      qr/the token response body is larger than 65536 bytes/,
      qr/does not answer like Salesforce/ ],
    [ 'crlf', 'crlf', {},
      qr/the token response has no usable "access_token"/,
      qr/does not answer like Salesforce/ ],
    [ 'no_instance', 'no_instance', {},
      qr/the token response has no usable "instance_url"/,
      qr/does not answer like Salesforce/ ],
    [ 'deep_json', 'deep_json', {},
      qr/HTTP 200 from the token endpoint with a non-JSON body/,
      qr/check that token_url/ ],
    [ 'wrong_types', 'wrong_types', {},
      qr/the token response has no usable "access_token"/,
      qr/does not answer like Salesforce/ ],
    [ 'nul', 'nul', {},
      qr/HTTP 200 from the token endpoint with a NUL character \(\\u0000\) in its JSON/,
      qr/does not answer like Salesforce/ ],
    [ 'slowloris', 'slowloris', { timeout => '2s' },
      qr/token request failed: Operation timed out after 2\d\d\d milliseconds with \d+ out of \d+ bytes received/,
      qr/slow or unreachable/ ],
    [ 'redirect', 'redirect', {},
      qr/the token endpoint redirects \(HTTP 302\) to "https:\/\/login\.example\.com\/services\/oauth2\/token"/,
      qr/redirects are not followed/ ],
    [ 'refused', 'normal', { token_url => "http://127.0.0.1:$dead_port/services/oauth2/token" },
      qr/token request failed: Failed to connect to 127.0.0.1 port $dead_port/,
      qr/check that token_url is reachable/ ],
    [ 'wrong client id', 'normal', { client_id => 'wrong' },
      qr/invalid_client_id: client identifier invalid/,
      qr/check client_id against the connected app/ ],
);

for my $case (@cases) {
    my ($name, $mode, $cred, $desc, $hint) = @$case;

    $t->mock('reset');
    $t->mode($mode);

    # a backoff longer than the burst takes (under valgrind a burst of 30
    # took more than the default's first second, and made a second token
    # request); the end of a backoff is the last case's
    truncate($t->dir . '/error.log', 0);
    $t->simple_conf(backoff => '60s 120s', %$cred);
    $t->start;
    my @workers = sort $t->worker_pids;

    my $r = $t->get('/services/data/v59.0/sobjects');

    is($r->{status}, 502, "$name: 502");
    like($r->{headers}{'content-type'}, qr{^application/json}, "$name: JSON");
    is($r->{json}{error}, 'sf_oauth_token_unavailable', "$name: error code");
    is($r->{json}{credential}, 'crm', "$name: names the credential");
    like($r->{json}{error_description}, $desc, "$name: says why")
        or diag($r->{content});
    is($r->{headers}{'x-sf-oauth-status'}, 'ERROR', "$name: status ERROR");
    is($r->{headers}{'cache-control'}, 'no-store', "$name: not cached");

    # the backoff: a burst fails fast, with no new token request
    my $before = $t->token_requests;
    my @status = $t->parallel(30, '/services/data/v59.0/');
    is(scalar(grep { $_ == 502 } @status), 30, "$name: burst during backoff fails");
    is($t->token_requests, $before, "$name: burst makes no token request");

    $r = $t->get('/services/data/v59.0/');
    like($r->{headers}{'retry-after'} // '', qr/^\d+$/, "$name: Retry-After");

    is_deeply([sort $t->worker_pids], \@workers, "$name: the workers live on");
    is($t->get('/plain/data/')->{status}, 401, "$name: nginx still serves");

    my @lines = grep { /\[error\].*sf_oauth/ } split /\n/, $t->error_log;
    is(scalar @lines, 1, "$name: one error line") or diag(join "\n", @lines);
    like($lines[0] // '', qr/sf_oauth: credential "crm": .*$desc.*; .*$hint/,
         "$name: the line names the credential, the cause and what to do");

    $t->stop;
}

# the backoff ends: the next request after it tries again and succeeds
$t->mock('reset');
$t->mode('down');
$t->simple_conf;
$t->start;
is($t->get('/services/data/')->{status}, 502, 'down: 502');
$t->mode('normal');
my $r = $t->get('/services/data/');
is($r->{status}, 502, 'within the backoff: still 502');
# the backoff ends: sf_oauth_info's retry_in (ms) reaches 0
$t->wait_info(undef, sub { $_[0]{retry_in} == 0 }, 5);
$r = $t->get('/services/data/');
is($r->{status}, 200, 'after the backoff (1 s): 200');
is($t->token_requests, 2, 'two token requests in all');

$t->finish;

done_testing;
