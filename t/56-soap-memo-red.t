#!/usr/bin/perl

# The remembered heads (src/..._envelope.c) attacked through the ways a
# body reaches the parse (a red team of t/56-soap-memo.t): a head parsed
# from one body in memory, then given again gzip-encoded, in a temp file
# (client_body_buffer_size 1k), chunked in slices from a slow client, and
# from an HTTP/2 client; after a revoke (the plan applied again to the
# replay); to two Apex class endpoints, whose namespace comes from the
# URL.  Each time the upstream gets exactly what a parse gives: the token
# in the client's sessionId, the client's own tail, and the plan of the
# head remembered was used (the debug log).

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use HTTP::Tiny;
use Test::More;

my $t = SfTest->new(log_level => 'debug');
$t->start_mock;

my $fport = SfTest::free_port();     # client_body_buffer_size 1k
my $h2port = SfTest::free_port();    # HTTP/2

$t->simple_conf(http_extra => <<"EOF");
    server {
        listen 127.0.0.1:$fport reuseport;
        client_body_buffer_size 1k;
        client_body_in_file_only clean;

        location /services/ {
            sf_oauth crm;
            proxy_pass http://127.0.0.1:%%MOCK%%;
        }
    }

    server {
        listen 127.0.0.1:$h2port http2 reuseport;

        location /services/ {
            sf_oauth crm;
            proxy_pass http://127.0.0.1:%%MOCK%%;
        }
    }
EOF
$t->start;

my $NS = 'http://schemas.xmlsoap.org/soap/envelope/';
my $URN = 'urn:partner.soap.sforce.com';
my $PATH = '/services/Soap/u/59.0';

sub seen { $t->stats()->{soap_last_envelope} }
sub recalled {
    scalar $t->log_lines(qr/SOAP envelope: the plan of a head of \d+ bytes parsed before/,
                         $_[0]);
}

# a head of about 3 KB (past the 1k buffer), its call "query"
my $head = qq{<x:Envelope xmlns:x="$NS" xmlns:u="$URN"><x:Header>}
    . qq{<u:SessionHeader><u:sessionId>client-own</u:sessionId>}
    . qq{</u:SessionHeader><u:CallOptions><u:client>}
    . ('c' x 3000) . qq{</u:client></u:CallOptions></x:Header>}
    . qq{<x:Body><u:query>};
my $tail = qq{<u:queryString>SELECT Id FROM Account</u:queryString>}
    . qq{</u:query></x:Body></x:Envelope>};

sub tail { qq{<u:queryString>SELECT Id FROM T$_[0]</u:queryString>}
           . qq{</u:query></x:Body></x:Envelope>} }

my %h = ('Content-Type' => 'text/xml; charset=UTF-8', SOAPAction => '""');

sub plain {
    my ($body, $path, $port) = @_;
    return $t->http('POST', $path // $PATH, body => $body,
                    headers => \%h, port => $port)->{status};
}

# the first envelope, parsed (on either worker): the expected envelope for
# any tail
is(plain($head . $tail), 200, 'a query goes through');
my $token = ($t->tokens)[-1];
my $first = seen();
like($first, qr{<u:sessionId>\Q$token\E</u:sessionId>},
     'the token is in the sessionId');
unlike($first, qr/client-own/, "the client's session is not");

sub want {
    my ($tok, $n) = @_;
    (my $w = $first) =~ s/\Q$token\E/$tok/;
    $w =~ s/\Q$tail\E$/tail($n)/e;
    return $w;
}

# Sends the same head with tail N by "send" until a worker gives it the
# remembered plan (both workers learn it from their first parse); every
# answer must be the envelope a parse gives
sub attack {
    my ($name, $send) = @_;
    my ($hit, $ok) = (0, 1);
    for my $n (1 .. 12) {
        my $mark = $t->log_mark;
        my $status = $send->($head . tail($n));
        $ok &&= is($status, 200, "$name ($n): 200");
        $ok &&= is(seen(), want(($t->tokens)[-1], $n),
                   "$name ($n): the upstream gets the envelope a parse "
                   . 'gives');
        last unless $ok;
        if (recalled($mark)) {
            $hit = 1;
            last;
        }
    }
    ok($hit, "$name: the remembered plan was used");
}

# -- gzip ----------------------------------------------------------------

attack('gzip-encoded', sub {
    $t->http('POST', $PATH, body => SfTest::gz($_[0]),
             headers => { %h, 'Content-Encoding' => 'gzip' })->{status};
});

# -- a temp file -------------------------------------------------------------

attack('in a temp file', sub { plain($_[0], $PATH, $fport) });

# -- chunked, in slices, from a slow client ----------------------------------

sub chunked {
    my $res = $t->chunked("POST $PATH HTTP/1.1\r\nHost: x\r\n"
                          . "Content-Type: text/xml\r\nSOAPAction: \"\"\r\n",
                          $_[0], 700);
    return ($res =~ m{^HTTP/1\.1 (\d+)})[0] // 0;
}

attack('chunked in 700-byte slices', \&chunked);

# -- HTTP/2 ------------------------------------------------------------------

attack('HTTP/2', sub {
    my $file = $t->dir . '/h2.xml';
    open my $fh, '>', $file or die;
    print $fh $_[0];
    close $fh;
    my $code = `curl -s -o /dev/null -w '%{http_code}' --http2-prior-knowledge -H 'Content-Type: text/xml' -H 'SOAPAction: ""' --data-binary \@$file http://127.0.0.1:$h2port$PATH`;
    return $code + 0;
});

# -- a replay after INVALID_SESSION_ID -------------------------------------

my $before = $t->token_requests;
$t->mock('revoke');
is(plain($head . tail(99)), 200, 'after a revoke: the replay is 200');
is($t->token_requests, $before + 1, 'after a revoke: one token request');
is(seen(), want(($t->tokens)[-1], 99),
   'after a revoke: the replay has the new token where the plan puts it');

# -- Apex class endpoints: the namespace from the URL ----------------------

my $bare = qq{<x:Envelope xmlns:x="$NS"><x:Body><q>};
my $rest = qq{</q></x:Body></x:Envelope>};

my $mark = $t->log_mark;
for my $i (1 .. 6) {
    for my $class (qw(Foo Bar)) {
        # the mock faults a call "q" that the class does not have (500)
        plain($bare . $rest, "/services/Soap/class/$class");
        like(seen(), qr{<SessionHeader xmlns="http://soap\.sforce\.com/schemas/class/$class"><sessionId>},
             "class $class ($i): its own namespace");
    }
}

ok(recalled($mark), 'the class endpoints: remembered plans were used');

ok(!$t->log_lines(qr/\[(alert|crit|emerg)\]/), 'no alert');
ok(!$t->log_lines(qr/\Q$_\E/), 'no token is logged') for $t->tokens;

$t->finish;

done_testing();
