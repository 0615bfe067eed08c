#!/usr/bin/perl

# The encrypted state file: a full restart needs no token request, a
# rotated refresh token survives it, and a damaged, tampered or foreign
# file is refused with an error line while nginx starts from the
# configured refresh token.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use Test::More;

my $t = SfTest->new;
my $dir = $t->dir;
$t->start_mock;

sub write_key {
    my ($name, $content) = @_;
    open my $fh, '>', "$dir/$name" or die;
    print $fh $content;
    close $fh;
    chmod 0600, "$dir/$name";
}

write_key('key', ('a1' x 32) . "\n");
write_key('other.key', ('b2' x 32) . "\n");
write_key('raw.key', 'k' x 32);

my $state = "$dir/state/sf.state";

sub conf {
    my (%opt) = @_;
    my $key = delete $opt{key} // "$dir/key";
    $t->simple_conf(%opt)->edit_conf(sub {
        s{sf_oauth_zone zone=sf:1m;}{sf_oauth_zone zone=sf:1m state=$state key=$key;};
    });
}

# -- a full restart needs no token request -------------------------------

conf();
$t->start;
like($t->error_log, qr/sf_oauth_zone "sf": no state file "\Q$state\E" yet/,
     'first start: no state file yet');

my $r = $t->get('/services/data/');
is($r->{status}, 200, 'first request: 200');
is($t->token_requests, 1, 'one token request');
my $token = $r->{json}{authorization};

ok(-f $state, 'the state file is written');
my @st = stat $state;
is($st[2] & 07777, 0600, 'the state file has mode 0600');
is(scalar getpwuid($st[4]), 'nobody', 'the state file belongs to the worker user');
my $raw = $t->slurp('state/sf.state');
like($raw, qr/^SFOAUTH1/, 'the state file has its magic');
for my $secret ($SfTest::REFRESH_TOKEN, substr($token, 7)) {
    unlike($raw, qr/\Q$secret\E/, 'no secret in clear in the state file');
}
is(scalar(() = glob("$dir/state/*.tmp.*")), 0, 'no temp file left');

$t->restart();
like($t->error_log, qr/restored 1 credentials from the state file/,
     'restart: the state is restored');
$r = $t->get('/services/data/');
is($r->{status}, 200, 'after a full restart: 200');
is($r->{headers}{'x-sf-oauth-status'}, 'HIT', 'after a full restart: HIT');
is($r->{json}{authorization}, $token, 'after a full restart: the same token');
is($t->token_requests, 1, 'after a full restart: 0 token requests');

# a raw 32-byte key works as well as a hex one
$t->stop;
unlink $state;
conf(key => "$dir/raw.key");
$t->start;
$t->get('/services/data/');
$t->restart();
is($t->get('/services/data/')->{headers}{'x-sf-oauth-status'}, 'HIT',
   'a raw 32-byte key: restored');

# -- rotation across a restart ---------------------------------------------

$t->stop;
unlink $state;
$t->mock('reset');
$t->mode('rotation');
conf();
$t->start;

is($t->get('/services/data/')->{status}, 200, 'rotation: 200');
my $rotated = $t->mock('stats')->{issued_refresh_tokens}[-1];

$t->restart();

# the cached token dies; the refresh must use the rotated refresh token,
# or the mock (like Salesforce) refuses it and revokes everything
$t->mock('revoke');
$r = $t->get('/services/data/after-restart');
is($r->{status}, 200, 'rotation across a restart: the refresh works');
is($r->{headers}{'x-sf-oauth-status'}, 'RETRY', 'rotation across a restart: replayed');
my $stats = $t->mock('stats');
is($stats->{token_requests}, 2, 'rotation across a restart: one more token request');
isnt($stats->{issued_refresh_tokens}[-1], $rotated, 'rotated once more');
is(scalar @{ $stats->{valid_refresh_tokens} }, 1,
   'Salesforce did not revoke the refresh token (no reuse of a dead one)');

# -- damaged files are refused, the configured token is used ---------------

$t->stop;
$t->mock('reset');

my %damage = (
    'tampered' => sub { my $s = shift; substr($s, 40, 1) ^= "\x01"; $s },
    'truncated' => sub { substr(shift, 0, 30) },
    'cut short' => sub { my $s = shift; substr($s, 0, length($s) - 5) },
    'not ours' => sub { 'hello world, this is not a state file at all' },
);

# a good file, to damage
conf();
unlink $state;
$t->start;
$t->get('/services/data/');
$t->stop;
my $good = $t->slurp('state/sf.state');

for my $name (sort keys %damage) {
    open my $fh, '>', $state or die;
    print $fh $damage{$name}->($good);
    close $fh;

    my $before = $t->token_requests;
    $t->restart();

    like($t->error_log,
         qr/\[error\].*sf_oauth_zone "sf": the state file "\Q$state\E" is ignored: .*; starting from the configured refresh tokens/,
         "$name: an error line");
    $r = $t->get('/services/data/');
    is($r->{status}, 200, "$name: nginx works");
    is($r->{headers}{'x-sf-oauth-status'}, 'WAIT', "$name: a new token");
    is($t->token_requests, $before + 1, "$name: from the configured refresh token");
}


# a wrong key
open my $fh, '>', $state or die;
print $fh $good;
close $fh;
$t->stop;
conf(key => "$dir/other.key");
truncate "$dir/error.log", 0;
$t->start;
like($t->error_log, qr/is ignored: it does not decrypt: a wrong key, or the file was changed/,
     'wrong key: says so');
is($t->get('/services/data/')->{headers}{'x-sf-oauth-status'}, 'WAIT',
   'wrong key: a new token');

# a changed refresh token in nginx.conf wins over the file
$t->stop;
conf();
$t->start;
$t->get('/services/data/');
$t->stop;
conf(refresh_token => 'other-refresh-token');
truncate "$dir/error.log", 0;
$t->start;
like($t->error_log, qr/credential "crm": the configuration changed since the state file was written: the configured refresh token is used/,
     'a changed configuration wins over the state file');
is($t->get('/services/data/')->{status}, 502,
   'and the (unknown) configured refresh token is used');

$t->stop;

# -- configuration errors ----------------------------------------------------

$t->simple_conf;
my $conf = $t->slurp('nginx.conf');
for my $case (
    [ "state=$state", qr/"state=" and "key=" of sf_oauth_zone go together/ ],
    [ "state=$state key=$dir/nginx.conf", qr/the key "\Q$dir\E\/nginx.conf" of sf_oauth_zone "sf" is readable by everyone/ ],
)
{
    my ($params, $expect) = @$case;
    my $c = $conf =~ s{sf_oauth_zone zone=sf:1m;}{sf_oauth_zone zone=sf:1m $params;}r;
    open my $fh, '>', "$dir/nginx.conf" or die;
    print $fh $c;
    close $fh;
    my ($rc, $out) = $t->test_conf;
    isnt($rc, 0, "bad state parameters rejected: $params");
    like($out, $expect, 'with a clear message') or diag($out);
}

# -- a key that is missing or unusable: an error, and no state file ------------

write_key('short.key', 'abc');

for my $case (
    [ 'missing', "$dir/missing.key", qr/cannot be read/ ],
    [ 'too short', "$dir/short.key", qr/must hold 32 bytes, or 64 hex digits/ ],
)
{
    my ($name, $key, $why) = @$case;

    $t->mock('reset');
    unlink $state;
    conf(key => $key);
    truncate "$dir/error.log", 0;
    $t->start;

    like($t->error_log,
         qr/\[error\].*the key "\Q$key\E" of sf_oauth_zone "sf" $why[^;]*; the state file is not used/,
         "$name key: an error line at start");
    is($t->get('/services/data/')->{status}, 200, "$name key: nginx works");
    ok(!-e $state, "$name key: no state file is written");

    $t->stop;
}

$t->finish;

done_testing;
