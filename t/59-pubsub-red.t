#!/usr/bin/perl

# The Pub/Sub API's credentials where they must not go (a red team of
# t/59-pubsub.t): a client's accesstoken, instanceurl and tenantid never
# reach an upstream of an sf_oauth location, gRPC or not.  A location whose
# grpc_pass has a variable is not a Pub/Sub location (docs/reference.md):
# it gets Authorization, as REST does, and the client's metadata must not
# go on with it.  An HTTP/1.1 gRPC client that sends accesstoken twice, in
# odd case, gets one accesstoken upstream, the module's.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
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
my $mport = SfTest::free_port();     # the mock Pub/Sub
my $cport = SfTest::free_port();     # its control port

my $pid = fork() // die "fork: $!";
if ($pid == 0) {
    open STDOUT, '>>', $t->dir . '/pubsub.log';
    open STDERR, '>&', \*STDOUT;
    exec $PY, "$ROOT/t/lib/mock_pubsub.py", '--port', $mport,
         '--control-port', $cport, '--sf-url', $t->mock_url;
    die "exec: $!";
}
push @{ $t->{helper_pids} }, $pid;
SfTest::wait_port($mport, 'the mock Pub/Sub', 400, $pid);
SfTest::wait_port($cport, "the mock Pub/Sub's control port", 400, $pid);

sub last_call {
    my $res = HTTP::Tiny->new(timeout => 10)
        ->get("http://127.0.0.1:$cport/stats");
    return decode_json($res->{content})->{calls}[-1] // {};
}

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
        }
    }

    server {
        listen 127.0.0.1:$vport http2 reuseport;

        location /eventbus.v1.PubSub/ {
            set \$backend 127.0.0.1:$mport;
            sf_oauth crm;
            grpc_pass grpc://\$backend;
        }
    }

    server {
        listen 127.0.0.1:$hport reuseport;

        location /eventbus.v1.PubSub/ {
            sf_oauth crm;
            grpc_pass grpc://127.0.0.1:$mport;
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

# -- HTTP/1.1, accesstoken twice in odd case -------------------------------

my $payload = 'http11';
my $res = HTTP::Tiny->new(timeout => 10)->post(
    "http://127.0.0.1:$hport/eventbus.v1.PubSub/GetTopic", {
        headers => {
            'Content-Type' => 'application/grpc',
            'TE' => 'trailers',
            'AccessToken' => [ $BOGUS, "$BOGUS-2" ],
            'ACCESSTOKEN' => "$BOGUS-3",
            'InstanceUrl' => 'https://client.example.com',
        },
        content => "\0" . pack('N', length $payload) . $payload,
    });
my $answer = eval { decode_json(substr($res->{content} // '', 5)) } // {};
is_deeply($answer->{metadata}{accesstoken}, [ $tokens[-1] ],
          "HTTP/1.1, accesstoken three times in odd case: the upstream has "
          . "the module's only") or diag(explain [ $res, $answer ]);
is_deeply($answer->{metadata}{instanceurl}, [ $instance ],
          'HTTP/1.1, InstanceUrl: the upstream has the module\'s')
    or diag(explain $answer);

# -- the access log reads the client's own ----------------------------------

$r = unary($gport, 'GetTopic', 'logged');
is($r->{code}, 'OK', 'GetTopic: OK') or diag(explain $r);
ok(SfTest::wait_for(5, sub { $t->slurp('meta.log') =~ /GetTopic/ }),
   'the access log line is written');
like($t->slurp('meta.log'),
     qr{^/eventbus\.v1\.PubSub/GetTopic at=\Q$BOGUS\E iu=https://client\.example\.com ti=00Dclient$}m,
     "\$http_accesstoken, \$http_instanceurl, \$http_tenantid in the access "
     . "log: the client's own");

$t->no_token_in([], [ $t->tokens ]);
unlike($t->error_log, qr/\[alert\]/, 'no [alert]');

$t->finish;
done_testing();
