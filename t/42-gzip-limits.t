#!/usr/bin/perl

# Gzip-compressed SOAP envelopes at their limits, with client_max_body_size
# 0: a zip bomb is refused by sf_oauth_soap_inflate_limit (a ratio to the
# compressed size and an absolute cap) with a SOAP fault, and nothing
# reaches Salesforce; a legitimate envelope passes; a large envelope
# inflates a slice at a time, so that another client's REST request is
# not stalled meanwhile, and a client that goes away mid-inflation leaves
# nothing behind; every member of a multi-member gzip stream is inflated,
# and trailing garbage is refused; encoding="UTF8" and the other names of
# UTF-8 and US-ASCII pass, ISO-8859-1 is still refused.  nginx -t refuses
# bad values of the directive.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use Digest::SHA qw(sha256_hex);
use IO::Compress::Gzip qw($GzipError);
use IO::Select;
use IO::Socket::INET;
use Test::More;
use Time::HiRes qw(sleep time);

my $ENV_NS = 'http://schemas.xmlsoap.org/soap/envelope/';
my $NS = 'urn:partner.soap.sforce.com';
my $U = '/services/Soap/u/59.0';

# one worker: the inflating envelope and the REST request share it
my $t = SfTest->new(workers => 1);
$t->start_mock;

my $scale = SfTest::time_scale();

# the large envelope's cap: 512 MiB (64 MiB under valgrind)
my $BIG_CAP = $scale > 1 ? 64 : 512;

my %conf = (http_extra => <<"EOF", location_extra => <<"EOF2");
    client_max_body_size 0;
    client_body_buffer_size 16k;
EOF
        }

        location /big/services/ {
            sf_oauth crm;
            sf_oauth_soap_inflate_limit ${BIG_CAP}m 100000;
            proxy_pass http://127.0.0.1:%%MOCK%%/services/;
EOF2

# -- nginx -t: bad values get a clear error ----------------------------------

for my $case ([ '0', qr/invalid size "0" in "sf_oauth_soap_inflate_limit"/ ],
              [ 'lots', qr/invalid size "lots" in "sf_oauth_soap_inflate_limit"/ ],
              [ '10m 0', qr/invalid ratio "0" in "sf_oauth_soap_inflate_limit".*from 1 to 100000/ ],
              [ '10m x2', qr/invalid ratio "x2"/ ],
              [ '10m 100 1', qr/invalid number of arguments in "sf_oauth_soap_inflate_limit"/ ])
{
    my ($args, $re) = @$case;
    $t->simple_conf(http_extra => "    sf_oauth_soap_inflate_limit $args;\n");
    my ($rc, $out) = $t->test_conf;
    isnt($rc, 0, "nginx -t: sf_oauth_soap_inflate_limit $args is refused");
    like($out, $re, "nginx -t: sf_oauth_soap_inflate_limit $args: the error says why")
        or diag($out);
}

$t->simple_conf(http_extra => "    sf_oauth_soap_inflate_limit 20m 50;\n");
my ($rc, $out) = $t->test_conf;
is($rc, 0, 'nginx -t: sf_oauth_soap_inflate_limit 20m 50 is taken') or diag($out);

$t->simple_conf(%conf);
$t->start;

# a SOAP call's timeout: a large envelope takes a while
my %SOAP = (timeout => 60 * $scale);

sub tail {
    my ($env) = @_;
    $env =~ /<(?:[A-Za-z_][\w.\-]*:)?Body[\s\/>]/ or die "no Body in $env";
    return substr($env, $-[0]);
}

# with a pad: a comment after the queryString (the mock runs the query)
sub envelope {
    my ($query, $decl, $pad) = @_;
    return ($decl // '')
        . qq{<soapenv:Envelope xmlns:soapenv="$ENV_NS"><soapenv:Header>}
        . qq{<SessionHeader xmlns="$NS"><sessionId>bogus</sessionId>}
        . qq{</SessionHeader></soapenv:Header><soapenv:Body><query xmlns="$NS">}
        . qq{<queryString>$query</queryString>}
        . (defined $pad ? "<!-- $pad -->" : '') . qq{</query></soapenv:Body>}
        . qq{</soapenv:Envelope>};
}

# what reached the mock is the whole envelope, with the token in it
sub arrived_ok {
    my ($name, $r, $env) = @_;

    is($r->{status}, 200, "$name: 200") or diag(substr $r->{content}, 0, 2000);
    my $st = $t->stats;
    my $e = $st->{soap_log}[-1] // {};
    is($e->{status}, 200, "$name: the mock answered 200") or diag(explain $e);
    is($e->{session_id}, $st->{issued_access_tokens}[-1],
       "$name: the sessionId is the module's token");
    is($e->{content_length}, $e->{body_len},
       "$name: Content-Length is the body's length");
    is($e->{tail_sha256}, sha256_hex(tail($env)),
       "$name: the Body arrived whole, byte for byte");
    isnt($e->{content_encoding} // '', 'gzip', "$name: sent inflated");
}

# the module's own fault, and nothing forwarded
sub refused_ok {
    my ($name, $r, $before, $status, $re) = @_;

    is($r->{status}, $status, "$name: $status") or diag($r->{content});
    like($r->{headers}{'content-type'} // '', qr{^text/xml\b},
         "$name: a SOAP fault (text/xml)");
    like($r->{content}, qr{<faultcode>soapenv:Client</faultcode>},
         "$name: faultcode Client");
    like($r->{content}, qr{<faultstring>sf_oauth: [^<]*$re},
         "$name: the faultstring says why") or diag($r->{content});
    my $st = $t->stats;
    is($st->{api_requests}, $before->{api_requests},
       "$name: the mock was not reached");
    is(scalar @{ $st->{soap_log} }, scalar @{ $before->{soap_log} },
       "$name: no SOAP call arrived");
}

# a token in the cache first
is($t->soap($U, envelope('SELECT Id FROM Account'), %SOAP)->{status}, 200, 'warm: 200');

# -- a zip bomb, client_max_body_size 0 ---------------------------------------

{
    my $bomb = envelope("\0" x (4 * 1048576));
    my $gz = SfTest::gz($bomb);
    ok(length $gz < 16384, 'the bomb: 4 MiB compressed to ' . length($gz) . ' bytes');

    my $st = $t->stats;
    my $r = $t->soap($U, $gz, %SOAP, headers => { 'Content-Encoding' => 'gzip' });
    refused_ok('zip bomb', $r, $st, 413, qr/inflates to more than 1048576 bytes.*sf_oauth_soap_inflate_limit.*100 times its compressed size/);

    my @left = $t->temp_files;
    is(scalar @left, 0, 'zip bomb: no temp file left') or diag("@left");
}

# -- a legitimate envelope within the ratio -----------------------------------

{
    my $q = join ' ', map { sha256_hex("record $_") } 1 .. 40000;
    my $env = envelope('SELECT Id FROM Account', undef, $q);
    my $gz = SfTest::gz($env);
    ok(length $env > 2 * 1048576 && length $env > 1.5 * length $gz,
       'a legitimate envelope: ' . length($env) . ' bytes, '
       . length($gz) . ' compressed');
    arrived_ok('a legitimate gzip envelope of 2.6 MiB',
               $t->soap($U, $gz, %SOAP, headers => { 'Content-Encoding' => 'gzip' }), $env);
    is($t->stats->{soap_log}[-1]{decoded_len} - length($env),
       length($t->stats->{issued_access_tokens}[-1]) - length('bogus'),
       'a legitimate envelope: all of it arrived, the token for "bogus"');
}

# -- multi-member gzip ---------------------------------------------------------

{
    my $env = envelope('SELECT Id, Name FROM Account WHERE Name LIKE \'multi%\'');
    # split right after the Body's start tag
    my $cut = index($env, '<soapenv:Body>') + length '<soapenv:Body>';
    my $gz = SfTest::gz(substr $env, 0, $cut) . SfTest::gz(substr $env, $cut);
    arrived_ok('two gzip members, split after the Body start tag',
               $t->soap($U, $gz, %SOAP, headers => { 'Content-Encoding' => 'gzip' }), $env);
    is($t->stats->{soap_log}[-1]{error}, undef, 'two members: the mock parsed it');

    # three members, one of them empty, split inside the head too
    my $cut2 = index($env, '<sessionId>') + 4;
    $gz = SfTest::gz(substr $env, 0, $cut2) . SfTest::gz('') . SfTest::gz(substr $env, $cut2, $cut - $cut2)
          . SfTest::gz(substr $env, $cut);
    arrived_ok('four gzip members, one empty',
               $t->soap($U, $gz, %SOAP, headers => { 'Content-Encoding' => 'gzip' }), $env);

    # through a temp file: members of 1 MiB each, client_body_buffer_size 16k
    my $q = join ' ', map { sha256_hex("member $_") } 1 .. 20000;
    my $big = envelope('SELECT Id FROM Account', undef, $q);
    my $third = int(length($big) / 3);
    $gz = SfTest::gz(substr $big, 0, $third) . SfTest::gz(substr $big, $third, $third)
          . SfTest::gz(substr $big, 2 * $third);
    arrived_ok('three members of a 1.3 MiB envelope',
               $t->soap($U, $gz, %SOAP, headers => { 'Content-Encoding' => 'gzip' }), $big);

    # trailing garbage after the last member
    my $one = SfTest::gz($env);
    for my $case ([ 'text', "garbage after the stream\n" ], [ 'one newline', "\n" ],
                  [ 'zeros', "\0" x 8 ], [ 'half a gzip header', "\x1f\x8b\x08" ],
                  [ 'a member cut short', substr(SfTest::gz($env), 0, 30) ])
    {
        my ($what, $junk) = @$case;
        my $st = $t->stats;
        my $r = $t->soap($U, $one . $junk, %SOAP, headers => { 'Content-Encoding' => 'gzip' });
        refused_ok("trailing $what", $r, $st, 400,
                   $what eq 'a member cut short' ? qr/cut short/
                                                 : qr/trailing data/);
    }
}

# -- the encodings that libxml2 reads as UTF-8 ---------------------------------

for my $enc ('UTF8', 'utf8', 'us-ascii', 'ASCII', 'ANSI_X3.4-1968', 'UTF-8') {
    my $env = envelope("SELECT Id FROM Account -- $enc",
                       qq{<?xml version="1.0" encoding="$enc"?>\n});
    arrived_ok(qq{encoding="$enc"}, $t->soap($U, $env, %SOAP), $env);
    my $gz = SfTest::gz($env);
    arrived_ok(qq{encoding="$enc", gzip-compressed},
               $t->soap($U, $gz, %SOAP, headers => { 'Content-Encoding' => 'gzip' }), $env);
}

{
    my $env = envelope('SELECT Id FROM Account',
                       qq{<?xml version='1.0' encoding = 'Utf8' standalone="yes"?>});
    arrived_ok('single quotes, spaces around =, standalone', $t->soap($U, $env, %SOAP), $env);
}

for my $enc ('ISO-8859-1', 'windows-1252', 'EBCDIC-US', 'UTF-16') {
    my $env = envelope('SELECT Id FROM Account',
                       qq{<?xml version="1.0" encoding="$enc"?>});
    my $st = $t->stats;
    refused_ok(qq{encoding="$enc"}, $t->soap($U, $env, %SOAP), $st, 400,
               qr/the envelope is not in UTF-8/);
}

# -- a large envelope inflates in slices: the worker goes on serving ----------

# one REST request, timed
sub rest_time {
    my $start = time;
    my $r = $t->get('/services/data/v59.0/limits', timeout => 30 * $scale);
    die "REST: $r->{status}" unless $r->{status} == 200;
    return time - $start;
}

# the big envelope over a raw socket: it answers when it has inflated
sub send_big {
    my ($gz) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $t->port)
        or die "connect: $!";
    print $s "POST /big$U HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml\r\n"
             . "Content-Encoding: gzip\r\nContent-Length: " . length($gz)
             . "\r\nConnection: close\r\n\r\n" . $gz;
    return $s;
}

{
    my $alone = 0;
    for (1 .. 5) {
        my $d = rest_time();
        $alone = $d if $d > $alone;
    }

    # the head, then more zeros than the cap: inflated to the cap, refused
    my $big;
    my $z = IO::Compress::Gzip->new(\$big, Minimal => 1) or die $GzipError;
    $z->print(qq{<soapenv:Envelope xmlns:soapenv="$ENV_NS"><soapenv:Body><query xmlns="$NS"><queryString>});
    $z->print("\0" x 1048576) for 1 .. $BIG_CAP + 16;
    $z->close;

    my $st = $t->stats;
    my $mark = $t->log_mark;
    my $start = time;
    my $s = send_big($big);

    ok($t->wait_log(qr/an inflated SOAP envelope is buffered to a temporary file/,
                $mark, 10 * $scale),
       'the large envelope: inflation began');

    # REST requests one after another while it inflates
    my (@during, $answer);
    my $sel = IO::Select->new($s);
    while (1) {
        if ($sel->can_read(0)) {
            local $/;
            $answer = <$s> // '';
            last;
        }
        last if time - $start > 120 * $scale;
        push @during, rest_time();
    }
    my $inflating = time - $start;
    close $s;

    like($answer // '', qr{^HTTP/1\.1 413}, 'the large envelope: 413 at the cap');
    like($answer // '', qr{inflates to more than \d+ bytes: sf_oauth_soap_inflate_limit},
         'the large envelope: the fault names the directive');
    is($t->stats->{api_requests}, $st->{api_requests} + @during,
       'the large envelope: nothing but the REST requests reached the mock');

    my ($worst) = sort { $b <=> $a } @during;
    $worst //= $inflating;
    diag(sprintf 'REST alone: %.3f s at worst; inflating: %.2f s; %d REST requests '
                 . 'meanwhile, %.3f s at worst', $alone, $inflating,
                 scalar @during, $worst);

    # a stall would hold a REST request for the rest of the inflation
    ok(@during >= 5,
       'the large envelope: 5 or more REST requests answered while it inflated ('
       . scalar(@during) . ')');
    ok($worst < ($alone * 10 > 0.25 * $scale ? $alone * 10 : 0.25 * $scale)
       && $worst < $inflating / 4,
       sprintf 'no REST request stalled: %.3f s at worst, alone %.3f s, the '
               . 'inflation %.2f s', $worst, $alone, $inflating);

    my @left = $t->temp_files;
    is(scalar @left, 0, 'the large envelope: no temp file left') or diag("@left");

    # a client that goes away mid-inflation
    $mark = $t->log_mark;
    my $access = -s $t->dir . '/access.log';
    $s = send_big($big);
    ok($t->wait_log(qr/an inflated SOAP envelope is buffered to a temporary file/,
                $mark, 10 * $scale),
       'aborted: inflation began');
    close $s;

    my $end = time + 10 * $scale;
    my $logged = '';
    while (time < $end) {
        $logged = substr($t->slurp('access.log'), $access);
        last if $logged =~ m{"POST /big\S* HTTP/1.1" \d+};
        sleep 0.05;
    }
    like($logged, qr{"POST /big\S* HTTP/1.1" 499 },
         'aborted: finalized as 499 when the client went away');
    ok(time < $end - 5 * $scale, 'aborted: noticed at once');
    @left = $t->temp_files;
    is(scalar @left, 0, 'aborted: no temp file left') or diag("@left");
    is($t->soap($U, envelope('SELECT Id FROM Contact'), %SOAP)->{status}, 200,
       'aborted: the worker goes on');
}

$t->finish;

done_testing;
