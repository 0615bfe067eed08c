#!/usr/bin/perl

# The Streaming API (CometD) with a raw Bayeux client, what t/58-cometd.t
# does not show (it has the advice rewrite, 403::Unknown client, a large
# delivery in one piece and a gzip-compressed refused connect):
#
# - a large event batch, one /meta/connect answer that Salesforce sends in
#   two parts (chunked with no Content-Length, or with one), is not
#   buffered: the client has the first part while the mock still holds
#   the second (the mock's split knob, released by the test), then the
#   whole answer byte for byte.  The same gzip-compressed, chunked.  With
#   proxy_buffering off, all of the first part; with nginx's default
#   buffering, all but the last proxy buffer that nginx has not filled.
# - with proxy_buffering off, a revoked connect is rewritten all the same.
# - a gzip-compressed event batch passes byte for byte, still compressed.
# - a handshake whose token is revoked twice (t/41-revoked-twice.t's
#   scenario): a slow handshake holds the dead token (the mock's late401
#   for /cometd/), another request refreshes, Salesforce revokes again,
#   then the slow handshake's refusal comes; its replay is refused again
#   and it is held a second time: the client gets successful:true, after
#   exactly two token requests.
# nginx at debug level: no token in the log.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use Digest::SHA qw(sha256_hex);
use IO::Select;
use IO::Socket::INET;
use IO::Uncompress::Gunzip qw(gunzip);
use JSON::PP;
use Test::More;
use Time::HiRes qw(time);

my $S = SfTest::time_scale();
my $debug = `$SfTest::NGINX -V 2>&1` =~ /--with-debug/;

my $t = SfTest->new(log_level => $debug ? 'debug' : 'info');
$t->start_mock;
$t->write_conf("    sf_oauth_zone zone=sf:1m;\n" . $t->credential . <<'EOF');
    server {
        listen 127.0.0.1:%%PORT%% reuseport default_server;

        location /cometd/ {
            sf_oauth crm;
            proxy_pass http://127.0.0.1:%%MOCK%%;
            proxy_read_timeout 120s;
            proxy_buffers 8 4k;
        }

        location /unbuffered/cometd/ {
            sf_oauth crm;
            proxy_pass http://127.0.0.1:%%MOCK%%/cometd/;
            proxy_read_timeout 120s;
            proxy_buffering off;
        }

        location /services/ {
            sf_oauth crm;
            proxy_pass http://127.0.0.1:%%MOCK%%;
        }
    }
EOF
$t->start;

my @responses;
my $id = 0;

# Sends MSGS (an arrayref of Bayeux messages) to /cometd/59.0 (PATH);
# returns the socket
sub bayeux_send {
    my ($msgs, %opt) = @_;

    $_->{id} //= ++$id for @$msgs;
    my $body = encode_json($msgs);
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $t->port, Proto => 'tcp')
        or die "connect: $!";
    print $s "POST " . ($opt{path} // '/cometd/59.0') . " HTTP/1.1\r\n"
             . "Host: localhost\r\n"
             . "Authorization: OAuth client-own-session-7f3e\r\n"
             . "Content-Type: application/json\r\n"
             . ($opt{gzip} ? "Accept-Encoding: gzip\r\n" : '')
             . "Content-Length: " . length($body) . "\r\n"
             . "Connection: close\r\n\r\n" . $body;
    return $s;
}

# What has come on a socket so far: {status, headers, body (dechunked,
# as much as came, as sent), done (the whole answer)}; bayeux_read adds
# json (decoded, inflated first if it was compressed)
sub parse_answer {
    my ($all) = @_;

    my $end = index($all, "\r\n\r\n");
    return undef if $end < 0;
    my ($head, $rest) = (substr($all, 0, $end), substr($all, $end + 4));
    my %h;
    my ($status) = $head =~ m{^HTTP/1\.\d (\d+)};
    for (split /\r\n/, $head) {
        $h{lc $1} = $2 if /^([^:]+):\s*(.*)$/;
    }
    my ($body, $done) = ('', 0);
    if (($h{'transfer-encoding'} // '') =~ /chunked/) {
        while ($rest =~ s/^([0-9a-fA-F]+)\r\n//) {
            my $n = hex $1;
            if ($n == 0) {
                $done = 1;
                last;
            }
            $body .= substr($rest, 0, $n, '');
            last unless $rest =~ s/^\r\n//;
        }
    } else {
        $body = $rest;
        $done = defined $h{'content-length'}
                && length($body) >= $h{'content-length'};
    }
    return { status => $status // 0, headers => \%h, body => $body,
             raw => $body, content => $body, done => $done };
}

# Reads S until COND (a sub, given what parse_answer makes of it) is true
# or the peer closes; returns that answer
sub read_until {
    my ($s, $what, $cond) = @_;

    my $sel = IO::Select->new($s);
    my $all = $t->{partial}{$s} // '';
    my $a;
    my $end = time + 20 * $S;
    while (time < $end) {
        $a = parse_answer($all);
        last if $a && $cond->($a);
        next unless $sel->can_read(0.05);
        my $n = sysread($s, $all, 65536, length $all);
        last unless $n;
    }
    $t->{partial}{$s} = $all;
    $a = parse_answer($all) || { status => 0, headers => {}, body => '' };
    return $a;
}

sub bayeux_read {
    my ($s) = @_;

    my $a = read_until($s, 'the whole answer', sub { $_[0]{done} });

    # a socket opened later may get this one's address, and its name
    delete $t->{partial}{$s};
    close $s;
    my $plain = $a->{body};
    gunzip(\$a->{body} => \$plain)
        if ($a->{headers}{'content-encoding'} // '') eq 'gzip';
    $a->{json} = eval { decode_json($plain) };
    push @responses, $a;
    return $a;
}

sub bayeux { bayeux_read(bayeux_send(@_)) }

sub handshake {
    return bayeux([{ channel => '/meta/handshake', version => '1.0',
                     supportedConnectionTypes => ['long-polling'] }], @_);
}

sub reply {
    my ($res, $channel) = @_;
    my ($r) = grep { ($_->{channel} // '') eq $channel }
              @{ ref $res->{json} eq 'ARRAY' ? $res->{json} : [] };
    return $r || {};
}

sub log_len { scalar @{ $t->stats->{cometd_log} } }

# A handshook client subscribed to CHANNEL; returns its clientId
sub subscribed {
    my ($channel, %opt) = @_;
    my $hs = handshake(%opt);
    my $cid = reply($hs, '/meta/handshake')->{clientId};
    my $sub = bayeux([{ channel => '/meta/subscribe', clientId => $cid,
                        subscription => $channel }], %opt);
    ok($cid && reply($sub, '/meta/subscribe')->{successful},
       "handshook and subscribed to $channel")
        or diag(explain { map { $_->[0] => { status => $_->[1]{status},
                                             body => $_->[1]{body} } }
                          [ handshake => $hs ], [ subscribe => $sub ] });
    return $cid;
}

is($t->get('/services/data/warm')->{status}, 200, 'warm: a token');

# -- a large event batch in two parts: not buffered ----------------------------

# With proxy_buffering (nginx's default), nginx keeps the last proxy buffer
# that it has not filled (4k here) until more comes or the answer ends:
# the client has the first part but for at most those bytes.  With
# proxy_buffering off, all of it.
for my $case (map { my $b = $_; map { [@$_, $b] } ['chunked', 0, ''],
                                                  ['length', 0, ''],
                                                  ['chunked', 1, '&random=1'] }
              0, 1) {
    my ($split, $gzip, $random, $unbuffered) = @$case;
    my $name = "$split" . ($gzip ? ', gzip' : '')
               . ($unbuffered ? ', proxy_buffering off' : '');
    my $path = ($unbuffered ? '/unbuffered' : '') . '/cometd/59.0';
    my $keep = $unbuffered ? 0 : 4096;

    $t->mock('gzip', "on=$gzip");
    my $before = $t->token_requests;
    my $cid = subscribed('/event/Big__e', gzip => $gzip, path => $path);
    for (1 .. 3) {
        $t->mock('publish', "channel=/event/Big__e&size=100000$random");
    }
    $t->mock('cometd', "split=$split");
    my $from = log_len();
    my $s = bayeux_send([{ channel => '/meta/connect', clientId => $cid,
                           connectionType => 'long-polling' }],
                        gzip => $gzip, path => $path);
    SfTest::wait_event(10, "$name: the mock sent the first part", sub {
        $t->stats->{cometd_split_state} eq 'first_sent';
    });
    my ($e) = grep { $_->{split_at} } @{ $t->stats->{cometd_log} }[$from .. log_len() - 1];
    my $half = $e->{split_at};
    ok($half > 8192, "$name: a first part of $half bytes on the wire");
    my $first = read_until($s, 'the first part',
                           sub { length $_[0]{body} >= $half - $keep });
    my $got = length $first->{body};
    ok($got >= $half - $keep && $got <= $half,
       "$name: the client has the first part"
       . ($keep ? " but for at most nginx's last $keep-byte buffer" : '')
       . " ($got bytes)");
    is($t->stats->{cometd_split_state}, 'first_sent',
       "$name: while the mock holds the second");
    $t->mock('cometd', 'release=1');
    my $all = bayeux_read($s);
    ok($all->{done}, "$name: then the whole answer");
    is(sha256_hex($all->{body}), $e->{wire_sha256},
       "$name: byte for byte as the mock sent it ("
       . length($all->{body}) . ' bytes)');
    if ($gzip) {
        is($all->{headers}{'content-encoding'}, 'gzip',
           "$name: still compressed");
    } elsif ($split eq 'length') {
        is($all->{headers}{'content-length'}, $e->{length},
           "$name: with its Content-Length");
    }
    my $plain = $all->{body};
    gunzip(\$all->{body} => \$plain) if $gzip;
    my $events = grep { ($_->{channel} // '') eq '/event/Big__e' }
                 @{ scalar(eval { decode_json($plain) }) || [] };
    is($events, 3, "$name: its 3 events");
    is($t->token_requests - $before, 0, "$name: no token request");
}
$t->mock('cometd', 'split=none');

# -- a gzip-compressed event batch: byte for byte ------------------------------

{
    $t->mock('gzip', 'on=1');
    my $before = $t->token_requests;
    my $cid = subscribed('/topic/Zipped', gzip => 1);
    $t->mock('publish', "channel=/topic/Zipped&size=$_") for 300000, 2000, 50;
    my $from = log_len();
    my $conn = bayeux([{ channel => '/meta/connect', clientId => $cid,
                         connectionType => 'long-polling' }], gzip => 1);
    my ($e) = grep { grep({ $_ eq '/meta/connect' } @{ $_->{channels} }) }
              @{ $t->stats->{cometd_log} }[$from .. log_len() - 1];
    is($conn->{headers}{'content-encoding'}, 'gzip',
       'gzip batch: passes compressed');
    ok(length $conn->{body} < 8192,
       'gzip batch: ' . length($conn->{body}) . ' bytes, short enough that '
       . 'the module reads it');
    is(sha256_hex($conn->{body}), $e->{wire_sha256},
       'gzip batch: byte for byte as the mock sent it');
    is($conn->{headers}{'content-length'}, length $conn->{body},
       'gzip batch: its Content-Length');
    my $plain;
    gunzip(\$conn->{body} => \$plain);
    is(sha256_hex($plain), $e->{sha256}, 'gzip batch: inflated, the same');
    is(scalar(grep { ($_->{channel} // '') eq '/topic/Zipped' }
               @{ decode_json($plain) }), 3, 'gzip batch: its 3 events');
    is($t->token_requests - $before, 0, 'gzip batch: no token request');
    $t->mock('gzip', 'on=0');
}

# -- proxy_buffering off: a revoked connect is rewritten all the same -----------

{
    my $path = '/unbuffered/cometd/59.0';
    my $cid = reply(handshake(path => $path), '/meta/handshake')->{clientId};
    $t->mock('cometd', 'hold=30');
    my $before = $t->token_requests;
    my $from = log_len();
    my $s = bayeux_send([{ channel => '/meta/connect', clientId => $cid,
                           connectionType => 'long-polling' }],
                        path => $path);
    SfTest::wait_event(10, 'the mock holds the connect', sub {
        my @log = @{ $t->stats->{cometd_log} };
        grep { grep({ $_ eq '/meta/connect' } @{ $_->{channels} })
               && !@{ $_->{replies} } } @log[$from .. $#log];
    });
    $t->mock('revoke');
    my $r = reply(bayeux_read($s), '/meta/connect');
    is_deeply($r->{advice}, { reconnect => 'handshake', interval => 0 },
              'proxy_buffering off: a revoked connect told to handshake');
    is($r->{error}, '401::Authentication invalid',
       'proxy_buffering off: its error stays');
    is(reply(handshake(path => $path), '/meta/handshake')->{successful},
       JSON::PP::true, 'proxy_buffering off: the next handshake succeeds');
    is($t->token_requests - $before, 1,
       'proxy_buffering off: one token request');
    $t->mock('cometd', 'hold=10');
}

# -- a handshake whose token is revoked twice: held a second time ---------------

{
    # the refresh of the case before may still be on its way: a handshake
    # with the current token, once there is one
    ok(SfTest::wait_for(10, sub {
           (reply(handshake(), '/meta/handshake')->{successful} // 0)
           eq JSON::PP::true }),
       'revoked twice: a handshake with the current token');
    my $before = $t->token_requests;
    my $mark = $t->log_mark;
    my $from = log_len();

    $t->mock('revoke');
    my $path = '/cometd/59.0?late401=' . (1.5 * $S);
    my $s = bayeux_send([{ channel => '/meta/handshake', version => '1.0',
                           supportedConnectionTypes => ['long-polling'] }],
                        path => $path);
    SfTest::wait_event(10, "the mock's late refusal of $path", sub {
        grep { $_ eq $path } @{ $t->stats->{late401_log} || [] };
    });
    is($t->get('/services/data/fast')->{status}, 200,
       'revoked twice: a revoke, another request refreshes: 200');
    $t->mock('revoke');

    my $hs = bayeux_read($s);
    is($hs->{status}, 200, 'revoked twice: the slow handshake: 200');
    my $r = reply($hs, '/meta/handshake');
    is($r->{successful}, JSON::PP::true,
       'revoked twice: the client gets successful:true')
        or diag($hs->{body});
    ok($r->{clientId}, 'revoked twice: with a clientId');
    is($t->token_requests - $before, 2,
       'revoked twice: two token requests, one per revoke');
    my @hs = grep { grep({ $_ eq '/meta/handshake' } @{ $_->{channels} }) }
             @{ $t->stats->{cometd_log} }[$from .. log_len() - 1];
    is_deeply([map { $_->{replies}[0]{error} } @hs],
              ['403::Handshake denied', '403::Handshake denied', undef],
              'revoked twice: denied, replayed and denied again, held, '
              . 'replayed with a new token')
        or diag(explain \@hs);
    is(scalar(grep { $_ eq $path } @{ $t->stats->{late401_log} }), 2,
       'revoked twice: both refusals late');
    unlike($t->error_log_since($mark), qr/a refresh does not cure/,
           'revoked twice: no "a refresh does not cure" warning');
}

# -- no token anywhere ----------------------------------------------------------

$t->no_token_in(\@responses, [$t->tokens]);

# as t/52: no 12-character prefix of any secret in the (debug) log
my $st = $t->stats;
my @secrets = ($SfTest::CLIENT_SECRET, $SfTest::REFRESH_TOKEN,
               @{ $st->{issued_access_tokens} },
               @{ $st->{issued_refresh_tokens} });
$t->stop;
my $log = $t->error_log;
like($log, qr/\[debug\]/, 'the error log is at debug level') if $debug;
my @found = grep { index($log, substr($_, 0, 12)) >= 0 } @secrets;
is(scalar @found, 0, 'no 12-character prefix of any secret in the log ('
                     . scalar(@secrets) . ' secrets)')
    or diag(map { substr($_, 0, 12) . "...\n" } @found);

$t->finish;
done_testing();
