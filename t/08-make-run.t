#!/usr/bin/perl

# `make run` starts nginx with conf.example against the bundled mock, and
# a request through it reaches the mock with a token.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use HTTP::Tiny;
use JSON::PP;
use POSIX qw(:sys_wait_h setsid);
use Test::More;
use Time::HiRes qw(sleep);

my $port = SfTest::free_port();
my $mock_port = SfTest::free_port();
my $log = SfTest->new->dir . '/run.log';

# a fresh start: make run keeps its state file (conf.example's state=)
# from run to run, and a token of an earlier run's mock (another port, the
# same refresh token: token_url alone changed, so the record is kept) would
# be served from it, to a mock that is gone
unlink "$SfTest::ROOT/build/run/state/sf.state";

my $pid = fork() // die "fork: $!";

if ($pid == 0) {
    setsid();
    open STDOUT, '>', $log;
    open STDERR, '>&', \*STDOUT;
    delete @ENV{grep { /^SF_/ } keys %ENV};
    $ENV{PORT} = $port;
    $ENV{MOCK_PORT} = $mock_port;
    exec 'make', '-s', '-C', $SfTest::ROOT, 'run';
    die "exec make: $!";
}

# up to 60 s: make checks the Debian packages and the build, and run.sh
# starts the mock, before nginx listens (5 s were not enough on a busy
# machine)
eval { SfTest::wait_port($port, 'make run', 1200) };
is($@, '', 'make run listens') or diag(`cat $log`);

my $ua = HTTP::Tiny->new(timeout => 10);

# run.sh's "nginx -t" binds the port for a moment before nginx itself
# does: the port answering is not yet nginx.  sf_oauth_info costs no
# token, so the first API request below still waits for one.
my $r;
for (1 .. 200) {
    $r = $ua->get("http://127.0.0.1:$port/sf_oauth_info");
    last if $r->{status} == 200;
    sleep 0.05;
}
is($r->{status}, 200, 'make run answers HTTP');

$r = $ua->get("http://127.0.0.1:$port/services/data/v59.0/sobjects");
is($r->{status}, 200, 'a request through make run: 200') or diag($r->{content});
like((eval { decode_json($r->{content}) } // {})->{authorization} // '', qr/^Bearer 00D/,
     'it reached the mock with a token');
is($r->{headers}{'x-sf-oauth-status'}, 'WAIT', 'the first request waited');

$r = $ua->get("http://127.0.0.1:$port/sf_oauth_info");
is((eval { decode_json($r->{content}) } // {})->{credentials}[0]{state}, 'valid',
   'sf_oauth_info shows a valid token');

$r = $ua->get("http://127.0.0.1:$port/sf_oauth/");
is($r->{status}, 200, 'the console of conf.example answers');
like($r->{content}, qr{<td><b>crm</b></td><td>refresh_token</td><td>sf</td><td class="valid">valid</td>},
     'the console shows the credential valid');

# a revoke: the next request is replayed, and the access log says so
$ua->post("http://127.0.0.1:$mock_port/__mock/revoke");
$r = $ua->get("http://127.0.0.1:$port/services/data/v59.0/replayed");
is($r->{status}, 200, 'a request after a revoke: 200');
is($r->{headers}{'x-sf-oauth-status'}, 'RETRY', 'it was replayed');

my $access = '';
for (1 .. 50) {
    $access = `cat $SfTest::ROOT/build/run/access.log 2>/dev/null`;
    last if $access =~ m{/replayed};
    sleep 0.1;
}
like($access, qr{"GET /services/data/v59.0/sobjects HTTP/1.1" 200 sf_oauth=WAIT upstream=200 },
     'access log: the first request waited');
like($access, qr{"GET /services/data/v59.0/replayed HTTP/1.1" 200 sf_oauth=RETRY upstream=401 : 200 },
     'access log: the replay shows "401 : 200"');
like($access, qr{"GET /sf_oauth_info HTTP/1.1" 200 sf_oauth=- upstream=- },
     'access log: a request without sf_oauth shows "-"');
unlike($access, qr/Bearer|00D[A-Za-z0-9]{5}!/, 'access log: no token in it');

kill 'INT', -$pid;
my $gone = 0;
for (1 .. 100) {
    if (waitpid($pid, WNOHANG) == $pid) {
        $gone = 1;
        last;
    }
    sleep 0.1;
}
ok($gone, 'make run stops on Ctrl-C');
kill 'KILL', -$pid unless $gone;

sleep 0.5;
ok(!IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port"), 'nginx is gone');
ok(!IO::Socket::INET->new(PeerAddr => "127.0.0.1:$mock_port"), 'the mock is gone');

my $errors = `grep -E '\\[(alert|crit|emerg)\\]' $SfTest::ROOT/build/run/error.log`;
is($errors, '', 'make run: no alert, crit or emerg');

done_testing;
