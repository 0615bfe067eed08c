#!/usr/bin/perl

# What a reload keeps in the zone: the records of credentials that are no
# longer configured are dropped (from the zone at once, from the state file
# at its next write), and a reload that resizes the zone carries the
# records over, so that a rotated refresh token is never lost; the outcome
# of a refresh in flight at that moment reaches the new zone (a notice).

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use Test::More;
use Time::HiRes qw(sleep);

my $t = SfTest->new;
my $dir = $t->dir;
$t->start_mock;

open my $kh, '>', "$dir/key" or die;
print $kh ('d4' x 32) . "\n";
close $kh;
chmod 0600, "$dir/key";

# the standard configuration with credential NAME in a zone of SIZE, other
# credentials with their own locations, and maybe a state file
sub conf {
    my (%opt) = @_;
    my $name = delete $opt{name} // 'crm';
    my $size = delete $opt{size} // '1m';
    my $state = delete $opt{state};
    my @others = @{ delete $opt{others} // [] };
    my $zone_name = delete $opt{zone_name} // 'sf';
    my @keep = @{ delete $opt{keep_zones} // [] };

    my $extra = join '', map { $t->credential(name => $_) } @others;
    $extra .= join '', map { "    sf_oauth_zone zone=$_:1m;\n" } @keep;
    $t->simple_conf(%opt, name => $name, zone => $zone_name,
                    http_extra => $extra);

    my $zone = "zone=$zone_name:$size"
               . ($state ? " state=$state key=$dir/key" : '');
    my $locations = join '', map { <<"EOF" } @others;
        location /$_/ {
            sf_oauth $_;
            add_header X-SF-OAuth-Status \$sf_oauth_status always;
            proxy_pass http://127.0.0.1:%%MOCK%%/services/;
        }
EOF
    $locations =~ s/%%MOCK%%/$t->mock_port/ge;

    $t->edit_conf(sub {
        s/sf_oauth_zone zone=sf:1m;/sf_oauth_zone $zone;/;
        s/sf_oauth crm;/sf_oauth $name;/;
        s/(        location = \/sf_oauth_info)/$locations$1/;
    });
}

# a reload that really replaced the workers (a failed one keeps the old)
sub reloaded {
    my @old = $t->worker_pids;
    $t->reload;
    my %now = map { $_ => 1 } $t->worker_pids;
    return !grep { $now{$_} } @old;
}

sub info_names {
    my $info = $t->get('/sf_oauth_info')->{json};
    return join ',', map { $_->{name} } @{ $info->{credentials} };
}

# -- renames on a 64k zone: the old records are freed --------------------------

conf(name => 'c0', size => '64k');
$t->start;
is($t->get('/services/data/')->{status}, 200, 'c0 on a 64k zone: 200');

my $ok = 1;
for my $i (1 .. 10) {
    conf(name => "c$i", size => '64k');
    my $reloaded = reloaded();
    my $r = $t->get('/services/data/');
    $ok &&= ok($reloaded, "rename $i: the reload succeeds");
    $ok &&= is($r->{status}, 200, "rename $i: 200");
    is(info_names(), "c$i", "rename $i: sf_oauth_info shows only c$i");
    last unless $ok;
}

unlike($t->error_log, qr/too small/, 'ten renames never fill the zone');
like($t->error_log,
     qr/sf_oauth_zone "sf": dropped the records of 1 credentials that are no longer configured/,
     'the drop is logged');

# more credentials than the zone holds: the message counts them right
my @many = map { "m$_" } 1 .. 9;
conf(name => 'c10', size => '64k', others => \@many);
my ($rc, $out) = $t->test_conf;
isnt($rc, 0, '10 credentials in a 64k zone fail nginx -t');
like($out, qr/sf_oauth_zone "sf" of 64k is too small for its 10 credentials/,
     'and the message counts the configured credentials');

$t->stop;

# -- a removed credential leaves the state file at its next write ---------------

my $state = "$dir/state/sf.state";
$t->mock('reset');
truncate "$dir/error.log", 0;
conf(state => $state, others => ['gone']);
$t->start;

is($t->get('/services/data/')->{status}, 200, 'crm: 200');
is($t->get('/gone/data/')->{status}, 200, 'gone: 200');
is($t->token_requests, 2, 'two credentials, two token requests');

# "gone" is removed; a new token of crm writes the state file
conf(state => $state);
ok(reloaded(), 'reload without "gone"');
is(info_names(), 'crm', 'sf_oauth_info shows only crm');
$t->mock('revoke');
my $r = $t->get('/services/data/');
is($r->{headers}{'x-sf-oauth-status'}, 'RETRY', 'a new token for crm');
is($t->token_requests, 3, 'one more token request');
$t->stop;

# decrypt the file where Python's cryptography package is at hand
my $names = `python3 - '$dir/key' '$state' 2>/dev/null <<'EOF'
import json, sys
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
key = bytes.fromhex(open(sys.argv[1]).read().strip())
data = open(sys.argv[2], 'rb').read()
plain = AESGCM(key).decrypt(data[8:20], data[36:] + data[20:36], data[:8])
print(','.join(c['name'] for c in json.loads(plain)['credentials']))
EOF
`;
SKIP: {
    skip 'no python3 cryptography to decrypt the state file', 1 if $?;
    chomp $names;
    is($names, 'crm', 'the state file holds crm only');
}

# what the module itself reads back: "gone", configured again, finds no
# record and needs a token request
conf(state => $state, others => ['gone']);
truncate "$dir/error.log", 0;
$t->start;
like($t->error_log, qr/restored 1 credentials from the state file/,
     'restart with "gone" again: one credential restored');
is($t->get('/services/data/')->{headers}{'x-sf-oauth-status'}, 'HIT',
   'crm: HIT from the state file');
is($t->get('/gone/data/')->{headers}{'x-sf-oauth-status'}, 'WAIT',
   'gone: nothing of it was kept, a new token');
is($t->token_requests, 4, 'one token request, for gone');
$t->stop;

# -- a reload that only resizes the zone, with rotation and no state file ------

$t->mock('reset');
$t->mode('rotation');
conf(size => '1m');
truncate "$dir/error.log", 0;
$t->start;

$r = $t->get('/services/data/');
is($r->{status}, 200, 'rotation: 200');
my $token = $r->{json}{authorization};
my $stats = $t->mock('stats');
is($stats->{token_requests}, 1, 'rotation: one token request');
isnt($stats->{valid_refresh_tokens}[0], $SfTest::REFRESH_TOKEN,
     'the configured refresh token is rotated out');

conf(size => '2m');
ok(reloaded(), 'resize 1m -> 2m: the reload succeeds');
like($t->error_log,
     qr/\[notice\].*credential "crm": its record was carried over from the old sf_oauth_zone "sf" to the new sf_oauth_zone "sf"/,
     'the carry-over is logged');

$r = $t->get('/services/data/');
is($r->{headers}{'x-sf-oauth-status'}, 'HIT', 'after the resize: HIT');
is($r->{json}{authorization}, $token, 'after the resize: the same token');
is($t->token_requests, 1, 'after the resize: no token request');

# the token dies: the refresh must present the rotated refresh token
$t->mock('revoke');
$r = $t->get('/services/data/after-resize');
is($r->{status}, 200, 'refresh after the resize: 200');
is($r->{headers}{'x-sf-oauth-status'}, 'RETRY', 'refresh after the resize: replayed');
$stats = $t->mock('stats');
is($stats->{token_requests}, 2, 'refresh after the resize: one token request');
is(scalar @{ $stats->{valid_refresh_tokens} }, 1,
   'Salesforce revoked nothing: the rotated refresh token was used');
is($t->get('/services/data/')->{status}, 200, 'and the next request: 200');

# a changed credential is not carried over
conf(size => '1m', client_id => '3MVG9other.client');
ok(reloaded(), 'resize 2m -> 1m with another client_id: the reload succeeds');
like($t->error_log, qr/credential "crm" changed its token_url, client_id or refresh token/,
     'the changed credential starts over');
is(scalar(() = $t->error_log =~ /its record was carried over/g), 1,
   'nothing carried over');
is($t->get('/services/data/')->{status}, 502,
   'the configured client_id is used (the mock knows another)');
$t->stop;

# -- a reload that renames the zone, or moves the credential to another -------

$t->mock('reset');
$t->mode('rotation');
conf(zone_name => 'a');
truncate "$dir/error.log", 0;
$t->start;

$r = $t->get('/services/data/');
is($r->{status}, 200, 'zone a: 200');
$token = $r->{json}{authorization};

# "a" becomes "b"; then crm moves to "c" while "b" stays (with "keep")
for my $step ([ 'b', 'zone renamed a -> b', [] ],
              [ 'c', 'credential moved b -> c, b kept', [ 'b' ] ])
{
    my ($zone, $what, $keep) = @$step;
    conf(zone_name => $zone, keep_zones => $keep);
    ok(reloaded(), "$what: the reload succeeds");
    like($t->error_log,
         qr/credential "crm": its record was carried over from the old sf_oauth_zone "\w" to the new sf_oauth_zone "$zone"/,
         "$what: the carry-over is logged");
    $r = $t->get('/services/data/');
    is($r->{headers}{'x-sf-oauth-status'}, 'HIT', "$what: HIT");
    is($r->{json}{authorization}, $token, "$what: the same token");

    $t->mock('revoke');
    $r = $t->get('/services/data/');
    is($r->{status}, 200, "$what: the refresh works");
    is($r->{headers}{'x-sf-oauth-status'}, 'RETRY', "$what: replayed");
    $stats = $t->mock('stats');
    is(scalar @{ $stats->{valid_refresh_tokens} }, 1,
       "$what: Salesforce revoked nothing");
    $token = $r->{json}{authorization};
}
is($t->token_requests, 3, 'three token requests in all: the first and one per revoke');
$t->stop;

# -- a resize while a refresh is in flight: a notice -----------------------------

$t->mock('reset');
$t->mode('hang');
conf(size => '1m', timeout => '2s');
truncate "$dir/error.log", 0;
$t->start;

my $pid = fork() // die;
if ($pid == 0) {
    $t->{nginx_pid} = undef;
    $t->{mock_pid} = undef;
    $t->get('/services/data/', timeout => 30);
    exit 0;
}

my $owner;
for (1 .. 100) {
    my $info = $t->get('/sf_oauth_info')->{json}{credentials}[0];
    if ($info->{refreshing} && $t->token_requests) {
        $owner = $info->{lease_pid};
        last;
    }
    sleep 0.05;
}
ok($owner, 'a worker refreshes, its request at the token endpoint');

conf(size => '2m', timeout => '2s');
ok(reloaded(), 'resize during the refresh: the reload succeeds');
like($t->error_log,
     qr/\[notice\].*credential "crm": the token request of process $owner was in flight when this reload moved its record from the old sf_oauth_zone "sf" to the new sf_oauth_zone "sf": the new worker processes wait for its outcome/,
     'a notice names the credential and the process');

# the old worker gave up at its timeout and is gone: the new ones refresh
waitpid($pid, 0);
$t->mode('normal');
$r = $t->get('/services/data/');
is($r->{status}, 200, 'after the old owner is gone: 200');
$t->stop;

$t->finish;

done_testing;
