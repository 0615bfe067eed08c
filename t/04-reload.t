#!/usr/bin/perl

# Tokens live in the shared zone: a reload keeps them (no token request),
# and a reload that changes the credential drops its token.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use Test::More;

my $t = SfTest->new;
$t->start_mock;
$t->simple_conf;
$t->start;

my $r = $t->get('/services/data/v59.0/');
is($r->{status}, 200, 'first request: 200');
is($t->token_requests, 1, 'one token request');
my $token = $r->{json}{authorization};

my @old = $t->worker_pids;
$t->reload;
my %new = map { $_ => 1 } $t->worker_pids;
ok(!grep({ $new{$_} } @old), 'reload replaced the workers');

for (1 .. 10) {
    $r = $t->get('/services/data/v59.0/');
    last if $r->{status} != 200;
}
is($r->{status}, 200, 'after reload: 200');
is($r->{headers}{'x-sf-oauth-status'}, 'HIT', 'after reload: HIT');
is($r->{json}{authorization}, $token, 'after reload: the same token');
is($t->token_requests, 1, 'after reload: 0 new token requests');

# same credential, other unrelated settings: still kept
$t->simple_conf(timeout => '7s');
$t->reload;
$r = $t->get('/services/data/v59.0/');
is($r->{headers}{'x-sf-oauth-status'}, 'HIT', 'timeout changed: HIT');
is($t->token_requests, 1, 'timeout changed: token kept');

# a changed client_id drops the token: the mock knows only one client id,
# so the next request gets the mock's invalid_client_id error
$t->simple_conf(timeout => '7s', client_id => '3MVG9other.client');
$t->reload;
$r = $t->get('/services/data/v59.0/');
is($r->{status}, 502, 'client_id changed: the old token is not used');
is($t->token_requests, 2, 'client_id changed: a new token request');
like($t->error_log,
     qr/credential "crm" changed its token_url, client_id or refresh token: its cached token is dropped/,
     'the drop is logged');

# back to the right client id: a changed fingerprint clears the backoff too
$t->simple_conf;
$t->reload;
$r = $t->get('/services/data/v59.0/');
is($r->{status}, 200, 'client_id restored: 200');
is($r->{headers}{'x-sf-oauth-status'}, 'WAIT', 'client_id restored: refreshed');
is($t->token_requests, 3, 'client_id restored: one more token request');

# a changed refresh token drops the token too
$t->simple_conf(refresh_token => 'other-refresh-token');
$t->reload;
$r = $t->get('/services/data/v59.0/');
is($r->{status}, 502, 'refresh token changed: refreshed with the new one');
is($r->{json}{error}, 'sf_oauth_token_unavailable', 'and the mock refused it');
is($t->token_requests, 4, 'refresh token changed: one more token request');

$t->finish;

done_testing;
