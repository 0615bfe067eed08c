#!/usr/bin/perl

# The state file never stops nginx: a state directory whose parent is
# missing is an error line, and the zone runs without its state file.

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
    $t->simple_conf(%opt, http_extra => $creds);
    my $conf = $t->slurp('nginx.conf');
    $conf =~ s{sf_oauth_zone zone=sf:1m;}
              {sf_oauth_zone zone=sf:1m state=$state key=$dir/key;};
    open my $fh, '>', "$dir/nginx.conf" or die;
    print $fh $conf;
    close $fh;
}

sub restart {
    $t->stop;
    truncate "$dir/error.log", 0;
    $t->start;
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

$t->finish;

done_testing;
