#!/usr/bin/perl

# An envelope that starts with a UTF-8 byte order mark (.NET's SOAP stacks
# send one) passes whatever the worker parsed before.  A context made by
# xmlCreatePushParserCtxt() with no first chunk detects the encoding from
# the first bytes and skips the BOM; libxml2 2.9.14's xmlCtxtReset() sets
# the encoding to UTF-8, so the module sets it back to "none" at each
# reset, or a reused context would refuse the BOM.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use HTTP::Tiny;
use Test::More;

my $t = SfTest->new;
$t->start_mock;
$t->simple_conf(location_extra => <<'EOF');
            add_header X-Pid $pid always;
EOF
$t->start;

my $NS = 'http://schemas.xmlsoap.org/soap/envelope/';
my $URN = 'urn:partner.soap.sforce.com';
my $PATH = '/services/Soap/u/59.0';

my $ua = HTTP::Tiny->new(keep_alive => 1, timeout => 30 * SfTest::time_scale());

sub post {
    my ($body) = @_;
    return $ua->request('POST', 'http://127.0.0.1:' . $t->port . $PATH, {
        content => $body,
        headers => { 'Content-Type' => 'text/xml; charset=UTF-8',
                     SOAPAction => '""' } });
}

my $env = qq{<x:Envelope xmlns:x="$NS" xmlns:u="$URN"><x:Header/>}
    . qq{<x:Body><u:query><u:queryString>SELECT Id FROM Account}
    . qq{</u:queryString></u:query></x:Body></x:Envelope>};
my $bom = "\xEF\xBB\xBF" . $env;
my $broken = qq{<x:Envelope xmlns:x="$NS"><x:Header><x:Body>};

# a parse the module did not stop itself: the next context is new
is(post($broken)->{status}, 400, 'a broken envelope: refused, the context goes');
my $fresh = post($bom);
is($fresh->{status}, 200, 'a UTF-8 BOM envelope on a fresh context: 200')
    or diag(substr($fresh->{content}, 0, 600));

# now the context was kept (the parse stopped at the call): reused
my $reused = post($bom);
is($reused->{headers}{'x-pid'}, $fresh->{headers}{'x-pid'}, 'the same worker');
is($reused->{status}, $fresh->{status},
   'the same envelope on the reused context: the same answer')
    or diag(substr($reused->{content}, 0, 600));

$t->finish;

done_testing;
