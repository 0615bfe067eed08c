#!/usr/bin/perl

# An envelope's head goes upstream where nginx read it, in the client
# body's own buffers, with only the token written (src/..._envelope.c,
# the plan's parts).  When the proxy tries the next upstream server
# (proxy_next_upstream ... non_idempotent), nginx rewinds every buffer of
# the request it sent to its start: the second server must get the same
# envelope, byte for byte, with the token in it once.  Small heads, heads
# of ~60 KB that span the body's buffers, heads given their plan again
# (the same bytes, remembered), and heads with markup added around the
# token (no SessionHeader: one is written).

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use HTTP::Tiny;
use Test::More;

my $NS = 'http://schemas.xmlsoap.org/soap/envelope/';
my $URN = 'urn:partner.soap.sforce.com';

my $t = SfTest->new;
$t->start_mock;
my $bad = SfTest::free_port();

$t->write_conf("    sf_oauth_zone zone=sf:1m;\n" . $t->credential . <<"EOF");
    upstream sf {
        # every request goes to the first server, which reads the whole
        # body and answers 502; then to the mock
        server 127.0.0.1:$bad max_fails=0;
        server 127.0.0.1:%%MOCK%% backup;
    }

    server {
        listen 127.0.0.1:$bad;

        client_body_buffer_size 256k;
        client_max_body_size 1m;

        location / {
            # the body is read (and kept, for the proxy) before the 502
            proxy_pass http://127.0.0.1:1;
            proxy_connect_timeout 1s;
        }
    }

    server {
        listen 127.0.0.1:%%PORT%% reuseport default_server;

        client_body_buffer_size 256k;
        client_max_body_size 1m;

        location /services/ {
            sf_oauth crm;
            proxy_next_upstream error timeout http_502 non_idempotent;
            add_header X-Upstream \$upstream_addr always;
            proxy_pass http://sf;
        }
    }
EOF
$t->start;

my $ua = HTTP::Tiny->new(keep_alive => 1,
                         timeout => 30 * SfTest::time_scale());

sub post {
    my ($body) = @_;

    return $ua->request('POST',
                        'http://127.0.0.1:' . $t->port . '/services/Soap/u/59.0',
                        { content => $body,
                          headers => { 'Content-Type' => 'text/xml; charset=UTF-8',
                                       SOAPAction => '""' } });
}

# warm: the token
post(qq{<x:Envelope xmlns:x="$NS"><x:Body><warm/></x:Body></x:Envelope>});
my $token = ($t->tokens)[-1];
ok($token, 'a token');

# ~60 KB of Header before the SessionHeader or after it
my $pv = join '', map {
    qq{<u:packageVersions><u:majorNumber>$_</u:majorNumber>}
    . qq{<u:namespace>pkgns$_</u:namespace></u:packageVersions>}
} 1 .. 600;
my $big = qq{<u:PackageVersionHeader>$pv</u:PackageVersionHeader>};
my $tail = qq{<u:query><u:queryString>SELECT Id FROM Account</u:queryString>}
    . qq{</u:query></x:Body></x:Envelope>};
my $open = qq{<x:Envelope xmlns:x="$NS" xmlns:u="$URN"><x:Header>};
my $session = qq{<u:SessionHeader><u:sessionId>client-own</u:sessionId>}
    . qq{</u:SessionHeader>};
my $ours = qq{<u:SessionHeader><u:sessionId>$token</u:sessionId>}
    . qq{</u:SessionHeader>};

my @cases = (
    [ 'a small head',
      $open . $session . qq{</x:Header><x:Body>} . $tail,
      $open . $ours . qq{</x:Header><x:Body>} . $tail ],
    [ 'a 60 KB head, the session first',
      $open . $session . $big . qq{</x:Header><x:Body>} . $tail,
      $open . $ours . $big . qq{</x:Header><x:Body>} . $tail ],
    [ 'a 60 KB head, the session last',
      $open . $big . $session . qq{</x:Header><x:Body>} . $tail,
      $open . $big . $ours . qq{</x:Header><x:Body>} . $tail ],
);

# no SessionHeader: the module writes one, markup around the token
my $added = post($open . $big . qq{</x:Header><x:Body>} . $tail);
is($added->{status}, 200, 'no SessionHeader: 200');
my $seen = $t->stats->{soap_last_envelope} // '';
my ($written) = $seen =~ m{(<[^<>]*SessionHeader[^<>]*>.*</[^<>]*SessionHeader>)};
ok($written && $written =~ /\Q$token\E/, 'no SessionHeader: one is written, '
   . 'with the token') or diag(substr($seen, -600));
push @cases, [ 'a 60 KB head, no SessionHeader',
               $open . $big . qq{</x:Header><x:Body>} . $tail,
               $open . $big . $written . qq{</x:Header><x:Body>} . $tail ]
    if $written;

for my $c (@cases) {
    my ($name, $body, $want) = @$c;

    # twice: parsed, then its plan given again from the remembered head
    for my $pass ('parsed', 'remembered') {
        my $r = post($body);
        is($r->{status}, 200, "$name ($pass): 200");
        like($r->{headers}{'x-upstream'} // '',
             qr/^127\.0\.0\.1:$bad, 127\.0\.0\.1:\d+$/,
             "$name ($pass): the first server, then the mock");
        my $got = $t->stats->{soap_last_envelope} // '';
        ok($got eq $want, "$name ($pass): the mock got the envelope with the "
           . 'token, byte for byte, after the rewind')
            or diag('got ' . length($got) . ' bytes, want ' . length($want)
                    . ': ' . substr($got, 0, 300));
    }
}

$t->finish;
done_testing;
