#!/usr/bin/perl

# No access token, refresh token or client secret appears in any log at
# debug level, in an error body or in the status output.  nginx's own debug
# lines would print the token (the proxy's request header dump, script
# variables): the module redacts them to a fingerprint.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use Digest::SHA qw(sha256_hex);
use Test::More;

my $t = SfTest->new(log_level => 'debug');
$t->start_mock;

my $dir = $t->dir;
open my $fh, '>', "$dir/secret" or die;
print $fh "$SfTest::CLIENT_SECRET\n";
close $fh;
chmod 0600, "$dir/secret";

# the token also travels through a script variable, which nginx logs
$t->simple_conf(
    client_secret => undef,
    client_secret_file => "$dir/secret",
    http_extra => "    log_format full '\$sf_oauth_status \$http_authorization';\n",
    location_extra =>
        "            proxy_set_header X-Token-Copy \$sf_oauth_token;\n"
        . "            access_log %%DIR%%/full.log full;\n");
$t->mode('rotation');
$t->start;

my @bodies;

# cold start with a POST body, hot path, rotation
for my $i (1 .. 5) {
    my $r = $t->http($i % 2 ? 'POST' : 'GET', '/services/data/v59.0/',
                     body => $i % 2 ? '{"a":1}' : undef,
                     headers => { Authorization => 'Bearer client-junk' });
    is($r->{status}, 200, "request $i: 200");
    is($r->{json}{body_length}, $i % 2 ? 7 : 0, "request $i: body passed");
}
push @bodies, $t->get('/sf_oauth_info')->{content};

# a 401 replay: the dead token and the new one
$t->mock('revoke');
my $r = $t->http('POST', '/services/data/v59.0/', body => '{"b":2}');
is($r->{status}, 200, 'replayed after a revoke: 200');
is($r->{headers}{'x-sf-oauth-status'}, 'RETRY', 'replayed: RETRY');

# the token request fails with a hostile answer that echoes the secrets
$t->simple_conf(
    client_secret => undef,
    client_secret_file => "$dir/secret",
    refresh_token => 'other-refresh-token', # drops the cached token
    http_extra => "    log_format full '\$sf_oauth_status \$http_authorization';\n",
    location_extra => "            access_log %%DIR%%/full.log full;\n");
$t->reload;
$t->mode('leaky');

$r = $t->get('/services/data/v59.0/');
is($r->{status}, 502, 'hostile token endpoint: 502');
like($r->{json}{error_description},
     qr/^Salesforce answered HTTP 400: invalid_request: \(description withheld: \d+ bytes\)$/,
     'the description that echoes the secrets is withheld from the 502 body');
push @bodies, $r->{content}, $t->get('/sf_oauth_info')->{content};

$t->stop;

my $stats = $t->mock('stats');
my @secrets = ($SfTest::CLIENT_SECRET, $SfTest::REFRESH_TOKEN,
               'other-refresh-token',
               @{ $stats->{issued_access_tokens} },
               @{ $stats->{issued_refresh_tokens} });
is(scalar @{ $stats->{issued_access_tokens} }, 2, 'two access tokens issued');
ok(@{ $stats->{issued_refresh_tokens} } >= 2, 'a rotated refresh token issued');

my %logs = map {; $_ => $t->slurp($_) }
           qw(error.log access.log full.log stderr.log);

ok(length $logs{'error.log'} > 10000, 'the debug log was written');

for my $name (sort keys %logs) {
    for my $s (@secrets) {
        unlike($logs{$name}, qr/\Q$s\E/,
               "$name has no secret " . substr(sha256_hex($s), 0, 8));
    }
}

for my $body (@bodies) {
    for my $s (@secrets) {
        unlike($body, qr/\Q$s\E/, 'the response has no secret');
    }
}

# $http_authorization is what the client sent, never the token
my @full = split /\n/, $logs{'full.log'};
is(scalar @full, 7, 'seven requests in the access log');
is(scalar(grep { /^(HIT|WAIT) Bearer client-junk$/ } @full), 5,
   '$http_authorization in the access log is the client\'s own header');
like($full[5], qr/^RETRY -$/, 'replayed, no client header: $http_authorization empty');
like($full[6], qr/^ERROR -$/, 'no client header: $http_authorization empty');

# the redaction did work on nginx's own lines: they show the fingerprint
my $fp = substr(sha256_hex($stats->{issued_access_tokens}[1]), 0, 8);
like($logs{'error.log'}, qr/Authorization: Bearer \[sf_oauth:$fp\]/,
     "nginx's proxy header dump shows the fingerprint");
like($logs{'error.log'}, qr/X-Token-Copy: \[sf_oauth:$fp\]/,
     'the script variable shows the fingerprint');

$t->finish;

done_testing;
