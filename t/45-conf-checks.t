#!/usr/bin/perl

# What nginx -t refuses because it would go wrong later, and "fix it and
# reload" for the secrets:
#
#   - two zones with one state file (each write would wipe the other's
#     records), found after resolving the paths: relative, "./", a
#     symbolic link to the directory;
#   - two credentials with one refresh token and client_id (under rotation
#     each one's refresh revokes the other's), named without the token;
#     one credential serving several locations and servers is fine;
#   - an RSA private_key under 2,048 bits, named with its size;
#   - a wrong client_secret (inline or client_secret_file) or private_key
#     holds the credential (502, retry_in 300); fixing it and reloading
#     ends the hold at once: the next request makes a token request and
#     gets 200.  A changed secret or key keeps a valid token.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use Test::More;
use IO::Socket::INET;
use Time::HiRes qw(sleep);

my $USER = 'integration@acme.com';

my $t = SfTest->new;
my $dir = $t->dir;
$t->start_mock;

for my $bits (512, 1024, 2048) {
    SfTest::openssl("genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:$bits",
            "-out $dir/rsa$bits.key");
}
SfTest::openssl('genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048',
        "-out $dir/other.key");
SfTest::openssl("pkey -in $dir/rsa2048.key -pubout -out $dir/rsa2048.pub");
chmod 0600, glob "$dir/*.key";

$t->write_file('state.key', ('c3' x 32) . "\n");
$t->write_file('rt.secret', "$SfTest::REFRESH_TOKEN\n");

# -- nginx -t -----------------------------------------------------------------

{
    my $c = SfTest->new;
    my $cd = $c->dir;

    mkdir "$cd/st";
    symlink "$cd/st", "$cd/st-link" or die "symlink: $!";

    # a credential block: a refresh grant against the mock by default
    my $cred = sub {
        my ($name, %opt) = @_;
        my %line = (
            zone => 'sf',
            token_url => $c->mock_url . '/services/oauth2/token',
            client_id => $SfTest::CLIENT_ID,
            client_secret => $SfTest::CLIENT_SECRET,
            refresh_token => $SfTest::REFRESH_TOKEN,
            %opt,
        );
        my $b = "    sf_oauth_credential $name {\n";
        for my $k (qw(zone grant token_url client_id client_secret
                      refresh_token refresh_token_file username private_key))
        {
            $b .= "        $k $line{$k};\n" if defined $line{$k};
        }
        return $b . "    }\n";
    };

    my $server = <<'EOF';
    server {
        listen 127.0.0.1:%%PORT%%;
        location / {
            sf_oauth crm;
            proxy_pass http://127.0.0.1:%%MOCK%%;
        }
    }
EOF

    my $check = sub {
        my ($name, @args) = @_;
        $c->conf_check("nginx -t: $name", @args);
    };

    # two zones, one state file

    my $zones = sub {
        my ($a, $b) = @_;
        return "    sf_oauth_zone zone=one:1m state=$a key=$dir/state.key;\n"
             . "    sf_oauth_zone zone=two:1m state=$b key=$dir/state.key;\n"
             . $cred->('crm', zone => 'one') . $cred->('crm2', zone => 'two',
                          refresh_token => 'another-refresh-token')
             . $server;
    };

    $check->('two zones, one state file',
             $zones->("$cd/st/sf.state", "$cd/st/sf.state"),
             [ qr/\[emerg\]/, qr/sf_oauth_zone "two"/, qr/sf_oauth_zone "one"/,
               qr/\Q$cd\E\/st\/sf\.state/ ]);
    $check->('two zones, one state file: a relative path',
             $zones->("$cd/st/sf.state", 'st/sf.state'),
             [ qr/sf_oauth_zone "two"/, qr/sf_oauth_zone "one"/ ]);
    $check->('two zones, one state file: "./" in the path',
             $zones->("$cd/st/sf.state", "$cd/st/./sf.state"),
             [ qr/sf_oauth_zone "two"/, qr/sf_oauth_zone "one"/ ]);
    $check->('two zones, one state file: through a symbolic link',
             $zones->("$cd/st/sf.state", "$cd/st-link/sf.state"),
             [ qr/sf_oauth_zone "two"/, qr/sf_oauth_zone "one"/ ]);
    $check->('two zones, two state files',
             $zones->("$cd/st/one.state", "$cd/st/two.state"), undef);

    # two credentials, one refresh token

    my $two = sub {
        my (%b) = @_;
        return "    sf_oauth_zone zone=sf:1m;\n"
             . "    sf_oauth_zone zone=other:1m;\n"
             . $cred->('crm') . $cred->('crm2', %b) . $server;
    };

    $check->('two credentials, one refresh token', $two->(),
             [ qr/\[emerg\]/, qr/sf_oauth_credential "crm2"/,
               qr/sf_oauth_credential "crm"/, qr/refresh token/ ],
             [ $SfTest::REFRESH_TOKEN, $SfTest::CLIENT_SECRET ]);
    $check->('two credentials, one refresh token: one from a file',
             $two->(refresh_token => undef,
                    refresh_token_file => "$dir/rt.secret"),
             [ qr/sf_oauth_credential "crm2"/, qr/sf_oauth_credential "crm"/ ],
             [ $SfTest::REFRESH_TOKEN ]);
    $check->('two credentials, one refresh token: in two zones',
             $two->(zone => 'other'),
             [ qr/sf_oauth_credential "crm2"/, qr/sf_oauth_credential "crm"/ ],
             [ $SfTest::REFRESH_TOKEN ]);
    $check->('two credentials, one refresh token: another login host',
             $two->(token_url => 'https://acme.my.salesforce.com'
                                 . '/services/oauth2/token'),
             [ qr/sf_oauth_credential "crm2"/, qr/sf_oauth_credential "crm"/ ],
             [ $SfTest::REFRESH_TOKEN ]);
    $check->('two credentials, two refresh tokens',
             $two->(refresh_token => 'another-refresh-token'), undef);
    $check->('two credentials, one refresh token of two apps',
             $two->(client_id => '3MVG9another.app'), undef);

    # one credential, several locations and servers

    $check->('one credential, several locations and servers',
             "    sf_oauth_zone zone=sf:1m;\n" . $cred->('crm') . <<'EOF',
    server {
        listen 127.0.0.1:%%PORT%%;
        location /services/ {
            sf_oauth crm;
            proxy_pass http://127.0.0.1:%%MOCK%%;
        }
        location /other/ {
            sf_oauth crm;
            proxy_pass http://127.0.0.1:%%MOCK%%/services/;
        }
    }
    server {
        listen 127.0.0.1:%%PORT%%;
        server_name second;
        sf_oauth crm;
        location / {
            proxy_pass http://127.0.0.1:%%MOCK%%;
        }
        location /x/ {
            sf_oauth crm;
            proxy_pass http://127.0.0.1:%%MOCK%%/services/;
        }
    }
EOF
             undef);

    # the size of an RSA key

    my $jwt = sub {
        my ($key) = @_;
        return "    sf_oauth_zone zone=sf:1m;\n"
             . $cred->('crm', grant => 'jwt_bearer', client_secret => undef,
                       refresh_token => undef, username => $USER,
                       private_key => $key)
             . $server;
    };

    for my $bits (512, 1024) {
        $check->("a $bits-bit RSA key", $jwt->("$dir/rsa$bits.key"),
                 [ qr/\[emerg\]/, qr/\Q$dir\E\/rsa$bits\.key/,
                   qr/\b$bits bits/, qr/2048/ ]);
    }
    $check->('a 2048-bit RSA key', $jwt->("$dir/rsa2048.key"), undef);

    # an empty value in an sf_oauth_redis block, refused as in a credential

    for my $k (qw(server prefix)) {
        my $block = "    sf_oauth_redis fleet {\n"
                  . ($k eq 'server' ? '' : "        server 127.0.0.1:6379;\n")
                  . "        $k \"\";\n"
                  . "    }\n";
        $check->("an empty \"$k\" in sf_oauth_redis",
                 $block . "    sf_oauth_zone zone=sf:1m;\n" . $cred->('crm')
                 . $server,
                 [ qr/\[emerg\]/,
                   qr/empty "$k" in sf_oauth_redis "fleet"/ ]);
    }

    # worker_shutdown_timeout below a credential's timeout (10 s unless
    # set): a reload's old worker outlives it while a token request runs

    for my $case ([ '1s', 'crm', 10000 ], [ '9s', 'crm', 10000 ],
                  [ '10s' ], [ '2m' ], [ undef ])
    {
        my ($wst, $name, $ms) = @$case;

        $c->write_conf("    sf_oauth_zone zone=sf:1m;\n" . $cred->('crm')
                       . $server);
        $c->edit_conf(sub { s/^events/worker_shutdown_timeout $wst;\n\nevents/m })
            if defined $wst;

        my ($rc, $out) = $c->test_conf;
        my $what = 'worker_shutdown_timeout ' . ($wst // 'unset');

        is($rc, 0, "nginx -t: $what: accepted") or diag($out);

        if ($name) {
            like($out, qr/\[warn\].*sf_oauth: credential "$name": worker_shutdown_timeout \d+ms is shorter than its timeout ${ms}ms: an old worker that runs a token request for it then lets the request end, up to ${ms}ms, so that a rotated refresh token is not lost; set worker_shutdown_timeout to ${ms}ms or more/,
                 "nginx -t: $what: warned, with both values");

        } else {
            unlike($out, qr/worker_shutdown_timeout/,
                   "nginx -t: $what: no warning");
        }
    }

    $c->finish;
}

# -- fix it and reload ----------------------------------------------------------

sub info { $t->cred_info('crm') // {} }

sub held {
    my ($name) = @_;

    my $r = $t->get('/services/data/v59.0/sobjects');
    is($r->{status}, 502, "$name: 502") or diag($r->{content});
    my $i = info();
    ok($i->{retry_in} > 250, "$name: held ($i->{retry_in} s)");

    my $n = $t->token_requests;
    is($t->get('/services/data/v59.0/limits')->{status}, 502,
       "$name: the next request: 502 too");
    is($t->token_requests, $n, "$name: without a token request");
}

sub fixed {
    my ($name) = @_;

    my $n = $t->token_requests;
    my $r = $t->get('/services/data/v59.0/sobjects');
    is($r->{status}, 200, "$name, fixed and reloaded: 200 at once")
        or diag($r->{content});
    is($t->token_requests, $n + 1, "$name, fixed and reloaded: a token request");
    is(info()->{retry_in}, 0, "$name, fixed and reloaded: no hold");
    return $r;
}

# a change of the secret that keeps a valid token: no token request
sub kept {
    my ($name, $token) = @_;

    my $n = $t->token_requests;
    my $r = $t->get('/services/data/v59.0/sobjects');
    is($r->{status}, 200, "$name: 200");
    is($r->{headers}{'x-sf-oauth-status'}, 'HIT', "$name: HIT");
    is($r->{json}{authorization}, $token, "$name: the same token");
    is($t->token_requests, $n, "$name: no token request");
}

# inline client_secret

$t->simple_conf(client_secret => 'a-wrong-client-secret');
$t->start;
held('a wrong client_secret');
like(info()->{last_error} // '', qr/invalid_client/,
     'a wrong client_secret: invalid_client');

$t->simple_conf;
$t->reload;
my $r = fixed('a wrong client_secret');
my $token = $r->{json}{authorization};

$t->simple_conf(client_secret => 'a-new-client-secret');
$t->reload;
kept('a valid token, the client_secret changed', $token);

# a token request that a worker of the old configuration makes with the
# old secret, and that fails after the reload, backs off but does not bring
# the hold back

$t->stop;
$t->mock('reset');
$t->simple_conf(client_secret => 'a-wrong-client-secret');
$t->mode('down');
$t->start;
is($t->get('/services/data/v59.0/down')->{status}, 502, 'Salesforce down: 502');
for (1 .. 100) {
    last if (info()->{retry_in} // 1) == 0;
    sleep 0.05;
}
$t->mode('slow');
my $n = $t->token_requests;
my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $t->port)
    or die "connect: $!";
print $sock "GET /services/data/v59.0/slow HTTP/1.1\r\nHost: localhost\r\n"
            . "Connection: close\r\n\r\n";
for (1 .. 100) {
    last if $t->token_requests > $n;
    sleep 0.05;
}
is($t->token_requests, $n + 1, 'an old worker: a token request with the old secret');
$t->mode('normal');

my $mark = $t->log_mark;
$t->simple_conf;
$t->reload;
my $answer = do { local $/; <$sock> } // '';
like($answer, qr{^HTTP/1\.1 502}, 'an old worker: 502 with the old secret');
my @lines = $t->log_lines(qr/changed its client secret|invalid_client/, $mark);
like($lines[0] // '', qr/changed its client secret/,
     'an old worker: its failure came after the reload')
    or diag(join "\n", @lines);

my ($status, $max) = (0, 0);
for (1 .. 60) {
    my $i = info();
    $max = $i->{retry_in} if ($i->{retry_in} // 0) > $max;
    $status = $t->get('/services/data/v59.0/after')->{status};
    last if $status == 200;
    sleep 0.1;
}
is($status, 200, 'an old worker failed after the reload: 200 soon');
ok($max <= 60, "an old worker failed after the reload: no hold (retry_in $max)");

$t->stop;

# client_secret_file

$t->mock('reset');
$t->write_file('secret', "a-wrong-client-secret\n");
$t->simple_conf(client_secret => undef, client_secret_file => "$dir/secret");
$t->start;
held('a wrong client_secret_file');

$t->write_file('secret', "$SfTest::CLIENT_SECRET\n");
$t->reload;
fixed('a wrong client_secret_file');

$t->stop;

# private_key: the file replaced, the path the same

$t->mock('reset');
$t->mock('jwt_key', "path=$dir/rsa2048.pub");
$t->write_file('jwt.key', $t->slurp('other.key'));

$t->simple_conf(client_secret => undef, refresh_token => undef);
my $conf = $t->slurp('nginx.conf');
$conf =~ s{(sf_oauth_credential crm \{\n)}
          {$1        grant jwt_bearer;\n        username $USER;\n        private_key $dir/jwt.key;\n};
open my $fh, '>', "$dir/nginx.conf" or die;
print $fh $conf;
close $fh;

$t->start;
held('a wrong private_key');
like(info()->{last_error} // '', qr/invalid assertion/,
     'a wrong private_key: invalid assertion');

$t->write_file('jwt.key', $t->slurp('rsa2048.key'));
$t->reload;
$r = fixed('a wrong private_key');
$token = $r->{json}{authorization};
is($t->mock('stats')->{grants}{jwt_bearer}, 2, 'private_key: two JWT grants');

$t->write_file('jwt.key', $t->slurp('other.key'));
$t->reload;
kept('a valid token, the private_key changed', $token);

like($t->error_log, qr/credential "crm" changed its client secret or private key/,
     'the change is logged');
unlike($t->error_log, qr/\Q$_\E/, 'no secret in the log')
    for $SfTest::CLIENT_SECRET, 'a-wrong-client-secret', 'a-new-client-secret';

$t->finish;

done_testing;
