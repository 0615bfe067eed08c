#!/usr/bin/perl

# The state file never stops nginx: a state directory whose parent is
# missing is an error line, and the zone runs without its state file.
#
# One size limit per value, inclusive, everywhere: a credential name of 64
# characters and a rotated refresh token of 2,048 bytes are accepted by the
# configuration, the token parser, the zone and the state file; one more is
# refused with a clear message.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use Test::More;

my $t = SfTest->new;
my $dir = $t->dir;
$t->start_mock;

open my $kh, '>', "$dir/key" or die;
print $kh ('c3' x 32) . "\n";
close $kh;
chmod 0600, "$dir/key";

# simple_conf with "state=" and "key=" on the zone, and extra credentials
sub conf {
    my ($state, %opt) = @_;
    my $creds = delete $opt{creds} // '';
    $t->simple_conf(%opt, http_extra => $creds)->edit_conf(sub {
        s{sf_oauth_zone zone=sf:1m;}
         {sf_oauth_zone zone=sf:1m state=$state key=$dir/key;};
    });
}

# -- a missing parent directory of state= ------------------------------------

my $state = "$dir/no-such-dir/state/sf.state";
conf($state);

my ($rc, $out) = $t->test_conf;
is($rc, 0, 'missing state directory parent: nginx -t passes') or diag($out);

ok(eval { $t->start; 1 }, 'missing state directory parent: nginx starts')
    or diag($@);

like($t->error_log,
     qr/\[error\].*sf_oauth_zone "sf": cannot create the directory "\Q$dir\E\/no-such-dir\/state" of the state file "\Q$state\E".*create it.*; the zone runs without its state file/,
     'an error line names the directory and what to do');
unlike($t->error_log, qr/\[emerg\]/, 'no emerg line');

my $r = $t->get('/services/data/');
is($r->{status}, 200, 'without its state file the zone works');
ok(!-e "$dir/no-such-dir", 'nothing is created, no state file is written');
unlike($t->error_log, qr/cannot write the state file/,
       'no attempt to write the state file');

$t->stop;

# -- a name of exactly NAME_MAX characters, end to end with a state file -----

$state = "$dir/state/sf.state";
my $long = 'n' x 64;

sub conf_named {
    my ($name) = @_;
    conf($state, name => $long);
    my $conf = $t->slurp('nginx.conf');
    $conf =~ s/sf_oauth crm;/sf_oauth $name;/;
    open my $fh, '>', "$dir/nginx.conf" or die;
    print $fh $conf;
    close $fh;
}

$t->mock('reset');
conf_named($long);
($rc, $out) = $t->test_conf;
is($rc, 0, 'a 64-character name passes nginx -t') or diag($out);

truncate "$dir/error.log", 0;
$t->start;
$r = $t->get('/services/data/');
is($r->{status}, 200, '64-character name: 200');
is($t->token_requests, 1, '64-character name: one token request');
my $token = $r->{json}{authorization};
ok(-s $state, '64-character name: the state file is written');
unlike($t->error_log, qr/cannot encode/, '64-character name: the state is encoded');

$t->restart();
like($t->error_log, qr/restored 1 credentials from the state file/,
     '64-character name: restored after a restart');
$r = $t->get('/services/data/');
is($r->{headers}{'x-sf-oauth-status'}, 'HIT', '64-character name: HIT after a restart');
is($r->{json}{authorization}, $token, '64-character name: the same token');
is($t->token_requests, 1, '64-character name: 0 token requests after a restart');
$t->stop;

# one more character: refused by nginx -t
$long = 'n' x 65;
conf_named($long);
($rc, $out) = $t->test_conf;
isnt($rc, 0, 'a 65-character name fails nginx -t');
like($out, qr/invalid sf_oauth_credential name "n{65}": it must have 1 to 64 characters/,
     'with a clear message');

# -- a rotated refresh token of exactly REFRESH_MAX bytes ---------------------

unlink $state;
$t->mock('reset');
$t->mode('rotation');
$t->mock('refresh_len', 'length=2048');
conf($state);
truncate "$dir/error.log", 0;
$t->start;

$r = $t->get('/services/data/');
is($r->{status}, 200, '2048-byte refresh token: 200');
my $rotated = $t->mock('stats')->{issued_refresh_tokens}[-1];
is(length $rotated, 2048, 'the mock rotated to a 2048-byte refresh token');
unlike($t->error_log, qr/cannot encode/, '2048-byte refresh token: the state is encoded');

$t->restart();
$r = $t->get('/services/data/');
is($r->{headers}{'x-sf-oauth-status'}, 'HIT', '2048-byte refresh token: HIT after a restart');
is($t->token_requests, 1, '2048-byte refresh token: 0 token requests after a restart');

# the refresh presents the rotated 2048-byte token, kept in the state file
$t->mock('revoke');
$r = $t->get('/services/data/after-restart');
is($r->{status}, 200, '2048-byte refresh token: the refresh after a restart works');
my $stats = $t->mock('stats');
is($stats->{token_requests}, 2, 'one more token request');
is(scalar @{ $stats->{valid_refresh_tokens} }, 1,
   'the refresh token survived: Salesforce revoked nothing');
$t->stop;

# one byte more: the parser refuses the answer and says why
unlink $state;
$t->mock('reset');
$t->mode('rotation');
$t->mock('refresh_len', 'length=2049');
truncate "$dir/error.log", 0;
$t->start;

$r = $t->get('/services/data/');
is($r->{status}, 502, '2049-byte refresh token: refused');
like($t->error_log,
     qr/\[error\].*credential "crm": the token response has an unusable "refresh_token" \(printable characters, at most 2048 bytes\)/,
     '2049-byte refresh token: a clear error line');
$t->stop;

# the configured refresh token: the same limit
for my $case ([ 2048, 0 ], [ 2049, 1 ]) {
    my ($len, $bad) = @$case;
    conf($state, refresh_token => 'r' x $len);
    ($rc, $out) = $t->test_conf;
    if ($bad) {
        isnt($rc, 0, "a configured refresh token of $len bytes fails nginx -t");
        like($out, qr/the refresh token of sf_oauth_credential "crm" is longer than 2048 bytes/,
             'with a clear message');
    } else {
        is($rc, 0, "a configured refresh token of $len bytes passes nginx -t")
            or diag($out);
    }
}

$t->finish;

done_testing;
