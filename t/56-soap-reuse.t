#!/usr/bin/perl

# Each worker parses every envelope with one libxml2 parser context, reset
# between envelopes.  Nothing of one envelope may reach the next one on
# the same worker: not a namespace prefix bound by the envelope before (a
# parse stopped at the call leaves the Envelope's bindings on the stack,
# and upstream libxml2 2.9's reset keeps them: the module empties the
# stack itself), not an error; and a worker does not grow with the names
# that clients send (the context's dictionary keeps every name).

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use HTTP::Tiny;
use Test::More;

my $t = SfTest->new;
$t->start_mock;
$t->simple_conf(location_extra => <<'EOF');
            add_header X-Connection $connection always;
            add_header X-Pid $pid always;
EOF
$t->start;

my $NS = 'http://schemas.xmlsoap.org/soap/envelope/';
my $URN = 'urn:partner.soap.sforce.com';
my $PATH = '/services/Soap/u/59.0';

# one keepalive connection: every request goes to the same worker
my $ua = HTTP::Tiny->new(keep_alive => 1, timeout => 30 * SfTest::time_scale());

sub post {
    my ($body) = @_;
    return $ua->request('POST', 'http://127.0.0.1:' . $t->port . $PATH, {
        content => $body,
        headers => { 'Content-Type' => 'text/xml; charset=UTF-8',
                     SOAPAction => '""' } });
}

# binds x and u on the Envelope; the parse stops inside them, at the call
my $bound = qq{<x:Envelope xmlns:x="$NS" xmlns:u="$URN"><x:Header>}
    . qq{<u:SessionHeader><u:sessionId>old</u:sessionId></u:SessionHeader>}
    . qq{</x:Header><x:Body><u:query><u:queryString>SELECT Id FROM }
    . qq{Account</u:queryString></u:query></x:Body></x:Envelope>};

# the same prefixes, declared nowhere
my $unbound = qq{<x:Envelope><x:Header/><x:Body><u:query><u:queryString>}
    . qq{SELECT Id FROM Account</u:queryString></u:query></x:Body>}
    . qq{</x:Envelope>};

# -- a fresh worker's answer to the unbound envelope ---------------------

my $alone = $t->soap($PATH, $unbound);
is($alone->{status}, 400, 'an envelope with undeclared prefixes is refused');
like($alone->{content}, qr{not a SOAP 1\.1 Envelope},
     'the fault says why');

# -- the same after an envelope that bound the prefixes ------------------

for my $round (1 .. 3) {
    my $a = post($bound);
    my $b = post($unbound);

    is($a->{status}, 200, "round $round: the envelope that binds x and u "
                          . 'goes through');
    is($b->{headers}{'x-connection'}, $a->{headers}{'x-connection'},
       "round $round: both on one connection, so one worker");
    is($b->{status}, 400, "round $round: the next envelope does not see "
                          . 'the bindings of the one before');
    is($b->{content}, $alone->{content},
       "round $round: the same fault as on its own");
}

# -- an envelope refused midway leaves nothing behind --------------------

my %broken = (
    'a DTD' => qq{<!DOCTYPE x [<!ENTITY e "e">]><x:Envelope xmlns:x="$NS">}
               . qq{<x:Body><q/></x:Body></x:Envelope>},
    'a tag left open' => qq{<x:Envelope xmlns:x="$NS" xmlns:u="$URN">}
               . qq{<x:Header><u:SessionHeader><u:sessionId>a</u:session}
               . qq{</x:Envelope>},
    'a foreign root' => qq{<u:Envelope xmlns:u="$URN"><u:Body/>}
               . qq{</u:Envelope>},
);

for my $what (sort keys %broken) {
    my $r = post($broken{$what});
    is($r->{status}, 400, "$what: refused");

    $r = post($bound);
    is($r->{status}, 200, "$what: the next envelope on the worker is "
                          . 'parsed afresh and gets the session');
}

# -- a UTF-8 byte order mark, on a new context and on a reused one ------

# .NET's SOAP stacks send one.  A new context detects the encoding from
# the first bytes and skips the mark; libxml2 2.9.14's reset takes the
# encoding for UTF-8, so the module sets it back to "none" at each reset,
# or a reused context would refuse the mark ("Document is empty")

{
    my $bom = "\xEF\xBB\xBF" . $bound;

    # a parse the module did not stop itself: the next context is new
    is(post(qq{<x:Envelope xmlns:x="$NS"><x:Header><x:Body>})->{status},
       400, 'a broken envelope: refused, its context goes');

    my $fresh = post($bom);
    is($fresh->{status}, 200, 'a UTF-8 BOM envelope on a new context: 200')
        or diag(substr($fresh->{content}, 0, 600));

    # the parse stopped at the call: the context is kept, and reused
    my $reused = post($bom);
    is($reused->{headers}{'x-pid'}, $fresh->{headers}{'x-pid'},
       'the same worker');
    is($reused->{status}, 200, 'the same envelope on the reused context: 200')
        or diag(substr($reused->{content}, 0, 600));
}

# -- the names that clients send do not grow a worker --------------------

sub worker_rss {
    my $kb = 0;
    for my $pid ($t->worker_pids) {
        open my $fh, '<', "/proc/$pid/status" or next;
        while (<$fh>) { $kb += $1 if /^VmRSS:\s+(\d+)/ }
    }
    return $kb;
}

# 300 envelopes of 300 names each that no envelope had before (90,000
# names, about 4 MB of them): a context that kept its dictionary would
# hold them all
post($bound) for 1 .. 20;
my $before = worker_rss();
my $n = 0;

for my $i (1 .. 300) {
    my $names = join '', map {
        sprintf '<n%05d_%05d_%s xmlns="urn:x"/>', $i, $_, 'k' x 24
    } 1 .. 300;

    my $r = post(qq{<x:Envelope xmlns:x="$NS" xmlns:u="$URN"><x:Header>}
                 . $names . qq{</x:Header><x:Body><u:query>}
                 . qq{<u:queryString>SELECT Id FROM Account}
                 . qq{</u:queryString></u:query></x:Body></x:Envelope>});
    $n++ if $r->{status} == 200;
}

is($n, 300, 'every envelope with new names goes through');

my $grown = worker_rss() - $before;

SKIP: {
    # valgrind keeps freed blocks aside (--freelist-vol): RSS says nothing
    skip 'RSS under valgrind', 1 if $ENV{SF_TEST_VALGRIND};

    cmp_ok($grown, '<', 3 * 1024,
           "the workers grew by less than 3 MiB ($grown KiB)");
}

is(post($bound)->{status}, 200, 'an ordinary envelope after them works');

# -- nor do long names --------------------------------------------------

# The dictionary's count stays under 1,024 with a few long names: a name
# may be ~50,000 bytes and a namespace URI is interned too.  400
# envelopes, each with one new name of 40,000 bytes and a new URI of
# 20,000, grew the workers by 10 MB (and the 225th hit libxml2's 10 MB
# dictionary limit: 400 "Memory allocation failed") before the context
# was made again past 256 KiB of names

$before = worker_rss();
$n = 0;

for my $i (1 .. 400) {
    my $name = sprintf('n%06d', $i) . ('k' x 40000);
    my $uri = sprintf('urn:%06d:', $i) . ('u' x 20000);
    my $r = post(qq{<x:Envelope xmlns:x="$NS" xmlns:u="$URN"><x:Header>}
                 . qq{<$name xmlns="$uri"/></x:Header><x:Body><u:query>}
                 . qq{<u:queryString>SELECT Id FROM Account}
                 . qq{</u:queryString></u:query></x:Body></x:Envelope>});
    $n++ if $r->{status} == 200;
}

is($n, 400, 'every envelope with a long new name goes through');

$grown = worker_rss() - $before;

SKIP: {
    skip 'RSS under valgrind', 1 if $ENV{SF_TEST_VALGRIND};

    cmp_ok($grown, '<', 3 * 1024,
           "the workers grew by less than 3 MiB ($grown KiB)");
}

is(post($bound)->{status}, 200, 'an ordinary envelope after them works');

$t->finish;

done_testing;
