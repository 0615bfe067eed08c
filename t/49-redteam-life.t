#!/usr/bin/perl

# A red-team pass on the life of a request through what issue 18 added:
# gzip envelopes inflated in slices, and the SOAP and Bulk 1.0 shapes of
# the module's 502.
#
# - a gzip envelope in a location with a mirror, after a revoke (held on
#   the SOAP 500, replayed): the mirror gets the client's own compressed
#   body and no Authorization, never the inflated envelope with the token;
# - two gzip envelopes on one keepalive connection;
# - 40 gzip envelopes at once, each inflated to a temp file
#   (client_body_buffer_size 1k): all answered, no temp file left;
# - a held gzip envelope whose refresh then fails (a revoke, then
#   invalid_grant): the SOAP 502 fault, one SOAP call upstream only;
# - no token at all: the SOAP fault to POST, a bodiless 502 to HEAD, with
#   proxy_intercept_errors and error_page 502 too;
# - "sf_oauth $variable" that names no credential: the SOAP fault and the
#   Bulk XML error, sf_oauth_unknown_credential, nothing upstream.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use IO::Compress::Gzip qw(gzip $GzipError);
use IO::Select;
use IO::Socket::INET;
use Test::More;
use Time::HiRes qw(sleep time);

my $ENV_NS = 'http://schemas.xmlsoap.org/soap/envelope/';
my $NS = 'urn:partner.soap.sforce.com';
my $U = '/services/Soap/u/59.0';

my $scale = SfTest::time_scale();

my $t = SfTest->new;
$t->start_mock;

$t->simple_conf(http_extra => <<'EOF', location_extra => <<'EOF2');
    client_body_buffer_size 1k;

    sf_oauth_credential dead {
        zone sf;
        token_url http://127.0.0.1:%%MOCK%%/services/oauth2/token;
        client_id 3MVG9mock.client.id;
        client_secret mock-client-secret-0123456789;
        refresh_token 5Aep861mockRefreshTokenThatIsNotKnown;
        timeout 2s;
    }

    map $http_x_org $sf_cred {
        default "";
        acme crm;
        other nope;
    }
EOF
        }

        location /m/services/ {
            sf_oauth crm;
            mirror /mirror;
            proxy_pass http://127.0.0.1:%%MOCK%%/services/;
        }

        location = /mirror {
            internal;
            proxy_pass http://127.0.0.1:%%MOCK%%/echo/mirror$request_uri;
        }

        location /dead/services/ {
            sf_oauth dead;
            proxy_pass http://127.0.0.1:%%MOCK%%/services/;
        }

        location /deadi/services/ {
            sf_oauth dead;
            proxy_intercept_errors on;
            error_page 502 /oops;
            proxy_pass http://127.0.0.1:%%MOCK%%/services/;
        }

        location = /oops {
            return 502 "operator page\n";
        }

        location /v/services/ {
            sf_oauth $sf_cred;
            proxy_pass http://127.0.0.1:%%MOCK%%/services/;
EOF2

$t->start;

sub envelope {
    my ($query, $pad) = @_;
    return qq{<soapenv:Envelope xmlns:soapenv="$ENV_NS"><soapenv:Header>}
        . qq{<SessionHeader xmlns="$NS"><sessionId>bogus</sessionId>}
        . qq{</SessionHeader></soapenv:Header><soapenv:Body><query xmlns="$NS">}
        . qq{<queryString>$query</queryString>}
        . (defined $pad ? "<!-- $pad -->" : '') . qq{</query></soapenv:Body>}
        . qq{</soapenv:Envelope>};
}

my %SOAP = (timeout => 30 * $scale);

sub fault_502_ok {
    my ($name, $r, $code) = @_;
    is($r->{status}, 502, "$name: 502") or diag($r->{content});
    like($r->{headers}{'content-type'} // '', qr{^text/xml\b},
         "$name: a SOAP fault");
    like($r->{content}, qr{<faultcode>soapenv:Server</faultcode>},
         "$name: faultcode Server");
    like($r->{content}, qr{<faultstring>[^<]*$code}, "$name: $code");
}

my $pad = join ' ', map { sprintf '%064x', $_ * 7919 } 1 .. 400;
my $env = envelope('SELECT Id FROM Account', $pad);
my $gz = SfTest::gz($env);
my $token_re;

# a token first
is($t->soap($U, $env, %SOAP)->{status}, 200, 'warm: 200');

# -- a mirror in the location, the envelope held on a SOAP 500 and replayed --

{
    $t->mock('reset_echo');
    $t->mock('revoke');
    my $before = $t->stats;
    my $r = $t->soap("/m$U", $gz, %SOAP, headers => { 'Content-Encoding' => 'gzip' });
    is($r->{status}, 200, 'mirror: 200 after the replay') or diag($r->{content});
    is($r->{headers}{'x-sf-oauth-status'}, undef, 'mirror: (no add_header here)');

    my $st = $t->stats;
    my @calls = @{ $st->{soap_log} }[ scalar @{ $before->{soap_log} } .. $#{ $st->{soap_log} } ];
    is(scalar @calls, 2, 'mirror: two SOAP calls upstream, the 500 and the replay');
    is($calls[0]{tail_sha256}, $calls[1]{tail_sha256},
       'mirror: the replay sent the same Body');
    is($calls[1]{session_id}, $st->{issued_access_tokens}[-1],
       'mirror: the replay has the new token');

    my $m;
    for (1 .. 100 * $scale) {
        ($m) = grep { $_->{path} =~ m{^/echo/mirror/m/services/Soap} } @{ $t->stats->{echo_log} };
        last if $m;
        sleep 0.05;
    }
    ok($m, 'mirror: the mirror got the request');
    is_deeply($m->{authorization}, [], 'mirror: no Authorization at the mirror');
    is($m->{body_length}, length $gz,
       "mirror: the mirror got the client's compressed body, not the envelope with the token");
}

# -- two gzip envelopes on one keepalive connection ----------------------------

{
    my $before = $t->stats;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $t->port)
        or die "connect: $!";
    my $req = "POST $U HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml\r\n"
              . "Content-Encoding: gzip\r\nContent-Length: " . length($gz)
              . "\r\n\r\n" . $gz;
    print $s $req . $req;
    my $buf = '';
    my $sel = IO::Select->new($s);
    my $end = time + 20 * $scale;
    while (time < $end) {
        last if (() = $buf =~ m{HTTP/1\.1 \d+ }g) >= 2
                && $buf =~ m{</soapenv:Envelope>\s*\z};
        next unless $sel->can_read(0.2);
        my $n = sysread($s, my $chunk, 65536);
        last unless $n;
        $buf .= $chunk;
    }
    close $s;
    my @st = $buf =~ m{HTTP/1\.1 (\d+) }g;
    is("@st", '200 200', 'keepalive: both envelopes answered 200')
        or diag(substr $buf, 0, 3000);
    my $st = $t->stats;
    is(scalar @{ $st->{soap_log} } - scalar @{ $before->{soap_log} }, 2,
       'keepalive: two SOAP calls upstream');
}

# -- 40 at once, each inflated to a temp file ----------------------------------

{
    my $n = 40;
    my $before = $t->stats;
    my (@socks, %buf);
    for my $i (0 .. $n - 1) {
        my $e = SfTest::gz(envelope("SELECT Id FROM Account -- $i", $pad));
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $t->port)
            or die "connect: $!";
        print $s "POST $U HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml\r\n"
                 . "Content-Encoding: gzip\r\nContent-Length: " . length($e)
                 . "\r\nConnection: close\r\n\r\n" . $e;
        push @socks, $s;
        $buf{fileno $s} = '';
    }
    my $sel = IO::Select->new(@socks);
    my $end = time + 60 * $scale;
    while ($sel->count && time < $end) {
        for my $s ($sel->can_read(0.5)) {
            my $got = sysread($s, my $chunk, 65536);
            if (!$got) {
                $sel->remove($s);
                next;
            }
            $buf{fileno $s} .= $chunk;
        }
    }
    my @ok = grep { m{^HTTP/1\.1 200 } } values %buf;
    is(scalar @ok, $n, "$n at once: all 200");
    close $_ for @socks;
    is(scalar @{ $t->stats->{soap_log} } - scalar @{ $before->{soap_log} }, $n,
       "$n at once: $n SOAP calls upstream");
    ok($t->error_log =~ /an inflated SOAP envelope is buffered to a temporary file/,
       "$n at once: the envelopes went through temp files");
    my @left = $t->temp_files;
    is(scalar @left, 0, "$n at once: no temp file left") or diag("@left");
}

# -- a held gzip envelope whose refresh fails ----------------------------------

{
    $t->mock('revoke');
    $t->mode('invalid_grant');
    my $before = $t->stats;
    my $r = $t->soap($U, $gz, %SOAP, headers => { 'Content-Encoding' => 'gzip' });
    fault_502_ok('refresh fails after the SOAP 500', $r, 'sf_oauth_token_unavailable');
    like($r->{content}, qr/credential &quot;crm&quot;|credential "crm"/,
         'refresh fails: the credential is named');
    is(scalar @{ $t->stats->{soap_log} } - scalar @{ $before->{soap_log} }, 1,
       'refresh fails: one SOAP call upstream, no replay');
    $t->mode('normal');
}

# -- no token at all -----------------------------------------------------------

{
    my $before = $t->stats;
    fault_502_ok('no token, POST', $t->soap("/dead$U", $env, %SOAP), 'sf_oauth_token_unavailable');
    fault_502_ok('no token, gzip', $t->soap("/dead$U", $gz, %SOAP, headers => { 'Content-Encoding' => 'gzip' }),
                 'sf_oauth_token_unavailable');

    my $r = $t->http('HEAD', "/dead$U");
    is($r->{status}, 502, 'no token, HEAD: 502');
    is($r->{content} // '', '', 'no token, HEAD: no body');

    fault_502_ok('no token, proxy_intercept_errors and error_page 502',
                 $t->soap("/deadi$U", $env, %SOAP), 'sf_oauth_token_unavailable');

    is($t->stats->{api_requests}, $before->{api_requests},
       'no token: nothing reached the API');
}

# -- a variable that names no credential ----------------------------------------

{
    my $before = $t->stats;
    my $r = $t->soap("/v$U", $env, %SOAP, headers => { 'X-Org' => 'other' });
    fault_502_ok('unknown credential, SOAP', $r, 'sf_oauth_unknown_credential');
    unlike($r->{content}, qr/nope/, 'unknown credential: the name is not echoed');

    $r = $t->http('POST', '/v/services/async/59.0/job', body => '<jobInfo/>',
                  headers => { 'X-Org' => 'other',
                               'Content-Type' => 'application/xml' });
    is($r->{status}, 502, 'unknown credential, Bulk: 502');
    like($r->{content}, qr{<exceptionCode>sf_oauth_unknown_credential</exceptionCode>},
         'unknown credential, Bulk: the Bulk XML error');

    $r = $t->http('HEAD', "/v$U", headers => { 'X-Org' => 'other' });
    is($r->{status}, 502, 'unknown credential, HEAD: 502');
    is($r->{content} // '', '', 'unknown credential, HEAD: no body');

    is($t->stats->{api_requests}, $before->{api_requests},
       'unknown credential: nothing reached the API');
}

my $log = $t->error_log;
unlike($log, qr/exited on signal/, 'no worker crashed');
my @tokens = @{ $t->stats->{issued_access_tokens} };
ok(!(grep { index($log, $_) >= 0 } @tokens), 'no token in the error log');

$t->finish;

done_testing;
