#!/usr/bin/perl

# A gzip-compressed SOAP envelope inflating, a slice at a time, when the
# worker is told to go: nginx -s reload and nginx -s quit mid-inflation.
# The old worker answers the envelope (here the 413 fault at the cap)
# before it exits, and exits: no "open socket left" [alert], no temp file
# left, no hang.  A posted event alone does not keep a worker that shuts
# down gracefully; only a timer does (ngx_event_no_timers_left).

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use IO::Compress::Gzip qw($GzipError);
use IO::Select;
use IO::Socket::INET;
use POSIX qw(:sys_wait_h);
use Test::More;
use Time::HiRes qw(sleep time);

my $ENV_NS = 'http://schemas.xmlsoap.org/soap/envelope/';
my $NS = 'urn:partner.soap.sforce.com';
my $U = '/services/Soap/u/59.0';

my $scale = SfTest::time_scale();

# the cap: big enough that the inflation takes a while
my $CAP = $scale > 1 ? 48 : 384;

# one worker: it is the one inflating when the signal comes
my $t = SfTest->new(workers => 1);
$t->start_mock;

$t->simple_conf(http_extra => <<"EOF", location_extra => <<"EOF2");
    client_max_body_size 0;
    client_body_buffer_size 16k;
EOF
        }

        location /big/services/ {
            sf_oauth crm;
            sf_oauth_soap_inflate_limit ${CAP}m 100000;
            proxy_pass http://127.0.0.1:%%MOCK%%/services/;
EOF2

$t->start;

# the head, then more zeros than the cap: inflated to the cap, refused
my $big;
{
    my $z = IO::Compress::Gzip->new(\$big, Minimal => 1) or die $GzipError;
    $z->print(qq{<soapenv:Envelope xmlns:soapenv="$ENV_NS"><soapenv:Body>}
              . qq{<query xmlns="$NS"><queryString>});
    $z->print("\0" x 1048576) for 1 .. $CAP + 16;
    $z->close;
}

sub send_big {
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $t->port)
        or die "connect: $!";
    print $s "POST /big$U HTTP/1.1\r\nHost: localhost\r\n"
             . "Content-Type: text/xml\r\nContent-Encoding: gzip\r\n"
             . "Content-Length: " . length($big) . "\r\n"
             . "Connection: close\r\n\r\n" . $big;
    return $s;
}

sub answer {
    my ($s, $secs) = @_;
    my $sel = IO::Select->new($s);
    return '' unless $sel->can_read($secs);
    local $/;
    return <$s> // '';
}

sub inflating_ok {
    my ($name, $mark) = @_;
    ok($t->wait_log(qr/an inflated SOAP envelope is buffered to a temporary file/,
                $mark, 10 * $scale),
       "$name: inflation began");
    unlike($t->error_log_since($mark), qr/inflates to more than/,
           "$name: and has not ended yet");
}

# the worker is up
is($t->http('POST', $U, body => '<x/>',
            headers => { 'Content-Type' => 'text/xml' })->{status},
   400, 'warm: an envelope refused, the worker is up');

my $api = $t->mock('stats')->{api_requests};

# -- nginx -s reload mid-inflation --------------------------------------------

{
    my $mark = $t->log_mark;
    my @old = $t->worker_pids;
    my $s = send_big();
    inflating_ok('reload', $mark);

    kill 'HUP', $t->{nginx_pid};

    my $answer = answer($s, 120 * $scale);
    like($answer, qr{^HTTP/1\.1 413 }, 'reload: the old worker answers 413')
        or diag(substr $answer, 0, 300);
    like($answer, qr{<faultstring>sf_oauth: the gzip-compressed envelope inflates to more than},
         'reload: the fault says why');
    close $s;

    my $end = time + 30 * $scale;
    sleep 0.05 while time < $end && grep { kill 0, $_ } @old;
    ok(!(grep { kill 0, $_ } @old), 'reload: the old worker exits');

    my $log = $t->error_log_since($mark);
    unlike($log, qr/open socket #\d+ left/, 'reload: no socket left open');
    unlike($log, qr/exited on signal/, 'reload: no worker crashed');
    my @left = $t->temp_files;
    is(scalar @left, 0, 'reload: no temp file left') or diag("@left");

    # the new worker
    for (1 .. 100) {
        last if $t->worker_pids >= 1;
        sleep 0.05;
    }
    is($t->http('POST', $U, body => '<x/>',
                headers => { 'Content-Type' => 'text/xml' })->{status},
       400, 'reload: the new worker serves');
}

# -- nginx -s quit mid-inflation ------------------------------------------------

{
    my $mark = $t->log_mark;
    my $s = send_big();
    inflating_ok('quit', $mark);

    my $master = $t->{nginx_pid};
    kill 'QUIT', $master;

    my $answer = answer($s, 120 * $scale);
    like($answer, qr{^HTTP/1\.1 413 }, 'quit: the worker answers 413 first')
        or diag(substr $answer, 0, 300);
    close $s;

    my $gone = 0;
    my $end = time + 30 * $scale;
    while (time < $end) {
        if (waitpid($master, WNOHANG) == $master) {
            $gone = 1;
            last;
        }
        sleep 0.05;
    }
    ok($gone, 'quit: nginx exits, no hang');
    delete $t->{nginx_pid} if $gone;

    my $log = $t->error_log_since($mark);
    unlike($log, qr/open socket #\d+ left/, 'quit: no socket left open');
    unlike($log, qr/exited on signal/, 'quit: no worker crashed');
    my @left = $t->temp_files;
    is(scalar @left, 0, 'quit: no temp file left') or diag("@left");
}

is($t->mock('stats')->{api_requests}, $api, 'nothing refused reached the mock');

$t->finish;

done_testing;
