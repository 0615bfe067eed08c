#!/usr/bin/perl

# Refresh-token rotation: a refresh_token in the token response replaces
# the one in use, in the zone, and survives a reload.  sf_oauth_info shows
# it by fingerprint only.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use Digest::SHA qw(sha256_hex);
use Test::More;

my $t = SfTest->new;
$t->start_mock;
$t->mode('rotation');
$t->simple_conf;
$t->start;

sub info {
    my $r = $t->get('/sf_oauth_info');
    is($r->{status}, 200, 'sf_oauth_info: 200') or diag($r->{content});
    return $r->{json}{credentials}[0];
}

sub fp { substr(sha256_hex($_[0]), 0, 8) }

my $info = info();
is($info->{state}, 'empty', 'before any request: empty');
is($info->{refresh_token_fp}, fp($SfTest::REFRESH_TOKEN),
   'before any request: the configured refresh token');
ok(!$info->{refresh_token_rotated}, 'before any request: not rotated');

my $r = $t->get('/services/data/v59.0/');
is($r->{status}, 200, 'rotation: 200');

my $stats = $t->mock('stats');
my $new = $stats->{issued_refresh_tokens}[-1];
isnt($new, $SfTest::REFRESH_TOKEN, 'the mock rotated the refresh token');
is_deeply($stats->{valid_refresh_tokens}, [$new],
          'the configured refresh token is now dead at Salesforce');

$info = info();
is($info->{state}, 'valid', 'after the refresh: valid');
ok($info->{refresh_token_rotated}, 'after the refresh: rotated');
is($info->{refresh_token_fp}, fp($new), 'the zone holds the new refresh token');
is($info->{token_fp}, fp($stats->{issued_access_tokens}[-1]),
   'token_fp is the fingerprint of the access token');
is($info->{instance_url}, $t->mock_url, 'instance_url');
is($info->{token_requests}, 1, 'token_requests');

like($t->error_log,
     qr/new access token fp:[0-9a-f]{8} for "[^"]+", refresh token rotated/,
     'the rotation is logged');

$t->reload;
$info = info();
ok($info->{refresh_token_rotated}, 'after reload: still rotated');
is($info->{refresh_token_fp}, fp($new),
   'after reload: the new refresh token is kept');
is($t->get('/services/data/')->{headers}{'x-sf-oauth-status'}, 'HIT',
   'after reload: HIT');

# the status output holds no secret
my $raw = $t->get('/sf_oauth_info')->{content};
for my $secret ($SfTest::CLIENT_SECRET, $SfTest::REFRESH_TOKEN, $new,
                @{ $stats->{issued_access_tokens} })
{
    unlike($raw, qr/\Q$secret\E/, 'no secret in sf_oauth_info');
}

$t->finish;

done_testing;
