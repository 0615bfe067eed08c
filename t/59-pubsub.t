#!/usr/bin/perl

# The Pub/Sub API (gRPC) through grpc_pass: a real gRPC client (Debian's
# python3-grpcio and python3-protobuf, t/lib/pubsub_client.py) over h2c to
# nginx, and a mock Pub/Sub server (t/lib/mock_pubsub.py) that checks the
# accesstoken against the mock Salesforce's live tokens; both speak the
# messages of Salesforce's pubsub_api.proto (t/lib/pubsub_proto.py).  The
# module puts accesstoken, instanceurl and tenantid on the upstream call,
# never the client's own (nor its Authorization); a unary call answered
# UNAUTHENTICATED (auth error-code) is replayed after one token request,
# with the same bytes, and the client sees no error across revokes; a
# stream's UNAUTHENTICATED passes to the client, and its retry gets the new
# token after one token request; a Subscribe's FetchRequests reach the mock
# while it streams, which sends no more events than they ask for; any
# other status passes with no token request; no token in the debug log;
# nginx -t's warning about grpc_read_timeout.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use Test::More;
use JSON::PP;
use Time::HiRes qw(sleep time);
use IPC::Open2;

my $PY = '/usr/bin/python3';    # Debian's: python3-grpcio, python3-protobuf

plan skip_all => 'python3-grpcio or python3-protobuf is missing '
                . '(apt-get install python3-grpcio python3-protobuf)'
    if system("$PY -c 'import grpc, google.protobuf' 2>/dev/null") != 0;

my $ROOT = $SfTest::ROOT;
my $AUTH = 'sfdc.platform.eventbus.grpc.service.auth.error';
my $BOGUS = 'client-own-accesstoken-0123456789';
my $BOGUS_AUTH = 'Bearer client-own-authorization-0123456789';

my ($ORG_ID) = `cat $ROOT/t/lib/mock_sf.py` =~ /^ORG_ID = "(\w+)"/m;

my $t = SfTest->new(log_level => 'debug');
$t->start_mock;

my $gport = SfTest::free_port();     # nginx's h2c server
my ($mport, $cport) = $t->start_mock_pubsub;   # the mock Pub/Sub

sub pubsub_stats {
    my $res = HTTP::Tiny->new(timeout => 10)
        ->get("http://127.0.0.1:$cport/stats");
    return decode_json($res->{content});
}

# the mock's record of the call that gave the answer R (by its rpc_id)
sub call_of {
    my ($r) = @_;
    my $id = ($r->{response} // {})->{rpc_id} // return {};
    my ($call) = grep { $_->{rpc_id} eq $id } @{ pubsub_stats()->{calls} };
    return $call // {};
}

# COUNT events added to TOPIC through the control port
sub publish {
    my ($topic, $count) = @_;
    my $res = HTTP::Tiny->new(timeout => 10)
        ->post("http://127.0.0.1:$cport/publish?topic=$topic&count=$count");
    die "the mock's /publish: $res->{status}" unless $res->{success};
}

sub conf {
    my ($timeouts) = @_;

    return "    sf_oauth_zone zone=sf:1m;\n" . $t->credential . <<"EOF";
    # what \$http_accesstoken says while grpc_pass builds the call
    map \$http_accesstoken \$seen {
        ~^client-own-  "the client's";
        ""             "none";
        default        "another";
    }

    server {
        listen 127.0.0.1:%%PORT%% reuseport default_server;

        location = /sf_oauth_info {
            sf_oauth_info;
        }
    }

    server {
        listen 127.0.0.1:$gport http2 reuseport;

        location /eventbus.v1.PubSub/ {
            sf_oauth crm;
            grpc_pass grpc://127.0.0.1:$mport;
            grpc_set_header X-Seen \$seen;
$timeouts
        }
    }
EOF
}

# -- nginx -t ------------------------------------------------------------------

$t->write_conf(conf(''));
my ($rc, $out) = $t->test_conf;
is($rc, 0, 'nginx -t: the default grpc_read_timeout is accepted');
like($out, qr/\[warn\].*sf_oauth "crm" in the gRPC location "\/eventbus\.v1\.PubSub\/" \(\S+nginx\.conf:\d+\): grpc_read_timeout is 60000ms.*270 s.*set "grpc_read_timeout 300s;"/,
     'nginx -t: a warning names the location, file, line, value and what to set')
    or diag($out);

my $long = "            grpc_read_timeout 300s;\n"
         . "            grpc_send_timeout 300s;\n"
         . "            client_body_timeout 300s;";
$t->write_conf(conf($long));
($rc, $out) = $t->test_conf;
is($rc, 0, 'nginx -t: 300 s accepted');
unlike($out, qr/grpc_read_timeout is/, 'nginx -t: no warning at 300 s');

$t->start;

# -- the client ----------------------------------------------------------------

my @bogus = ("accesstoken=$BOGUS", "authorization=$BOGUS_AUTH",
             'instanceurl=https://client.example.com', 'tenantid=00Dclient');

# one unary call: METHOD and its arguments (GetTopic TOPIC, GetSchema ID,
# Publish TOPIC [EVENTS [SIZE]]); its status, trailers, response (bytes in
# hex) and the sha256 of the request's bytes
sub unary {
    my ($method, @args) = @_;
    open(my $fh, '-|', $PY, "$ROOT/t/lib/pubsub_client.py",
         "127.0.0.1:$gport", 'unary', $method, @args, @bogus)
        or die "pubsub_client.py: $!";
    my $line = join '', <$fh>;
    close $fh;
    return eval { decode_json($line) } || { code => 'no answer: ' . $line };
}

# a Publish's PublishResults as "correlation key: ok" (a replay id and no
# error) or what is wrong
sub results {
    my ($r) = @_;
    return [ map { $_->{correlation_key} . ': '
                   . ($_->{error} ? "error $_->{error}{msg}"
                      : $_->{replay_id} =~ /^[0-9a-f]{16}$/ ? 'ok'
                      : "replay id '$_->{replay_id}'") }
             @{ ($r->{response} // {})->{results} // [] } ];
}
sub ok_results { [ map { "evt-$_: ok" } 0 .. $_[0] - 1 ] }

my ($instance) = values %{ $t->mock('instance_url') };

# -- the metadata --------------------------------------------------------------

my $r = unary('GetTopic', '/event/Order__e');
is($r->{code}, 'OK', 'GetTopic: OK') or diag(explain $r);
my @tokens = $t->tokens;
is(scalar @tokens, 1, 'GetTopic: one token request');
is_deeply([ @{ $r->{response} // {} }{qw(topic_name tenant_guid can_publish
                                           can_subscribe)} ],
          [ '/event/Order__e', $ORG_ID, JSON::PP::true, JSON::PP::true ],
          "GetTopic: a TopicInfo of the topic asked, its tenant_guid the "
          . "module's tenantid") or diag(explain $r);
is_deeply(call_of($r)->{metadata}, {
    accesstoken => [ $tokens[-1] ],
    instanceurl => [ $instance ],
    tenantid => [ $ORG_ID ],
    authorization => [],
    'x-seen' => [ "the client's" ],
}, "GetTopic: the mock sees the module's accesstoken, instanceurl and "
   . "tenantid, and no authorization; \$http_accesstoken is the client's "
   . "while grpc_pass builds the call") or diag(explain call_of($r));

# -- a unary call after a revoke: replayed -------------------------------------

my $before;

$t->mock('revoke');
$r = unary('Publish', '/event/Order__e', 5, 100);
is($r->{code}, 'OK', 'Publish after a revoke: OK') or diag(explain $r);
is_deeply(results($r), ok_results(5),
          'Publish after a revoke: a PublishResult with a replay id for each '
          . 'of the 5 events, in order') or diag(explain $r);
is(call_of($r)->{sha256}, $r->{request_sha256},
   'Publish after a revoke: the replay sent the same bytes');
@tokens = $t->tokens;
is(scalar @tokens, 2, 'Publish after a revoke: one token request');
is_deeply(call_of($r)->{metadata}{accesstoken}, [ $tokens[-1] ],
          'Publish after a revoke: the replay has the new token');
my @calls = grep { $_->{method} eq 'Publish' } @{ pubsub_stats()->{calls} };
is_deeply([ map { $_->{status} } @calls ], [ 16, 0 ],
          'Publish after a revoke: UNAUTHENTICATED, then the replay OK');
is(scalar(grep { $_->{sha256} eq $r->{request_sha256} } @calls), 2,
   'Publish after a revoke: both calls carried the same body');

# a body past client_body_buffer_size (in a temp file) is replayed whole

$r = unary('Publish', '/event/Big__e', 4, 25000);
is($r->{code}, 'OK', 'a 100 KB Publish: OK')
    or diag(substr(encode_json($r), 0, 500));
ok(call_of($r)->{sha256} eq $r->{request_sha256},
   'a 100 KB Publish: the same bytes');

$t->mock('revoke');
$r = unary('Publish', '/event/Big__e', 4, 25000);
is($r->{code}, 'OK', 'a 100 KB Publish after a revoke: OK')
    or diag(substr(encode_json($r), 0, 500));
ok(call_of($r)->{sha256} eq $r->{request_sha256},
   'a 100 KB Publish after a revoke: the same bytes');
is_deeply(results($r), ok_results(4),
          'a 100 KB Publish after a revoke: a PublishResult for each event');
is(scalar(my @x = $t->tokens), 3,
   'a 100 KB Publish after a revoke: one token request');

# a unary call past client_max_body_size (1m) is refused with nginx's 413,
# and nothing reaches the mock

my $calls = @{ pubsub_stats()->{calls} };
$before = $t->token_requests;
$r = unary('Publish', '/event/Big__e', 1, 1024 * 1024 + 1);
isnt($r->{code}, 'OK', 'a Publish past client_max_body_size: refused');
like($r->{details} // '', qr/413/, 'a Publish past client_max_body_size: 413')
    or diag(explain $r);
is(scalar @{ pubsub_stats()->{calls} }, $calls,
   'a Publish past client_max_body_size: nothing reached the mock');
my ($why) = grep { /\[error\].*client intended to send too large/ }
            split /\n/, $t->error_log;
ok($why, 'a Publish past client_max_body_size: the error log says why');

# concurrent calls after a revoke, over both workers: one token request

$t->mock('revoke');
$before = $t->token_requests;
my @fhs = map {
    open(my $fh, '-|', $PY, "$ROOT/t/lib/pubsub_client.py",
         "127.0.0.1:$gport", 'unary', 'Publish', "/event/Concurrent${_}__e",
         @bogus)
        or die "pubsub_client.py: $!";
    $fh;
} 1 .. 8;
my @codes = map { my $fh = $_; my $l = join '', <$fh>; close $fh;
                  (eval { decode_json($l) } || {})->{code} // 'none' } @fhs;
is_deeply(\@codes, [ ('OK') x 8 ], '8 concurrent Publish after a revoke: OK');
is($t->token_requests, $before + 1,
   '8 concurrent Publish after a revoke: one token request');

# a client that cancels (its deadline passed) while its call is held for a
# slow refresh: the refresh goes on, the next call gets its token

$t->mock('delay', 'seconds=1');
$t->mock('revoke');
$before = $t->token_requests;
{
    local $ENV{PUBSUB_TIMEOUT} = '0.3';
    $r = unary('Publish', '/event/Cancelled__e');
}
is($r->{code}, 'DEADLINE_EXCEEDED', 'a call held for a slow refresh: the '
   . 'client gave up');
SfTest::wait_event(10, 'the slow refresh ended',
                   sub { $t->token_requests == $before + 1 });
$t->mock('delay', 'seconds=0.05');
$r = unary('GetTopic', '/event/AfterCancel__e');
is($r->{code}, 'OK', 'the next call: OK');
is($t->token_requests, $before + 1, 'the next call: no more token request');
ok(SfTest::wait_for(5, sub { $t->slurp('access.log')
                             =~ m{"POST /eventbus\.v1\.PubSub/Publish HTTP/2\.0" 499 } }),
   'the cancelled call is logged 499');

# -- other statuses pass untouched ---------------------------------------------

$before = $t->token_requests;
$r = unary('GetSchema', 'other16');
is($r->{code}, 'UNAUTHENTICATED', '16 with another error-code: passed');
is($r->{trailers}{'error-code'}, 'sfdc.platform.eventbus.other',
   '16 with another error-code: its error-code passed');
$r = unary('GetSchema', 'status7');
is($r->{code}, 'PERMISSION_DENIED', 'status 7: passed');
is($r->{trailers}{'error-code'}, $AUTH, 'status 7: its error-code passed');
$r = unary('GetTopic', '/event/Again__e');
is($r->{code}, 'OK', 'the token still works after them');
is($t->token_requests, $before, 'no token request for either');

# -- a stream: the status passes, the retry gets a new token -------------------

# a Subscribe stream of TOPIC from PRESET, the client's STEPS (fetch:N,
# events:N, keepalives:N, close: see pubsub_client.py); its output, a JSON
# line for each FetchRequest sent ({"sent": ...}), each FetchResponse
# ({"events": [...], ...}), then the status ({"code": ...})
sub subscribe {
    my ($topic, $preset, @steps) = @_;
    open(my $fh, '-|', $PY, "$ROOT/t/lib/pubsub_client.py",
         "127.0.0.1:$gport", 'subscribe', $topic, $preset, @steps, @bogus)
        or die "pubsub_client.py: $!";
    return $fh;
}

# the events of the FetchResponses among LINES (JSON), as their ids
sub events_in {
    return map { $_->{event}{id} }
           map { @{ $_->{events} } }
           grep { exists $_->{events} } map { decode_json($_) } @_;
}

publish('/event/Stream__e', 3);
$before = $t->token_requests;
my $fh = subscribe('/event/Stream__e', 'EARLIEST', 'fetch:1000');
my $line;
do { $line = <$fh> } while (defined $line && $line =~ /^\{"sent"/);
ok(events_in($line // '{}'), 'Subscribe: the stream delivers events')
    or diag($line);
my $token_before = $tokens[-1] = ($t->tokens)[-1];
$t->mock('revoke');
my ($status, $events) = (undef, 0);
while (my $l = <$fh>) {
    my $m = decode_json($l);
    if (exists $m->{events} || exists $m->{sent}) { $events++; next }
    $status = $m;
}
close $fh;
is($status->{code}, 'UNAUTHENTICATED',
   'Subscribe revoked mid-stream: the client gets UNAUTHENTICATED');
is($status->{trailers}{'error-code'}, $AUTH,
   'Subscribe revoked mid-stream: with the error-code');

publish('/event/Stream__e', 2);
$fh = subscribe('/event/Stream__e', 'EARLIEST', 'fetch:4', 'events:4',
                'close');
my @lines = <$fh>;
close $fh;
$status = decode_json($lines[-1]);
is($status->{code}, 'OK', "Subscribe's retry: OK");
is_deeply([ events_in(@lines) ], [ map { "ctl-$_" } 0 .. 3 ],
          "Subscribe's retry: the 4 events it asked for, from the earliest");
is($t->token_requests, $before + 1, 'the stream and its retry: one token request');
my ($sub) = grep { $_->{method} eq 'Subscribe' && $_->{status} == 0 }
            @{ pubsub_stats()->{calls} };
is_deeply($sub->{metadata}{accesstoken}, [ ($t->tokens)[-1] ],
          "Subscribe's retry streams with the new token");
isnt(($t->tokens)[-1], $token_before, 'a new token it is');

# a stream started with a dead token gets the trailers-only answer

$before = $t->token_requests;
$t->mock('revoke');
$fh = subscribe('/event/Stream__e', 'EARLIEST', 'fetch:2', 'events:2',
                'close');
@lines = <$fh>;
close $fh;
$status = decode_json($lines[-1]);
is($status->{code}, 'UNAUTHENTICATED',
   'Subscribe with a dead token: UNAUTHENTICATED, trailers-only');
is($status->{trailers}{'error-code'}, $AUTH,
   'Subscribe with a dead token: with the error-code');
is(scalar(grep { /^\{"events"/ } @lines), 0,
   'Subscribe with a dead token: no FetchResponse before it');
$fh = subscribe('/event/Stream__e', 'EARLIEST', 'fetch:2', 'events:2',
                'close');
@lines = <$fh>;
close $fh;
is(decode_json($lines[-1])->{code}, 'OK', 'its retry: OK');
is($t->token_requests, $before + 1, 'its retry: one token request');

# -- a Subscribe's flow control: no more events than its FetchRequests ask --

publish('/event/Flow__e', 10);
$before = $t->token_requests;
$fh = subscribe('/event/Flow__e', 'EARLIEST', 'fetch:3', 'events:3',
                'keepalives:2', 'fetch:2', 'events:2', 'close');
my @msgs = map { decode_json($_) } <$fh>;
close $fh;
$status = pop @msgs;
is($status->{code}, 'OK', 'a Subscribe asking for 3 events, then 2: OK')
    or diag(explain $status);
my @sent = grep { $msgs[$_]{sent} } 0 .. $#msgs;
is_deeply([ map { $msgs[$_]{sent}{num_requested} } @sent ], [ 3, 2 ],
          'a Subscribe asking for 3 events, then 2: two FetchRequests');
my @first = @msgs[ $sent[0] + 1 .. ($sent[1] // @msgs) - 1 ];
my @then = defined $sent[1] ? @msgs[ $sent[1] + 1 .. $#msgs ] : ();
is_deeply([ map { $_->{event}{id} } map { @{ $_->{events} } } @first ],
          [ map { "ctl-$_" } 0 .. 2 ],
          'a FetchRequest for 3: exactly the first 3 of the 10 events');
my ($last) = grep { @{ $first[$_]{events} } } reverse 0 .. $#first;
my @idle = defined $last ? @first[ $last + 1 .. $#first ] : ();
my $third = defined $last ? $first[$last]{events}[-1]{replay_id} : '';
is_deeply([ map { [ scalar @{ $_->{events} }, $_->{pending_num_requested},
                    $_->{latest_replay_id} ] } @idle ],
          [ ([ 0, 0, $third ]) x 2 ],
          'then empty keepalives, nothing pending, the latest replay id the '
          . "third event's, until the next FetchRequest")
    or diag(explain \@first);
is_deeply([ map { $_->{event}{id} } map { @{ $_->{events} } } @then ],
          [ 'ctl-3', 'ctl-4' ],
          'the next FetchRequest for 2: the next 2 events');
my ($flow) = grep { $_->{method} eq 'Subscribe'
                    && ($_->{topic} // '') eq '/event/Flow__e' }
             @{ pubsub_stats()->{calls} };
is_deeply([ @{ $flow // {} }{qw(fetch_requests events_sent status)} ],
          [ [ 3, 2 ], 5, 0 ],
          'the mock got the second FetchRequest while the stream was open, '
          . 'and sent 5 events')
    or diag(explain $flow);
is($t->token_requests, $before, 'a Subscribe asking for 3, then 2: no token '
   . 'request');

# -- unary calls on one connection across revokes: the client sees no error --

{
    my $calls_before = @{ pubsub_stats()->{calls} };
    my $spid = open2(my $sout, my $sin, $PY, "$ROOT/t/lib/pubsub_client.py",
                     "127.0.0.1:$gport", 'session', @bogus);
    $sin->autoflush(1);
    my (@seen, @want, @counts);
    $before = $t->token_requests;
    for my $round (1 .. 3) {
        $t->mock('revoke');
        my $topic = "/event/Round${round}__e";
        for my $call ([ 'GetTopic', $topic ], [ 'Publish', $topic, 3, 50 ],
                      [ 'GetSchema', 'MockSchemaId00001' ]) {
            print $sin "@$call\n";
            my $l = <$sout> // '';
            my $res = eval { decode_json($l) } || { code => "no answer: $l" };
            push @seen, "$call->[0] after revoke $round: $res->{code}",
                        $call->[0] eq 'Publish' ? results($res) : ();
            push @want, "$call->[0] after revoke $round: OK",
                        $call->[0] eq 'Publish' ? ok_results(3) : ();
        }
        push @counts, $t->token_requests - $before;
    }
    close $sin;
    close $sout;
    waitpid $spid, 0;
    is_deeply(\@seen, \@want, 'unary calls on one connection across 3 '
              . 'revokes: no error, each Publish a PublishResult for every '
              . 'event');
    is_deeply(\@counts, [ 1, 2, 3 ],
              'unary calls across 3 revokes: one token request per revoke');
    my @calls = @{ pubsub_stats()->{calls} };
    @calls = @calls[ $calls_before .. $#calls ];
    is_deeply([ map { "$_->{method} $_->{status}" } @calls ],
              [ ('GetTopic 16', 'GetTopic 0', 'Publish 0', 'GetSchema 0') x 3 ],
              'unary calls across 3 revokes: the first after each met '
              . 'UNAUTHENTICATED and was replayed, the others went once');
}

# -- what the mock saw: never the client's own ---------------------------------

my $all = encode_json(pubsub_stats()->{calls});
ok(index($all, $BOGUS) < 0, "the client's accesstoken never reached the mock");
ok(index($all, 'client-own-authorization') < 0,
   "the client's authorization never reached the mock");
ok(index($all, 'client.example.com') < 0 && index($all, '00Dclient') < 0,
   "the client's instanceurl and tenantid never reached the mock");

# -- no token in the debug log -------------------------------------------------

my $log = $t->error_log;
like($log, qr/\[debug\].*grpc header/, 'the debug log has the grpc headers');
# a token starts with the org id and "!": its secret part is looked for
my @found = grep { index($log, substr($_ =~ s/^[^!]*!//r, 0, 12)) >= 0 }
            $t->tokens;
is(scalar @found, 0, 'no access token in the debug log')
    or diag(join "\n", grep { my $l = $_; grep { index($l, substr($_, 0, 12)) >= 0 } @found } split /\n/, $log);

$t->finish;

done_testing;
