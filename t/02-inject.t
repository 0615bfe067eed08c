#!/usr/bin/perl

# The happy path: a cold start fetches one token, every request reaches
# Salesforce with "Authorization: Bearer <token>", the client's own
# Authorization never does, and everything else passes as proxy_pass
# would pass it.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use IO::Socket::INET;
use JSON::PP;
use Test::More;

my $t = SfTest->new;
$t->start_mock;

$t->simple_conf(http_extra => <<'EOF');
    log_format sf '$request_uri $sf_oauth_status';
EOF

# the variable form of proxy_pass, and the variables in headers
my $conf = $t->slurp('nginx.conf');
$conf =~ s{(        location /plain/ \{)}{        location /services/v/ {
            sf_oauth crm;
            access_log %%DIR%%/var.log sf;
            add_header X-Instance \$sf_oauth_instance_url always;
            add_header X-Token-Len \$sf_oauth_token always;
            proxy_pass \$sf_oauth_instance_url;
        }

$1};
$conf =~ s/%%DIR%%/$t->{dir}/g;
open my $fh, '>', $t->dir . '/nginx.conf' or die;
print $fh $conf;
close $fh;

$t->start;

is($t->token_requests, 0, 'no token request before the first API request');

# cold start: the first request waits for the refresh
my $r = $t->get('/services/data/v59.0/sobjects',
                headers => { Authorization => 'Bearer client-junk',
                             'X-Custom' => 'kept' });
is($r->{status}, 200, 'cold start: 200');
is($r->{headers}{'x-sf-oauth-status'}, 'WAIT', 'cold start: status WAIT');

my $stats = $t->mock('stats');
my $token = $stats->{issued_access_tokens}[0];
is($stats->{token_requests}, 1, 'cold start: one token request');
ok($token, 'the mock issued a token');
is($r->{json}{authorization}, "Bearer $token",
   "the client's Authorization was replaced by the cached token");
is($r->{json}{authorization_count}, 1, 'exactly one Authorization header');
is($r->{json}{headers}{'X-Custom'}, 'kept', 'other headers pass through');
is($r->{json}{path}, '/services/data/v59.0/sobjects', 'the URI passes');

# the token request itself
my $form = $stats->{last_token_form};
is($form->{method}, 'POST', 'token request: POST');
is($form->{grant_type}, 'refresh_token', 'token request: refresh grant');
is($form->{client_id}, $SfTest::CLIENT_ID, 'token request: client_id');
ok($form->{has_client_secret}, 'token request: client_secret sent');
is($form->{accept}, 'application/json', 'token request: Accept JSON');
like($form->{content_type}, qr{^application/x-www-form-urlencoded},
     'token request: form-encoded');

# hot path: no more token requests, across both workers
my %status;
for (1 .. 20) {
    my $r = $t->get('/services/data/v59.0/limits');
    $status{ $r->{status} . ' ' . $r->{headers}{'x-sf-oauth-status'} }++;
    die 'token changed' if $r->{json}{authorization} ne "Bearer $token";
}
is_deeply(\%status, { '200 HIT' => 20 }, 'hot path: 20 HITs');
is($t->token_requests, 1, 'hot path: still one token request');

# a request without any Authorization gets one
$r = $t->get('/services/data/v59.0/');
is($r->{json}{authorization}, "Bearer $token",
   'a request without Authorization gets the token');

# a client cannot smuggle a second Authorization header in
{
    my $before = $t->mock('stats')->{api_requests};
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $t->port) or die;
    print $s "GET /services/data/v59.0/ HTTP/1.1\r\nHost: localhost\r\n"
             . "Authorization: Bearer one\r\nauthorization: Bearer two\r\n"
             . "Connection: close\r\n\r\n";
    my $answer = join '', <$s>;
    like($answer, qr{^HTTP/1\.1 400}, 'two Authorization headers: 400');
    is($t->mock('stats')->{api_requests}, $before,
       'two Authorization headers: nothing reaches Salesforce');
}

# header names that look like Authorization are not Authorization
{
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $t->port) or die;
    print $s "GET /services/data/v59.0/ HTTP/1.1\r\nHost: localhost\r\n"
             . "Authorization_: Bearer x\r\nX-Authorization: Bearer y\r\n"
             . "AUTHORIZATION: Bearer client\r\nConnection: close\r\n\r\n";
    my $answer = join '', <$s>;
    my ($body) = $answer =~ /\r\n\r\n(.*)$/s;
    my $json = eval { JSON::PP::decode_json($body) } || {};
    is($json->{authorization}, "Bearer $token",
       'look-alike headers: the token is in the one Authorization');
    is($json->{authorization_count}, 1, 'look-alike headers: one Authorization');
    ok(!exists $json->{headers}{'Authorization_'},
       'an Authorization_ header is dropped by nginx');
}

# bodies and methods pass through
my $body = '{"Name":"Acme"}' x 100;
$r = $t->http('POST', '/services/data/v59.0/sobjects/Account',
              body => $body,
              headers => { 'Content-Type' => 'application/json' });
is($r->{status}, 200, 'POST: 200');
is($r->{json}{method}, 'POST', 'POST: method kept');
is($r->{json}{body_length}, length $body, 'POST: body passed');

$r = $t->http('PATCH', '/services/data/v59.0/sobjects/Account/001',
              body => '{"Name":"B"}');
is($r->{json}{method}, 'PATCH', 'PATCH passes');

# a location without sf_oauth is plain proxy_pass
$r = $t->get('/plain/data/v59.0/',
             headers => { Authorization => "Bearer $token" });
is($r->{status}, 200, 'plain location: the client token works');
is($r->{headers}{'x-sf-oauth-status'}, '[]',
   'plain location: $sf_oauth_status is empty');
$r = $t->get('/plain/data/v59.0/');
is($r->{status}, 401, 'plain location: no token is added');
is($r->{json}[0]{errorCode}, 'INVALID_SESSION_ID',
   'plain location: Salesforce says INVALID_SESSION_ID');

# proxy_pass $sf_oauth_instance_url
$r = $t->get('/services/v/data/v59.0/sobjects');
is($r->{status}, 200, 'proxy_pass $sf_oauth_instance_url: 200');
is($r->{json}{path}, '/services/v/data/v59.0/sobjects',
   'proxy_pass $sf_oauth_instance_url: URI passed as is');
is($r->{headers}{'x-instance'}, $t->mock_url,
   '$sf_oauth_instance_url is the instance_url of the token response');
is($r->{headers}{'x-token-len'}, $token, '$sf_oauth_token is the token');

$t->stop;

like($t->slurp('var.log'), qr{^/services/v/data/v59.0/sobjects HIT$}m,
     '$sf_oauth_status in the access log');

$t->finish;

done_testing;
