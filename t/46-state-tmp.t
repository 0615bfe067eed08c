#!/usr/bin/perl

# The state file's temporary file (PATH.tmp.<worker pid>) is created
# exclusively and never through a link: a symbolic link placed there is not
# followed (its target stays as it was), a file already there (a 0666 one,
# another user's, a leftover of a worker that died) is removed, not reused,
# so that the state file is always a new 0600 file of the worker user; what
# cannot be removed (a directory) is a crit line and no write.  The state
# file still saves and restores across a restart.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use Test::More;
use Time::HiRes qw(sleep);

my $t = SfTest->new;
my $dir = $t->dir;
$t->start_mock;

open my $fh, '>', "$dir/key" or die;
print $fh ('d4' x 32) . "\n";
close $fh;
chmod 0600, "$dir/key";

my $state = "$dir/state/sf.state";
my (undef, undef, $nobody_uid, $nobody_gid) = getpwnam('nobody');

$t->simple_conf(zone_params => "zone=sf:1m state=$state key=$dir/key");
$t->start;

ok(-d "$dir/state", 'the state directory is there');

my @workers = $t->worker_pids;
is(scalar @workers, 2, 'two workers');

sub tmp_paths { map { "$state.tmp.$_" } @workers }

sub clear_tmp {
    for my $p (glob("$state.tmp.*")) {
        if (-d $p && !-l $p) { rmdir $p } else { unlink $p }
    }
}

# the state file's inode and mtime, to see a new write
sub stamp {
    my @st = lstat $state;
    return @st ? "$st[1]:$st[9]:$st[7]" : '';
}

# a new token (a revoke, then a request replayed with a new token) and the
# state file written again; returns the answer
sub new_token {
    my ($name, $first) = @_;

    my $before = stamp();
    $t->mock('revoke') unless $first;
    my $r = $t->get('/services/data/v59.0/' . $name =~ s/\W+/-/gr);
    is($r->{status}, 200, "$name: 200") or diag($r->{content});

    for (1 .. 100) {
        last if stamp() ne $before;
        sleep 0.05;
    }
    isnt(stamp(), $before, "$name: the state file was written");
    return $r;
}

sub state_ok {
    my ($name) = @_;

    ok(!-l $state, "$name: the state file is not a link");
    ok(-f $state, "$name: the state file is a regular file");
    my @st = lstat $state;
    is(sprintf('%o', $st[2] & 07777), '600', "$name: the state file is 0600");
    is($st[4], $nobody_uid, "$name: the state file is the worker user's");
}

# -- a symbolic link at the temporary path ----------------------------------------

open $fh, '>', "$dir/target" or die;
print $fh "untouched\n";
close $fh;
chown $nobody_uid, $nobody_gid, "$dir/target";
chmod 0600, "$dir/target";

symlink("$dir/target", $_) or die "symlink $_: $!" for tmp_paths();

my $mark = $t->log_mark;
new_token('a symbolic link at the temporary path', 1);
is($t->slurp('target'), "untouched\n", 'the link is not followed: its target is untouched');
state_ok('a symbolic link at the temporary path');
ok(scalar($t->log_lines(qr/\[warn\].*sf_oauth_zone "sf".*\Q$state\E\.tmp\.\d+.*symbolic link/,
                        $mark)),
   'a symbolic link at the temporary path: a warn line names it');

# -- a 0666 file at the temporary path -----------------------------------------------

clear_tmp();
for my $p (tmp_paths()) {
    open my $f, '>', $p or die "$p: $!";
    print $f "planted\n";
    close $f;
    chmod 0666, $p;
}

new_token('a 0666 file at the temporary path');
state_ok('a 0666 file at the temporary path');

# -- a leftover of a worker that died while writing ----------------------------------

clear_tmp();
for my $p (tmp_paths()) {
    open my $f, '>', $p or die "$p: $!";
    print $f "half a state file";
    close $f;
    chown $nobody_uid, $nobody_gid, $p;
    chmod 0600, $p;
}

my $r = new_token('a leftover temporary file');
state_ok('a leftover temporary file');
my $token = $r->{json}{authorization};

# -- saved and restored across a restart ---------------------------------------------------

clear_tmp();
$t->stop;
my $n = $t->token_requests;
$mark = $t->log_mark;
$t->start;
ok(scalar($t->log_lines(qr/restored 1 credentials from the state file/, $mark)),
   'restart: the state is restored');
$r = $t->get('/services/data/v59.0/after-restart');
is($r->{status}, 200, 'restart: 200');
is($r->{headers}{'x-sf-oauth-status'}, 'HIT', 'restart: HIT');
is($r->{json}{authorization}, $token, 'restart: the token of the state file');
is($t->token_requests, $n, 'restart: no token request');

# -- what cannot be removed: no write, a crit line that says what to do ----------------

@workers = $t->worker_pids;
mkdir $_ or die "mkdir $_: $!" for tmp_paths();

my $before = stamp();
$mark = $t->log_mark;
$t->mock('revoke');
$r = $t->get('/services/data/v59.0/a-directory');
is($r->{status}, 200, 'a directory at the temporary path: the request is served');

my @crit;
for (1 .. 100) {
    @crit = $t->log_lines(qr/\[crit\].*sf_oauth_zone "sf".*state file/, $mark);
    last if @crit;
    sleep 0.05;
}
ok(@crit, 'a directory at the temporary path: a crit line') or diag($t->error_log_since($mark));
like($crit[0] // '', qr/\Q$state\E\.tmp\.\d+/, 'the crit line names the temporary path');
like($crit[0] // '', qr/remove it/, 'the crit line says what to do');
is(stamp(), $before, 'a directory at the temporary path: the state file is left as it was');
ok(-d $_, 'the directory is left alone') for tmp_paths();

$t->{allow_alerts} = qr/\[crit\].*sf_oauth_zone "sf".*\Q$state\E\.tmp\./;
clear_tmp();

$t->finish;

done_testing;
