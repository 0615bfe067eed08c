#!/usr/bin/perl

# The worker's parser context is made again when its dictionary holds more
# than 256 KiB of names, not only more than 1,024 of them: a name may be
# ~50,000 bytes (XML_MAX_NAME_LENGTH) and a namespace URI (interned too)
# fills the rest of the 64 KiB head, so a few hundred envelopes with one
# long new name each would otherwise grow a worker by megabytes (and hit
# libxml2's 10 MB dictionary limit: 400 "Memory allocation failed").

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use HTTP::Tiny;
use Test::More;

my $t = SfTest->new;
$t->start_mock;
$t->simple_conf;
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

sub worker_rss {
    my $kb = 0;
    for my $pid ($t->worker_pids) {
        open my $fh, '<', "/proc/$pid/status" or next;
        while (<$fh>) { $kb += $1 if /^VmRSS:\s+(\d+)/ }
    }
    return $kb;
}

my $plain = qq{<x:Envelope xmlns:x="$NS" xmlns:u="$URN"><x:Header/>}
    . qq{<x:Body><u:query><u:queryString>SELECT Id FROM Account}
    . qq{</u:queryString></u:query></x:Body></x:Envelope>};

post($plain) for 1 .. 20;
my $before = worker_rss();
my $n = 0;
my $count = 400;

for my $i (1 .. $count) {
    # one new element name of 40,000 bytes and a new namespace URI of
    # 20,000: two new dictionary entries, ~60 KB, an envelope
    my $name = sprintf('n%06d', $i) . ('k' x 40000);
    my $uri = sprintf('urn:%06d:', $i) . ('u' x 20000);

    my $r = post(qq{<x:Envelope xmlns:x="$NS" xmlns:u="$URN"><x:Header>}
                 . qq{<$name xmlns="$uri"/></x:Header><x:Body><u:query>}
                 . qq{<u:queryString>SELECT Id FROM Account}
                 . qq{</u:queryString></u:query></x:Body></x:Envelope>});
    if ($r->{status} == 200) { $n++ } else { diag("envelope $i: $r->{status} " . substr($r->{content}, 0, 400)) }
}

is($n, $count, 'every envelope with a long new name goes through');

my $grown = worker_rss() - $before;
diag("workers grew by $grown KiB after $count envelopes");

SKIP: {
    skip 'RSS under valgrind', 1 if $ENV{SF_TEST_VALGRIND};

    cmp_ok($grown, '<', 3 * 1024,
           "the workers grew by less than 3 MiB ($grown KiB)");
}

is(post($plain)->{status}, 200, 'an ordinary envelope after them works');

$t->finish;

done_testing;
