#!/usr/bin/perl

# The Pub/Sub API (gRPC) through grpc_pass: a real gRPC client (Debian's
# python3-grpcio, raw bytes, t/lib/pubsub_client.py) over h2c to nginx,
# and a mock Pub/Sub server (t/lib/mock_pubsub.py) that checks the
# accesstoken against the mock Salesforce's live tokens.  The module puts
# accesstoken, instanceurl and tenantid on the upstream call, never the
# client's own (nor its Authorization); a unary call answered
# UNAUTHENTICATED (auth error-code) is replayed after one token request; a
# stream's UNAUTHENTICATED passes to the client, and its retry gets the new
# token after one token request; any other status passes with no token
# request; no token in the debug log; nginx -t's warning about
# grpc_read_timeout.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use Test::More;
use JSON::PP;
use Time::HiRes qw(sleep time);

my $PY = '/usr/bin/python3';    # Debian's, which has python3-grpcio

plan skip_all => 'python3-grpcio is missing (apt-get install python3-grpcio)'
    if system("$PY -c 'import grpc' 2>/dev/null") != 0;

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

sub unary {
    my ($method, $body) = @_;
    open(my $fh, '-|', $PY, "$ROOT/t/lib/pubsub_client.py",
         "127.0.0.1:$gport", 'unary', $method, $body, @bogus)
        or die "pubsub_client.py: $!";
    my $line = join '', <$fh>;
    close $fh;
    my $res = eval { decode_json($line) } || { code => 'no answer: ' . $line };
    $res->{json} = eval { decode_json($res->{response}) }
        if defined $res->{response};
    return $res;
}

my ($instance) = values %{ $t->mock('instance_url') };

# -- the metadata --------------------------------------------------------------

my $r = unary('GetTopic', 'topic=/event/Order__e');
is($r->{code}, 'OK', 'GetTopic: OK') or diag(explain $r);
my @tokens = $t->tokens;
is(scalar @tokens, 1, 'GetTopic: one token request');
is_deeply($r->{json}{metadata}, {
    accesstoken => [ $tokens[-1] ],
    instanceurl => [ $instance ],
    tenantid => [ $ORG_ID ],
    authorization => [],
    'x-seen' => [ "the client's" ],
}, "GetTopic: the mock sees the module's accesstoken, instanceurl and "
   . "tenantid, and no authorization; \$http_accesstoken is the client's "
   . "while grpc_pass builds the call") or diag(explain $r->{json});

# -- a unary call after a revoke: replayed -------------------------------------

my $before;

$t->mock('revoke');
my $body = 'publish-' . ('x' x 100);
$r = unary('Publish', $body);
is($r->{code}, 'OK', 'Publish after a revoke: OK') or diag(explain $r);
is($r->{json}{body_hex}, unpack('H*', $body),
   'Publish after a revoke: the replay sent the same bytes');
@tokens = $t->tokens;
is(scalar @tokens, 2, 'Publish after a revoke: one token request');
is_deeply($r->{json}{metadata}{accesstoken}, [ $tokens[-1] ],
          'Publish after a revoke: the replay has the new token');
my @calls = grep { $_->{method} eq 'Publish' } @{ pubsub_stats()->{calls} };
is_deeply([ map { $_->{status} } @calls ], [ 16, 0 ],
          'Publish after a revoke: UNAUTHENTICATED, then the replay OK');
is(scalar(grep { $_->{sha256} eq $calls[0]{sha256} } @calls), 2,
   'Publish after a revoke: both calls carried the same body');

# a body past client_body_buffer_size (in a temp file) is replayed whole

$body = join '', map { chr(65 + $_ % 26) } 1 .. 100000;
$r = unary('Publish', $body);
is($r->{code}, 'OK', 'a 100 KB Publish: OK')
    or diag(substr(encode_json($r), 0, 500));
ok(($r->{json}{body_hex} // '') eq unpack('H*', $body),
   'a 100 KB Publish: the same bytes');

$t->mock('revoke');
$r = unary('Publish', $body);
is($r->{code}, 'OK', 'a 100 KB Publish after a revoke: OK')
    or diag(substr(encode_json($r), 0, 500));
ok(($r->{json}{body_hex} // '') eq unpack('H*', $body),
   'a 100 KB Publish after a revoke: the same bytes');
is(scalar(my @x = $t->tokens), 3,
   'a 100 KB Publish after a revoke: one token request');

# a unary call past client_max_body_size (1m) is refused with nginx's 413,
# and nothing reaches the mock

my $calls = @{ pubsub_stats()->{calls} };
$before = $t->token_requests;
$r = unary('Publish', 'repeat:' . (1024 * 1024 + 1));
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
         "127.0.0.1:$gport", 'unary', 'Publish', "concurrent-$_", @bogus)
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
    $r = unary('Publish', 'cancelled');
}
is($r->{code}, 'DEADLINE_EXCEEDED', 'a call held for a slow refresh: the '
   . 'client gave up');
SfTest::wait_event(10, 'the slow refresh ended',
                   sub { $t->token_requests == $before + 1 });
$t->mock('delay', 'seconds=0.05');
$r = unary('GetTopic', 'after-cancel');
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
$r = unary('GetTopic', 'again');
is($r->{code}, 'OK', 'the token still works after them');
is($t->token_requests, $before, 'no token request for either');

# -- a stream: the status passes, the retry gets a new token -------------------

sub subscribe {
    my ($first) = @_;
    open(my $fh, '-|', $PY, "$ROOT/t/lib/pubsub_client.py",
         "127.0.0.1:$gport", 'subscribe', $first, @bogus)
        or die "pubsub_client.py: $!";
    return $fh;
}

$before = $t->token_requests;
my $fh = subscribe('replay=-1');
my $line = <$fh>;
like($line // '', qr/"event"/, 'Subscribe: the stream delivers events');
my $token_before = $tokens[-1] = ($t->tokens)[-1];
$t->mock('revoke');
my ($status, $events) = (undef, 0);
while (my $l = <$fh>) {
    my $m = decode_json($l);
    if (exists $m->{event}) { $events++; next }
    $status = $m;
}
close $fh;
is($status->{code}, 'UNAUTHENTICATED',
   'Subscribe revoked mid-stream: the client gets UNAUTHENTICATED');
is($status->{trailers}{'error-code'}, $AUTH,
   'Subscribe revoked mid-stream: with the error-code');

$fh = subscribe('events=4');
my @lines = <$fh>;
close $fh;
$status = decode_json($lines[-1]);
is($status->{code}, 'OK', "Subscribe's retry: OK");
is(scalar(@lines) - 1, 4, "Subscribe's retry: 4 messages (keepalives too)");
is($t->token_requests, $before + 1, 'the stream and its retry: one token request');
my ($sub) = grep { $_->{method} eq 'Subscribe' && $_->{status} == 0 }
            @{ pubsub_stats()->{calls} };
is_deeply($sub->{metadata}{accesstoken}, [ ($t->tokens)[-1] ],
          "Subscribe's retry streams with the new token");
isnt(($t->tokens)[-1], $token_before, 'a new token it is');

# a stream started with a dead token gets the trailers-only answer

$before = $t->token_requests;
$t->mock('revoke');
$fh = subscribe('events=2');
@lines = <$fh>;
close $fh;
$status = decode_json($lines[-1]);
is($status->{code}, 'UNAUTHENTICATED',
   'Subscribe with a dead token: UNAUTHENTICATED, trailers-only');
is($status->{trailers}{'error-code'}, $AUTH,
   'Subscribe with a dead token: with the error-code');
$fh = subscribe('events=2');
@lines = <$fh>;
close $fh;
is(decode_json($lines[-1])->{code}, 'OK', 'its retry: OK');
is($t->token_requests, $before + 1, 'its retry: one token request');

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
