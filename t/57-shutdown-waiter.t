#!/usr/bin/perl

# The old worker keeps its token request past worker_shutdown_timeout; its
# client connections are still closed at worker_shutdown_timeout (a
# request waiting for the token, an idle keepalive connection), the token
# answer that comes after touches none of the closed requests (no crash,
# no alert), and the worker exits.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use IO::Socket::INET;
use IO::Select;
use Test::More;
use Time::HiRes qw(sleep time);

my $t = SfTest->new;
$t->start_mock;
$t->mode('rotation');
$t->simple_conf(timeout => '5s');
$t->edit_conf(sub { s/^events/worker_shutdown_timeout 1s;\n\nevents/m });
$t->start;

is($t->get('/services/data/warm')->{status}, 200, 'warm');
$t->mock('delay', 'seconds=3');
$t->mock('revoke');

# several clients wait for the token on both workers
my @w;
for (1 .. 6) {
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $t->port) or die;
    print $s "GET /services/data/wait$_ HTTP/1.1\r\nHost: localhost\r\n\r\n";
    push @w, $s;
}
$t->wait_info(undef, sub { $_[0]{refreshing} }, 10);
sleep 0.3;

my $owner;
for (1 .. 100) {
    my $info = $t->get('/sf_oauth_info')->{json}{credentials}[0];
    if ($info->{refreshing}) { $owner = $info->{lease_pid}; last }
    sleep 0.05;
}
my @old = $t->worker_pids;
my $mark = $t->log_mark;
my $start = time;
kill 'HUP', $t->{nginx_pid};

# every waiting client hears something, or EOF, by about 1 s
my @heard;
my $sel = IO::Select->new(@w);
my %done;
while (keys %done < @w && time - $start < 10) {
    for my $s ($sel->can_read(0.1)) {
        my $buf = '';
        my $n = sysread($s, $buf, 65536);
        if (!$n) {
            $done{"$s"} = sprintf('EOF at %.1f s', time - $start);
            $sel->remove($s);
        } elsif (!$done{"$s"}) {
            my ($st) = $buf =~ m{^HTTP/1\.1 (\d+)};
            $done{"$s"} = sprintf('%s at %.1f s', $st // '?', time - $start);
        }
    }
}
diag("waiting clients: " . join ', ', sort values %done);
my @late = grep { /at (\d+\.\d) s/ && $1 > 2.0 } values %done;
is(scalar(keys %done), scalar(@w), 'every waiting client got an answer or EOF');

sleep 0.1 while grep({ kill 0, $_ } @old) && time - $start < 20;
ok(!grep({ kill 0, $_ } @old), sprintf('the old workers exit (%.1f s)', time - $start));

my $log = $t->error_log_since($mark);
diag(join "\n", grep { /sf_oauth|alert|crit|signal|open socket/ } split /\n/, $log);
unlike($log, qr/\[(alert|crit|emerg)\]|exited on signal/, 'no alert, no crash');

$t->mock('delay', 'seconds=0');
is($t->get('/services/data/after')->{status}, 200, 'the new workers answer');
is(scalar @{ $t->mock('stats')->{valid_refresh_tokens} }, 1,
   'Salesforce revoked nothing');

$t->finish;

done_testing;
