#!/usr/bin/perl

# More shutdown cases around worker_shutdown_timeout:
#   a) HTTP/2 streams waiting for the token are closed at
#      worker_shutdown_timeout, and the token that comes later touches
#      nothing of theirs;
#   b) three reloads in a row during a hung token request: every old
#      worker exits at the credential's timeout, no alert;
#   c) SIGTERM (fast shutdown) during a token request: the worker exits at
#      once, the request abandoned.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use IO::Socket::INET;
use Test::More;
use Time::HiRes qw(sleep time);

my $S = SfTest::time_scale();
my $t = SfTest->new;
$t->start_mock;

my $h2port = SfTest::free_port();

sub conf {
    my (%opt) = @_;
    $t->simple_conf(%opt, http_extra => <<"EOF");
    server {
        listen 127.0.0.1:$h2port http2;
        location /services/ {
            sf_oauth crm;
            proxy_pass http://127.0.0.1:%%MOCK%%;
        }
    }
EOF
    $t->edit_conf(sub { s/^events/worker_shutdown_timeout 1s;\n\nevents/m });
}

sub refreshing {
    return $t->wait_info(undef, sub { $_[0]{refreshing} }, 10);
}

# -- a) HTTP/2 waiters ------------------------------------------------------

$t->mode('rotation');
conf(timeout => '5s');
$t->start;
is($t->get('/services/data/warm')->{status}, 200, 'warm');
$t->mock('delay', 'seconds=3');
$t->mock('revoke');

my @curls;
for my $i (1 .. 4) {
    my $pid = open(my $fh, '-|', 'curl', '-s', '-o', '/dev/null', '-w',
                   '%{http_code} %{time_total}', '--http2-prior-knowledge',
                   "http://127.0.0.1:$h2port/services/data/h2-$i") or die;
    push @curls, [$pid, $fh];
}
ok(refreshing(), 'a refresh runs, h2 streams wait');
sleep 0.3;
my @old = $t->worker_pids;
my $mark = $t->log_mark;
my $start = time;
kill 'HUP', $t->{nginx_pid};
my @res = map { my $fh = $_->[1]; my $o = join '', <$fh>; close $fh; $o } @curls;
diag('h2 clients: ' . join ', ', @res);
ok(!grep({ /^(\d+) ([\d.]+)/ && $2 > 2.5 } @res),
   'every h2 client ended by about worker_shutdown_timeout');
sleep 0.1 while grep({ kill 0, $_ } @old) && time - $start < 20 * $S;
ok(!grep({ kill 0, $_ } @old),
   sprintf('the old workers exit (%.1f s)', time - $start));
my $log = $t->error_log_since($mark);
unlike($log, qr/\[(alert|crit|emerg)\]|exited on signal/, 'h2: no alert, no crash')
    or diag($log);
$t->mock('delay', 'seconds=0');
is($t->get('/services/data/after-h2')->{status}, 200, 'the new workers answer');
$t->stop;

# -- b) three reloads during a hung token request ----------------------------

$t->mock('reset');
$t->mode('hang');
conf(timeout => '3s');
truncate $t->dir . '/error.log', 0;
$t->start;

my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $t->port)
    or die;
print $s "GET /services/data/leave HTTP/1.1\r\nHost: localhost\r\n\r\n";
my $owner = refreshing()->{lease_pid};
ok($owner, "a refresh hangs in worker $owner");
close $s;

my %gen;
$start = time;
for my $k (1 .. 3) {
    $gen{$_} = 1 for $t->worker_pids;
    kill 'HUP', $t->{nginx_pid};
    sleep 0.5;
}
$gen{$_} = 1 for $t->worker_pids;
my %now = map { $_ => 1 } $t->worker_pids;
my @gone = ((grep { !$now{$_} } keys %gen), $owner);
sleep 0.1 while grep({ kill 0, $_ } @gone) && time - $start < 20 * $S;
ok(!grep({ kill 0, $_ } @gone),
   sprintf('every old worker of 3 reloads exits (%.1f s)', time - $start));
ok(time - $start < 6 * $S, 'within the 3 s timeout and a little');
diag(join "\n", grep { /sf_oauth|signal 17|exited/ } split /\n/, $t->error_log);
unlike($t->error_log, qr/\[(alert|crit|emerg)\]|exited on signal/,
       'reloads: no alert, no crash');
$t->mode('normal');
ok(SfTest::wait_for(6, sub { $t->get('/services/data/after')->{status} == 200 }),
   'the new workers refresh');
$t->stop;

# -- c) SIGTERM during a token request ---------------------------------------

$t->mock('reset');
$t->mode('hang');
conf(timeout => '5s');
truncate $t->dir . '/error.log', 0;
$t->start;
$s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $t->port)
    or die;
print $s "GET /services/data/leave HTTP/1.1\r\nHost: localhost\r\n\r\n";
ok(refreshing(), 'a refresh hangs');
@old = $t->worker_pids;
$start = time;
kill 'TERM', $t->{nginx_pid};
use POSIX ':sys_wait_h';
sleep 0.05 while grep({ kill 0, $_ } @old) && time - $start < 10 * $S;
my $took = time - $start;
ok(!grep({ kill 0, $_ } @old), sprintf('SIGTERM: the workers exit (%.2f s)', $took));
ok($took < 1 * $S, 'at once, not at the timeout');
my $elog = $t->error_log;
like($elog, qr/token request abandoned/, 'the request is abandoned');
unlike($elog, qr/\[(alert|crit|emerg)\]|exited on signal|open socket/,
       'SIGTERM: no alert')
    or diag($elog);
close $s;
$t->{nginx_pid} = undef;

done_testing;
