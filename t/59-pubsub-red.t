#!/usr/bin/perl

# The Pub/Sub API's credentials where they must not go (a red team of
# t/59-pubsub.t): a client's accesstoken, instanceurl and tenantid never
# reach an upstream of an sf_oauth location, gRPC or not.  A location whose
# grpc_pass has a variable is not a Pub/Sub location (docs/reference.md):
# it gets Authorization, as REST does, and the client's metadata must not
# go on with it.  An HTTP/1.1 gRPC client that sends accesstoken twice, in
# odd case, gets one accesstoken upstream, the module's; its chunked
# Publish is replayed after a revoke with the same bytes.  A mirror and an
# error_page fallback get the client's own accesstoken, never the token; a
# call held for a slow refresh goes on over a reload; the access log's
# $http_accesstoken, $http_instanceurl, $http_tenantid are the client's; a
# Pub/Sub API gone mid-stream ends the stream with an error, and is not
# taken for a dead token.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use Digest::SHA qw(sha256_hex);
use Test::More;
use JSON::PP;
use HTTP::Tiny;

my $PY = '/usr/bin/python3';    # Debian's, which has python3-grpcio

plan skip_all => 'python3-grpcio is missing (apt-get install python3-grpcio)'
    if system("$PY -c 'import grpc' 2>/dev/null") != 0;

my $ROOT = $SfTest::ROOT;
my $BOGUS = 'client-own-accesstoken-0123456789';

my $t = SfTest->new;
$t->start_mock;

my $gport = SfTest::free_port();     # h2c, grpc_pass with a URL
my $vport = SfTest::free_port();     # h2c, grpc_pass with a variable
my $hport = SfTest::free_port();     # HTTP/1.1, grpc_pass with a URL
my $xport = SfTest::free_port();     # h2c, a mirror
my $eport = SfTest::free_port();     # h2c, error_page to a fallback
my $dead = SfTest::free_port();      # nothing listens
my ($mport, $cport, $mpid) = $t->start_mock_pubsub;   # the mock Pub/Sub

sub pubsub_calls {
    my $res = HTTP::Tiny->new(timeout => 10)
        ->get("http://127.0.0.1:$cport/stats");
    return decode_json($res->{content})->{calls} // [];
}
sub last_call { pubsub_calls()->[-1] // {} }

$t->write_conf("    sf_oauth_zone zone=sf:1m;\n" . $t->credential . <<"EOF");
    log_format meta '\$request_uri at=\$http_accesstoken '
                    'iu=\$http_instanceurl ti=\$http_tenantid';

    server {
        listen 127.0.0.1:%%PORT%% reuseport default_server;

        location = /sf_oauth_info {
            sf_oauth_info;
        }
    }

    server {
        listen 127.0.0.1:$gport http2 reuseport;
        access_log %%DIR%%/meta.log meta;

        location /eventbus.v1.PubSub/ {
            sf_oauth crm;
            grpc_pass grpc://127.0.0.1:$mport;
            # a variable's name in another case is the same variable
            grpc_set_header X-Seen "\$http_ACCESSTOKEN \$http_AccessToken";
        }
    }

    server {
        listen 127.0.0.1:$vport http2 reuseport;

        location /eventbus.v1.PubSub/ {
            set \$backend 127.0.0.1:$mport;
            sf_oauth crm;
            grpc_pass grpc://\$backend;
            grpc_set_header X-Seen \$http_accesstoken;
        }
    }

    server {
        listen 127.0.0.1:$hport reuseport;

        location /eventbus.v1.PubSub/ {
            sf_oauth crm;
            grpc_pass grpc://127.0.0.1:$mport;
        }
    }
    server {
        listen 127.0.0.1:$xport http2 reuseport;

        location /eventbus.v1.PubSub/ {
            sf_oauth crm;
            mirror /mirror;
            grpc_pass grpc://127.0.0.1:$mport;
        }

        location = /mirror {
            internal;
            proxy_pass http://127.0.0.1:%%MOCK%%/echo/mirror;
        }
    }

    server {
        listen 127.0.0.1:$eport http2 reuseport;

        location /eventbus.v1.PubSub/ {
            sf_oauth crm;
            grpc_pass grpc://127.0.0.1:$dead;
            error_page 502 = \@fallback;
        }

        location \@fallback {
            rewrite ^ /echo/fallback break;
            proxy_pass http://127.0.0.1:%%MOCK%%;
        }
    }
EOF

$t->start;

my @bogus = ("accesstoken=$BOGUS", 'instanceurl=https://client.example.com',
             'tenantid=00Dclient');

sub unary {
    my ($port, $method, $body) = @_;
    open(my $fh, '-|', $PY, "$ROOT/t/lib/pubsub_client.py",
         "127.0.0.1:$port", 'unary', $method, $body, @bogus)
        or die "pubsub_client.py: $!";
    my $line = join '', <$fh>;
    close $fh;
    return eval { decode_json($line) } || { code => 'no answer: ' . $line };
}

my ($instance) = values %{ $t->mock('instance_url') };

# -- grpc_pass with a variable: not Pub/Sub, and no client metadata --------

my $r = unary($vport, 'GetTopic', 'variable');
my $md = last_call()->{metadata} // {};
my @tokens = $t->tokens;
is(scalar @tokens, 1, 'grpc_pass with a variable: one token request');
is_deeply([ @{ $md->{authorization} // [] } ], [ "Bearer $tokens[-1]" ],
          'grpc_pass with a variable: the token in Authorization, as REST')
    or diag(explain $md);
is_deeply([ @{ $md->{accesstoken} // [] }, @{ $md->{instanceurl} // [] },
            @{ $md->{tenantid} // [] } ], [],
          "grpc_pass with a variable: none of the client's accesstoken, "
          . 'instanceurl, tenantid reaches the upstream')
    or diag(explain $md);
is_deeply($md->{'x-seen'}, [ $BOGUS ],
          "grpc_pass with a variable: \$http_accesstoken is the client's own "
          . 'while grpc_pass builds the call') or diag(explain $md);

# -- HTTP/1.1, accesstoken twice in odd case -------------------------------

# a TopicRequest for the topic "http11"
my $payload = pb(1, 'http11');
my $res = HTTP::Tiny->new(timeout => 10)->post(
    "http://127.0.0.1:$hport/eventbus.v1.PubSub/GetTopic", {
        headers => {
            'Content-Type' => 'application/grpc',
            'TE' => 'trailers',
            # three lines "AccessToken: ..." (HTTP::Tiny folds names that
            # differ in case only into one, so one name, three values)
            'AccessToken' => [ $BOGUS, "$BOGUS-2", "$BOGUS-3" ],
            'InstanceUrl' => 'https://client.example.com',
        },
        content => "\0" . pack('N', length $payload) . $payload,
    });
my $seen11 = last_call();
is($seen11->{sha256}, sha256_hex($payload),
   'HTTP/1.1: the mock got the call') or diag(explain [ $res, $seen11 ]);
is_deeply($seen11->{metadata}{accesstoken}, [ $tokens[-1] ],
          "HTTP/1.1, accesstoken three times in odd case: the upstream has "
          . "the module's only") or diag(explain [ $res, $seen11 ]);
is_deeply($seen11->{metadata}{instanceurl}, [ $instance ],
          'HTTP/1.1, InstanceUrl: the upstream has the module\'s')
    or diag(explain $seen11);

# -- HTTP/1.1, chunked, after a revoke: the replay sends the same bytes ---

# a protobuf field: NUMBER, length-delimited VALUE
sub pb {
    my ($n, $v) = @_;
    my ($len, $varint) = (length $v, '');
    while ($len > 127) { $varint .= chr(0x80 | ($len & 0x7f)); $len >>= 7 }
    return chr(($n << 3) | 2) . $varint . chr($len) . $v;
}

sub http11_chunked {
    my ($payload, $slice) = @_;
    my $res = $t->chunked("POST /eventbus.v1.PubSub/Publish HTTP/1.1\r\n"
                          . "Host: x\r\nContent-Type: application/grpc\r\n"
                          . "TE: trailers\r\n",
                          "\0" . pack('N', length $payload) . $payload,
                          $slice, port => $hport);
    return $res;
}

# a PublishRequest of one ProducerEvent with 3,000 bytes of payload
my $payload3 = pb(1, 'chunked')
    . pb(2, pb(1, 'evt-0') . pb(2, 'schema-1')
            . pb(3, join '', map { chr(97 + $_ % 26) } 1 .. 3000));
my $before = $t->token_requests;
$t->mock('revoke');
my $raw3 = http11_chunked($payload3, 700);
my @pub = grep { ($_->{method} // '') eq 'Publish'
                 && $_->{sha256} eq sha256_hex($payload3) }
          @{ pubsub_calls() };
is_deeply([ map { "$_->{status} $_->{sha256}" } @pub ],
          [ map { "$_ " . sha256_hex($payload3) } 16, 0 ],
          'HTTP/1.1 chunked Publish after a revoke: refused, then the replay '
          . 'sent the same bytes') or diag(explain [ \@pub, substr($raw3, 0, 600) ]);
is($t->token_requests, $before + 1,
   'HTTP/1.1 chunked Publish after a revoke: one token request');

# -- a mirror, an error_page fallback: the client's own, never the token ---

sub echo_of {
    my ($path) = @_;
    return (grep { $_->{path} =~ m{^/echo/$path} }
            @{ $t->mock('stats')->{echo_log} })[-1];
}

$r = unary($xport, 'Publish', 'mirrored');
is($r->{code}, 'OK', 'a mirrored Publish: OK');
ok(SfTest::wait_for(5, sub { echo_of('mirror') }), 'the mirror was sent');
is_deeply((echo_of('mirror') // {})->{accesstoken}, [ $BOGUS ],
          "the mirror gets the client's own accesstoken, not the token")
    or diag(explain echo_of('mirror'));

$r = unary($eport, 'Publish', 'fallback');
ok(SfTest::wait_for(5, sub { echo_of('fallback') }),
   'the error_page fallback was sent');
my $fb = echo_of('fallback') // {};
is_deeply([ @{ $fb->{accesstoken} // [] }, @{ $fb->{authorization} // [] } ],
          [ $BOGUS ],
          "the fallback gets the client's own accesstoken, and no token")
    or diag(explain $fb);

# -- a reload while a unary call is held for a slow refresh ----------------

$t->mock('delay', 'seconds=1');
$t->mock('revoke');
$before = $t->token_requests;
open(my $bg, '-|', $PY, "$ROOT/t/lib/pubsub_client.py", "127.0.0.1:$gport",
     'unary', 'Publish', 'held-over-reload', @bogus)
    or die "pubsub_client.py: $!";
ok(SfTest::wait_for(10, sub { my $c = last_call();
                              ($c->{method} // '') eq 'Publish'
                              && ($c->{status} // 0) == 16 }),
   'a Publish after a revoke is answered UNAUTHENTICATED, and held');
$t->reload;
my $held = eval { decode_json(join '', <$bg>) } // {};
close $bg;
is($held->{code}, 'OK', 'the call held over a reload: OK')
    or diag(explain $held);
is($t->token_requests, $before + 1, 'the call held over a reload: one token '
   . 'request');
$t->mock('delay', 'seconds=0.05');

# -- the access log reads the client's own ----------------------------------

$r = unary($gport, 'GetTopic', 'logged');
is($r->{code}, 'OK', 'GetTopic: OK') or diag(explain $r);
is_deeply(last_call()->{metadata}{'x-seen'}, [ "$BOGUS $BOGUS" ],
          "\$http_ACCESSTOKEN, \$http_AccessToken while grpc_pass builds the "
          . "call: the client's own");
ok(SfTest::wait_for(5, sub { $t->slurp('meta.log') =~ /GetTopic/ }),
   'the access log line is written');
like($t->slurp('meta.log'),
     qr{^/eventbus\.v1\.PubSub/GetTopic at=\Q$BOGUS\E iu=https://client\.example\.com ti=00Dclient$}m,
     "\$http_accesstoken, \$http_instanceurl, \$http_tenantid in the access "
     . "log: the client's own");

# -- a Pub/Sub API that fails mid-stream ----------------------------------

$before = $t->token_requests;
HTTP::Tiny->new(timeout => 10)
    ->post("http://127.0.0.1:$cport/publish?topic=midstream&count=3");
open(my $sub, '-|', $PY, "$ROOT/t/lib/pubsub_client.py", "127.0.0.1:$gport",
     'subscribe', 'midstream', 'EARLIEST', 'fetch:100', 'events:1000',
     @bogus)
    or die "pubsub_client.py: $!";
my $delivered;
while (my $l = <$sub>) {
    my $m = eval { decode_json($l) } // {};
    last if $delivered = @{ $m->{events} // [] };
}
ok($delivered, 'Subscribe: the stream delivers events');
kill 'KILL', $mpid;
waitpid $mpid, 0;
my $end;
while (my $l = <$sub>) {
    my $m = eval { decode_json($l) } // {};
    $end = $m if exists $m->{code};
}
close $sub;
ok($end && $end->{code} ne 'OK',
   'the Pub/Sub API gone mid-stream: the stream ends with an error status '
   . '(' . ($end->{code} // 'none') . ')');
$r = unary($gport, 'GetTopic', 'gone');
is($r->{code}, 'UNAVAILABLE', 'the next call: UNAVAILABLE');
is($t->token_requests, $before, 'no token request: an upstream gone is '
   . 'not a dead token');

$t->no_token_in([], [ $t->tokens ]);
unlike($t->error_log, qr/\[alert\]/, 'no [alert]');

$t->finish;
done_testing();
