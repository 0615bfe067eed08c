#!/usr/bin/perl

# The Streaming API (CometD, POST /cometd/V): Salesforce says a session is
# dead inside the Bayeux messages of an HTTP 200.  A handshake refused for
# it ("403::Handshake denied", failureReason "401::...") is refreshed and
# replayed like a REST 401; a connect answered "401::Authentication
# invalid" drops the token and reaches the client with its advice
# rewritten to reconnect "handshake" (every other byte as Salesforce sent
# it), so that the client handshakes again with the new token.  Other
# answers ("403::Unknown client", a handshake denied for the org's daily
# limit, event deliveries however large) pass byte for byte with no token
# request; an HTTP 401 from /cometd/ takes the REST path.  The client's
# "Authorization: OAuth ..." never reaches Salesforce.  nginx -t warns
# about a /cometd/ location with a proxy_read_timeout under 120 s.  A real
# client: jsforce's streaming (Faye) across a revoke (t/lib/cometd_jsforce.js).
# nginx runs at debug level: no token in any log.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use Digest::SHA qw(sha256_hex);
use IO::Socket::INET;
use IO::Uncompress::Gunzip qw(gunzip);
use JSON::PP;
use Test::More;
use Time::HiRes qw(sleep);

my $ROOT = $SfTest::ROOT;
my $NODE_PATH = "$ROOT/build/node/node_modules";
my $HAVE_JSFORCE = -f "$NODE_PATH/jsforce/package.json"
                   && -d "$NODE_PATH/faye"
                   && system('node -e 1 2>/dev/null') == 0;

my $debug = `$SfTest::NGINX -V 2>&1` =~ /--with-debug/;

my $t = SfTest->new(log_level => $debug ? 'debug' : 'info');
$t->start_mock;

my $LOCATIONS = <<'EOF';
        location /services/ {
            sf_oauth crm;
            proxy_pass http://127.0.0.1:%%MOCK%%;
        }

        location = /sf_oauth_info {
            sf_oauth_info;
        }
EOF

sub conf {
    my ($cometd) = @_;

    return "    sf_oauth_zone zone=sf:1m;\n" . $t->credential . <<"EOF";
    server {
        listen 127.0.0.1:%%PORT%% reuseport default_server;

        location /cometd/ {
            sf_oauth crm;
            proxy_pass http://127.0.0.1:%%MOCK%%;
$cometd
        }

$LOCATIONS
    }
EOF
}

# -- nginx -t: proxy_read_timeout of a /cometd/ location --------------------

$t->write_conf(conf(''));
my ($rc, $out) = $t->test_conf;
is($rc, 0, 'nginx -t: the default proxy_read_timeout is a warning only');
like($out, qr/\[warn\].*sf_oauth "crm" in \S*nginx\.conf:\d+: location "\/cometd\/" proxies the Streaming API \(CometD\).*proxy_read_timeout 60000 ms.*set "proxy_read_timeout 120s;"/,
     'nginx -t: warns, naming the location, file, line, value and fix')
    or diag($out);

$t->write_conf(conf('            proxy_read_timeout 119s;'));
($rc, $out) = $t->test_conf;
like($out, qr/proxy_read_timeout 119000 ms/, 'nginx -t: 119s warned too')
    or diag($out);

$t->write_conf(conf('            proxy_read_timeout 120s;'));
($rc, $out) = $t->test_conf;
is($rc, 0, 'nginx -t: proxy_read_timeout 120s accepted');
unlike($out, qr/CometD/, 'nginx -t: no warning with 120s') or diag($out);

$t->start;

# -- a raw Bayeux client ------------------------------------------------------

my $CLIENT_AUTH = 'OAuth client-own-session-7f3e';
my @responses;
my $id = 0;

# Sends MSGS (an arrayref of messages) to /cometd/59.0; returns the socket,
# whose answer bayeux_read() reads.
sub bayeux_send {
    my ($msgs, %opt) = @_;

    $_->{id} //= ++$id for @$msgs;
    my $body = encode_json($msgs);
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $t->port, Proto => 'tcp')
        or die "connect: $!";
    print $s "POST /cometd/59.0 HTTP/1.1\r\nHost: localhost\r\n"
             . "Authorization: " . ($opt{auth} // $CLIENT_AUTH) . "\r\n"
             . "Content-Type: application/json\r\n"
             . ($opt{gzip} ? "Accept-Encoding: gzip\r\n" : '')
             . "Content-Length: " . length($body) . "\r\n"
             . "Connection: close\r\n\r\n" . $body;
    return $s;
}

# The answer on S: {status, headers, raw (the body as sent), json}
sub bayeux_read {
    my ($s) = @_;

    local $/;
    my $all = <$s> // '';
    close $s;
    my ($head, $body) = split /\r\n\r\n/, $all, 2;
    my %h;
    my ($status) = $head =~ m{^HTTP/1\.\d (\d+)};
    for (split /\r\n/, $head) {
        $h{lc $1} = $2 if /^([^:]+):\s*(.*)$/;
    }
    $body //= '';
    if (($h{'transfer-encoding'} // '') =~ /chunked/) {
        my $raw = '';
        while ($body =~ s/^([0-9a-fA-F]+)\r\n//) {
            my $n = hex $1;
            last if $n == 0;
            $raw .= substr($body, 0, $n, '');
            $body =~ s/^\r\n//;
        }
        $body = $raw;
    }
    my $res = { status => $status // 0, headers => \%h, raw => $body,
                content => $body,
                json => scalar eval { decode_json($body) } };
    push @responses, $res;
    return $res;
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

# The mock's record of the last request with a reply on CHANNEL
sub mock_entry {
    my ($channel) = @_;
    my ($e) = grep { grep { ($_->{channel} // '') eq $channel } @{ $_->{replies} } }
              reverse @{ $t->stats->{cometd_log} };
    return $e;
}

# Waits until the mock holds a connect that came after entry FROM
sub connect_held {
    my ($from) = @_;
    SfTest::wait_event(10, 'the mock holds the connect', sub {
        my @log = @{ $t->stats->{cometd_log} };
        grep { grep({ $_ eq '/meta/connect' } @{ $_->{channels} })
               && !@{ $_->{replies} } } @log[$from .. $#log];
    });
}

# -- cold, and the client's own session replaced ------------------------------

my $hs = handshake();
is($hs->{status}, 200, 'cold handshake: 200');
is(reply($hs, '/meta/handshake')->{successful}, JSON::PP::true,
   'cold handshake: successful');
is($t->token_requests, 1, 'cold handshake: one token request');

# -- a handshake with a dead token: refreshed and replayed --------------------

$t->mock('revoke');
my $before = $t->token_requests;
my $from = log_len();
$hs = handshake();
is($hs->{status}, 200, 'dead handshake: 200');
my $r = reply($hs, '/meta/handshake');
is($r->{successful}, JSON::PP::true, 'dead handshake: the client gets successful:true');
ok($r->{clientId}, 'dead handshake: with a clientId');
is($t->token_requests - $before, 1, 'dead handshake: one token request');
my @log = @{ $t->stats->{cometd_log} }[$from .. log_len() - 1];
is_deeply([map { $_->{replies}[0]{error} } @log],
          ['403::Handshake denied', undef],
          'dead handshake: denied, then replayed with the new token')
    or diag(explain \@log);
is(mock_entry('/meta/handshake')->{sha256}, sha256_hex($hs->{raw}),
   'dead handshake: the replay\'s answer byte for byte');

# -- a revoke during a held connect --------------------------------------------

$t->mock('cometd', 'hold=30');
my $cid = $r->{clientId};
my $sub = bayeux([{ channel => '/meta/subscribe', clientId => $cid,
                    subscription => '/topic/Mock' }]);
is(reply($sub, '/meta/subscribe')->{successful}, JSON::PP::true,
   'subscribe: successful');

$before = $t->token_requests;
$from = log_len();
my $s = bayeux_send([{ channel => '/meta/connect', clientId => $cid,
                       connectionType => 'long-polling' }]);
connect_held($from);
my $mark = $t->log_mark;
$t->mock('revoke');
my $conn = bayeux_read($s);
is($conn->{status}, 200, 'revoked connect: 200');
$r = reply($conn, '/meta/connect');
is_deeply($r->{advice}, { reconnect => 'handshake', interval => 0 },
          'revoked connect: advice reconnect "handshake"')
    or diag($conn->{raw});
is($r->{error}, '401::Authentication invalid', 'revoked connect: the error stays');
is($r->{successful}, JSON::PP::false, 'revoked connect: successful:false stays');
is($conn->{headers}{'content-length'}, length $conn->{raw},
   'revoked connect: Content-Length of the rewritten body');
my $e = mock_entry('/meta/connect');
(my $back = $conn->{raw})
    =~ s/\Q{"reconnect":"handshake","interval":0}\E/{"reconnect": "none", "interval": 0}/;
is(sha256_hex($back), $e->{sha256},
   'revoked connect: every other byte as the mock sent it');
ok($t->wait_log(qr/a CometD \/meta\/connect said the session .* is dead: the client is told to handshake again/,
                $mark, 5 * SfTest::time_scale()),
   'revoked connect: logged at info');

# the client's library handshakes again, subscribes again, gets an event
$hs = handshake();
$r = reply($hs, '/meta/handshake');
is($r->{successful}, JSON::PP::true, 're-handshake: successful');
is($t->token_requests - $before, 1, 'revoke during a connect: one token request');
$cid = $r->{clientId};
$sub = bayeux([{ channel => '/meta/subscribe', clientId => $cid,
                 subscription => '/topic/Mock' }]);
is(reply($sub, '/meta/subscribe')->{successful}, JSON::PP::true,
   're-subscribe: successful');
$from = log_len();
$s = bayeux_send([{ channel => '/meta/connect', clientId => $cid,
                    connectionType => 'long-polling' }]);
connect_held($from);
$t->mock('publish', 'channel=/topic/Mock', );
$conn = bayeux_read($s);
my @events = grep { ($_->{channel} // '') eq '/topic/Mock' }
             @{ $conn->{json} || [] };
is(scalar @events, 1, 'an event published after the re-handshake arrives');
is(reply($conn, '/meta/connect')->{successful}, JSON::PP::true,
   'with its connect reply');
is($t->token_requests - $before, 1, 'still one token request');

# -- five clients' connects held at once, then revoked: one refresh -------------

my @cids;
for (1 .. 5) {
    $hs = handshake();
    push @cids, reply($hs, '/meta/handshake')->{clientId};
}
ok(!grep({ !$_ } @cids), 'five clients: handshook');
$before = $t->token_requests;
$from = log_len();
my @socks = map { bayeux_send([{ channel => '/meta/connect', clientId => $_,
                                 connectionType => 'long-polling' }]) } @cids;
SfTest::wait_event(10, 'the mock holds five connects', sub {
    my @log = @{ $t->stats->{cometd_log} };
    5 == grep { grep({ $_ eq '/meta/connect' } @{ $_->{channels} })
                && !@{ $_->{replies} } } @log[$from .. $#log];
});
$t->mock('revoke');
my @advice = map { reply(bayeux_read($_), '/meta/connect')->{advice}{reconnect}
                   // '' } @socks;
is_deeply(\@advice, [('handshake') x 5],
          'five clients: each told to handshake again');
@socks = map { bayeux_send([{ channel => '/meta/handshake', version => '1.0',
                              supportedConnectionTypes => ['long-polling'] }]) }
         1 .. 5;
my @ok = map { reply(bayeux_read($_), '/meta/handshake')->{successful} } @socks;
is(scalar(grep { $_ && $_ eq JSON::PP::true } @ok), 5,
   'five clients: their handshakes at once succeed');
is($t->token_requests - $before, 1, 'five clients: one token request');

# -- a refused connect the module cannot read passes as it is, no refresh -------

for my $odd (qw(truncated big)) {
    $t->mock('cometd', "odd=$odd");
    $hs = handshake();
    $cid = reply($hs, '/meta/handshake')->{clientId};
    $before = $t->token_requests;
    $from = log_len();
    $mark = $t->log_mark;
    $s = bayeux_send([{ channel => '/meta/connect', clientId => $cid,
                        connectionType => 'long-polling' }]);
    connect_held($from);
    $t->mock('revoke');
    $conn = bayeux_read($s);
    $e = mock_entry('/meta/connect') || {};
    is(sha256_hex($conn->{raw}), $e->{sha256},
       "$odd: the refused connect passes byte for byte ($e->{length} bytes)");
    unlike($conn->{raw}, qr/"handshake"/, "$odd: its advice as it was");
    is($t->token_requests - $before, 0, "$odd: no token request");
    unlike($t->error_log_since($mark), qr/CometD/, "$odd: no CometD line");
    # the next handshake finds the dead token: refreshed and replayed
    is(reply(handshake(), '/meta/handshake')->{successful}, JSON::PP::true,
       "$odd: the next handshake is cured");
    is($t->token_requests - $before, 1, "$odd: by one token request");
}
$t->mock('cometd', 'odd=none');

# -- the same, gzip-compressed by Salesforce ------------------------------------

$t->mock('gzip', 'on=1');
$before = $t->token_requests;
$hs = handshake(gzip => 1);
is($hs->{headers}{'content-encoding'}, 'gzip', 'gzip: the handshake passes compressed');
my $plain;
gunzip(\$hs->{raw} => \$plain);
$cid = (decode_json($plain)->[0] || {})->{clientId};
ok($cid, 'gzip: handshake successful');
$from = log_len();
$s = bayeux_send([{ channel => '/meta/connect', clientId => $cid,
                    connectionType => 'long-polling' }], gzip => 1);
connect_held($from);
$t->mock('revoke');
$conn = bayeux_read($s);
ok(!$conn->{headers}{'content-encoding'},
   'gzip: the rewritten connect goes uncompressed');
$r = reply($conn, '/meta/connect');
is_deeply($r->{advice}, { reconnect => 'handshake', interval => 0 },
          'gzip: advice reconnect "handshake"') or diag($conn->{raw});
($back = $conn->{raw})
    =~ s/\Q{"reconnect":"handshake","interval":0}\E/{"reconnect": "none", "interval": 0}/;
is(sha256_hex($back), mock_entry('/meta/connect')->{sha256},
   'gzip: every other byte as the mock sent it, inflated');
is($conn->{headers}{'content-length'}, length $conn->{raw},
   'gzip: its Content-Length');
$hs = handshake(gzip => 1);
gunzip(\$hs->{raw} => \$plain);
is((decode_json($plain)->[0] || {})->{successful}, JSON::PP::true,
   'gzip: the re-handshake succeeds');
is($t->token_requests - $before, 1, 'gzip: one token request');
$t->mock('gzip', 'on=0');

# -- answers that pass untouched -------------------------------------------------

$before = $t->token_requests;

my $unknown = bayeux([{ channel => '/meta/connect', clientId => 'nope',
                        connectionType => 'long-polling' }]);
$r = reply($unknown, '/meta/connect');
is($r->{error}, '403::Unknown client', '403::Unknown client: passed');
is_deeply($r->{advice}, { reconnect => 'handshake', interval => 0 },
          '403::Unknown client: its own advice');
is(sha256_hex($unknown->{raw}), mock_entry('/meta/connect')->{sha256},
   '403::Unknown client: byte for byte');

$t->mock('cometd', 'daily_limit=1');
my $limit = handshake();
$r = reply($limit, '/meta/handshake');
is($r->{error}, '403::Handshake denied', 'daily limit: handshake denied passed');
is($r->{ext}{sfdc}{failureReason},
   '403::Organization total events daily limit exceeded',
   'daily limit: its failureReason');
is(sha256_hex($limit->{raw}), mock_entry('/meta/handshake')->{sha256},
   'daily limit: byte for byte');
$t->mock('cometd', 'daily_limit=0');
is($t->token_requests - $before, 0, 'unknown client, daily limit: no token request');

# a large event delivery, queued before the connect: passes byte for byte
$hs = handshake();
$cid = reply($hs, '/meta/handshake')->{clientId};
bayeux([{ channel => '/meta/subscribe', clientId => $cid,
          subscription => '/topic/Big' }]);
$t->mock('publish', 'channel=/topic/Big&size=300000');
$conn = bayeux([{ channel => '/meta/connect', clientId => $cid,
                  connectionType => 'long-polling' }]);
$e = mock_entry('/meta/connect');
ok(length $conn->{raw} > 300000, 'large delivery: ' . length($conn->{raw})
                                 . ' bytes');
is(sha256_hex($conn->{raw}), $e->{sha256}, 'large delivery: byte for byte');
is($t->token_requests - $before, 0, 'large delivery: no token request');

# -- the client's Authorization never reaches Salesforce -----------------------

my $st = $t->stats;
my %issued = map { $_ => 1 } @{ $st->{issued_access_tokens} };
my @auths = @{ $st->{cometd_auths} };
ok(@auths > 10, 'requests reached the mock (' . scalar(@auths) . ')');
is(scalar(grep { /client-own-session/ || !/^Bearer (.+)$/ || !$issued{$1} }
          @auths), 0,
   'each carried "Bearer" and an issued token, never the client\'s OAuth');
is(scalar(grep { @{ $_->{authorization} } != 1 } @{ $st->{cometd_log} }), 0,
   'one Authorization header each');

# -- an HTTP 401 from /cometd/: the REST path -----------------------------------

$t->mock('cometd', 'http401=1');
$t->mock('revoke');
$before = $t->token_requests;
$from = log_len();
$hs = handshake();
is($hs->{status}, 200, 'HTTP 401: replayed, 200');
is(reply($hs, '/meta/handshake')->{successful}, JSON::PP::true,
   'HTTP 401: the handshake succeeds');
is($t->token_requests - $before, 1, 'HTTP 401: one token request');
is_deeply([map { $_->{status} } @{ $t->stats->{cometd_log} }[$from .. log_len() - 1]],
          [401, 200], 'HTTP 401: the mock answered 401, then 200');
$t->mock('cometd', 'http401=0');

# -- a real client: jsforce's streaming (Faye) -----------------------------------

SKIP: {
    skip 'jsforce (build/node) or node missing', 6 unless $HAVE_JSFORCE;

    $t->mock('cometd', 'hold=30');
    $before = $t->token_requests;
    my $limit = int(120 * SfTest::time_scale());
    my $cmd = "NODE_PATH=$NODE_PATH timeout $limit node $ROOT/t/lib/cometd_jsforce.js "
              . "http://127.0.0.1:${\ $t->port} " . $t->mock_url;
    my $out = `$cmd 2>&1`;
    my $res = eval { decode_json((split /\n/, $out)[-1]) } || { ok => 0 };
    ok($res->{ok}, 'jsforce: subscribed, survived the revoke')
        or diag($out);
    is_deeply($res->{events}, [{ n => 1 }, { n => 2 }],
              'jsforce: the event before and the one after the revoke');
    ok(($res->{handshakes} // 0) >= 2, 'jsforce: handshook again by itself');
    is($t->token_requests - $before, 1, 'jsforce: one token request');
    push @responses, { content => $out, headers => {} };

    my @log = @{ $t->stats->{cometd_log} };
    ok(!grep({ grep { /jsforce-bogus-session/ } @{ $_->{authorization} } } @log),
       'jsforce: its own session never reached the mock');
    ok(grep({ grep { ($_->{error} // '') eq '401::Authentication invalid' }
                   @{ $_->{replies} } } @log),
       'jsforce: a connect was refused for the dead session');
}

# -- no token anywhere ----------------------------------------------------------

$t->no_token_in(\@responses, [$t->tokens]);

# as t/52: no 12-character prefix of any secret in the (debug) log
$st = $t->stats;
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
