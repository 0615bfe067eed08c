#!/usr/bin/perl

# jsforce's streaming client (Faye, long polling), unmodified, through the
# proxy, subscribed to a PushTopic (/topic/SomeTopic) and to a platform
# event channel (/event/Foo__e) at once, across 5 revokes
# (t/lib/cometd_jsforce_revokes.js): every event published on both
# channels is received exactly once, one token request per revoke, no
# "403::Handshake denied" reaches the client (every incoming Bayeux
# message recorded), and nothing is reported to the application as an
# error: jsforce's AuthFailure callback never runs (the proxy rewrites the
# dead connect's advice "none" to "handshake"), no subscription fails, no
# uncaught error; the only refused messages it sees are the 5 connects
# told to handshake again.  nginx at debug level: no token in the log.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use JSON::PP;
use Test::More;

my $ROOT = $SfTest::ROOT;
my $NODE_PATH = "$ROOT/build/node/node_modules";
plan skip_all => 'jsforce (build/node) or node missing'
    unless -f "$NODE_PATH/jsforce/package.json" && -d "$NODE_PATH/faye"
           && system('node -e 1 2>/dev/null') == 0;

my $REVOKES = 5;
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
        }

        location /services/ {
            sf_oauth crm;
            proxy_pass http://127.0.0.1:%%MOCK%%;
        }
    }
EOF
$t->start;

is($t->get('/services/data/warm')->{status}, 200, 'warm: a token');
$t->mock('cometd', 'hold=30');
my $before = $t->token_requests;
my $mark = $t->log_mark;

my $limit = int(300 * SfTest::time_scale());
my $out = `NODE_PATH=$NODE_PATH timeout $limit node $ROOT/t/lib/cometd_jsforce_revokes.js http://127.0.0.1:${\ $t->port } ${\ $t->mock_url } $REVOKES 2>&1`;
my $res = eval { decode_json((split /\n/, $out)[-1]) } || { ok => 0 };
ok($res->{ok}, "jsforce: subscribed to both channels, through $REVOKES revokes")
    or diag($out);

# every event exactly once: event 0 before the first revoke, then one per
# revoke, on each channel
my @want = map { my $n = $_; map { "$_:$n" } qw(event topic) } 0 .. $REVOKES;
my @got = sort map { "$_->{kind}:$_->{n}" } @{ $res->{events} || [] };
is_deeply(\@got, [sort @want],
          'jsforce: each of the ' . scalar(@want)
          . ' events published received exactly once')
    or diag(explain $res->{events});
is($res->{published}, scalar @want, 'jsforce: as many published');
my %shape = map { ("$_->{kind}:" . ($_->{schema} ? 'schema' : '')
                   . ($_->{type} ? "type=$_->{type}" : '')) => 1 }
            @{ $res->{events} || [] };
is_deeply([sort keys %shape], ['event:schema', 'topic:type=created'],
          'jsforce: platform events with their schema, PushTopic events '
          . 'with their type');

is($t->token_requests - $before, $REVOKES,
   "jsforce: $REVOKES token requests, one per revoke");

# what reached the client
is($res->{handshake_denied}, 0,
   "jsforce: no 403::Handshake denied among its $res->{incoming} incoming "
   . 'messages');
is_deeply($res->{incoming_failures},
          [({ channel => '/meta/connect',
              error => '401::Authentication invalid',
              advice => { reconnect => 'handshake', interval => 0 } })
           x $REVOKES],
          "jsforce: the only refused messages: $REVOKES connects told to "
          . 'handshake again')
    or diag(explain $res->{incoming_failures});
ok($res->{handshakes} >= $REVOKES + 1,
   "jsforce: handshook again by itself ($res->{handshakes} handshakes)");

# what reached the application
is_deeply($res->{auth_failures}, [], 'jsforce: AuthFailure never called');
is_deeply($res->{subscribe_errors}, [], 'jsforce: no subscription failed');
is_deeply($res->{client_errors}, [], 'jsforce: no error from the client');
is_deeply($res->{uncaught}, [],
          'jsforce: no uncaught exception or unhandled rejection');
note("transport:down $res->{transport_down} times (not an error)");

# the proxy's side
my @log = @{ $t->stats->{cometd_log} };
ok(!grep({ grep { /jsforce-bogus-session/ } @{ $_->{authorization} } } @log),
   'jsforce: its own session never reached the mock');
my $n_rewritten = () = $t->error_log_since($mark)
    =~ /a CometD \/meta\/connect said the session .* is dead: the client is told to handshake again/g;
is($n_rewritten, $REVOKES, "$REVOKES dead connects logged at info");

$t->no_token_in([{ content => $out, headers => {} }], [$t->tokens]);

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
