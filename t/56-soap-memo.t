#!/usr/bin/perl

# A worker remembers the heads of the envelopes that libxml2 parsed, and
# gives an envelope that begins with the same bytes, for the same
# endpoint, the same plan without parsing it again (src/..._envelope.c).
# The plan must be the one a parse would make: the token where the
# client's sessionId was, the client's own tail after the call's start
# tag; a head that differs in any byte up to the end of that tag, or
# another endpoint, is parsed; a tag that does not end as the remembered
# one does is refused as before.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use HTTP::Tiny;
use Test::More;

my $t = SfTest->new(log_level => 'debug');
$t->start_mock;
$t->simple_conf(location_extra => <<'EOF');
            add_header X-Connection $connection always;
EOF
$t->start;

my $NS = 'http://schemas.xmlsoap.org/soap/envelope/';
my $URN = 'urn:partner.soap.sforce.com';
my $ENT = 'urn:enterprise.soap.sforce.com';

# one keepalive connection: every request goes to the same worker
my $ua = HTTP::Tiny->new(keep_alive => 1,
                         timeout => 30 * SfTest::time_scale());
my $conn;

sub post {
    my ($body, $path) = @_;
    my $r = $ua->request('POST', 'http://127.0.0.1:' . $t->port
                                 . ($path // '/services/Soap/u/59.0'), {
        content => $body,
        headers => { 'Content-Type' => 'text/xml; charset=UTF-8',
                     SOAPAction => '""' } });
    $conn //= $r->{headers}{'x-connection'};
    is($r->{headers}{'x-connection'}, $conn, 'on the same connection')
        if defined $r->{headers}{'x-connection'};
    return $r;
}

# what the upstream got, and how many plans were given again since MARK
sub seen { $t->stats()->{soap_last_envelope} }
sub recalled {
    scalar $t->log_lines(qr/SOAP envelope: the plan of a head of \d+ bytes parsed before/,
                              $_[0]);
}

post(qq{<x:Envelope xmlns:x="http://schemas.xmlsoap.org/soap/envelope/"><x:Body><warm/></x:Body></x:Envelope>});
my $token = ($t->tokens)[-1];

my $head = qq{<x:Envelope xmlns:x="$NS" xmlns:u="$URN"><x:Header>}
    . qq{<u:SessionHeader><u:sessionId>client-own</u:sessionId>}
    . qq{</u:SessionHeader><u:QueryOptions><u:batchSize>200</u:batchSize>}
    . qq{</u:QueryOptions></x:Header><x:Body><u:query>};
my $tail1 = qq{<u:queryString>SELECT Id FROM Account</u:queryString>}
    . qq{</u:query></x:Body></x:Envelope>};
my $tail2 = qq{<u:queryString>SELECT Name FROM Contact WHERE Id = 'x'}
    . qq{</u:queryString></u:query></x:Body></x:Envelope>};

# -- the same envelope twice: the second plan is the first one ------------

my $mark = $t->log_mark;
is(post($head . $tail1)->{status}, 200, 'a query goes through');
my $first = seen();
is(recalled($mark), 0, 'the first envelope is parsed');
like($first, qr{<u:sessionId>\Q$token\E</u:sessionId>},
     'the token is in the sessionId');
unlike($first, qr/client-own/, "the client's session is not");

$mark = $t->log_mark;
is(post($head . $tail1)->{status}, 200, 'the same query again');
is(seen(), $first, 'the upstream gets the same envelope');
is(recalled($mark), 1, 'its head was not parsed again');

# -- the same head, another tail ------------------------------------------

$mark = $t->log_mark;
is(post($head . $tail2)->{status}, 200, 'another query, the same head');
my $want = $first;
$want =~ s/\Q$tail1\E$/$tail2/;
is(seen(), $want, 'the token where the first had it, and the client\'s '
                  . 'own tail after the call');
is(recalled($mark), 1, 'the head was not parsed again');

# -- a head that differs in its last byte, or another endpoint -----------

(my $other = $head) =~ s/<u:query>$/<u:query >/;
$mark = $t->log_mark;
is(post($other . $tail1)->{status}, 200, 'a call tag with a space');
is(recalled($mark), 0, 'a head that differs in one byte is parsed');

my $bare = qq{<x:Envelope xmlns:x="$NS"><x:Body><q>};
my $rest = qq{</q></x:Body></x:Envelope>};
my $u = post($bare . $rest);
my $u_env = seen();
like($u_env, qr{<SessionHeader xmlns="\Q$URN\E"><sessionId>\Q$token\E<},
     'no Header: one is added in the partner namespace');

$mark = $t->log_mark;
post($bare . $rest, '/services/Soap/c/59.0');
like(seen(), qr{<SessionHeader xmlns="\Q$ENT\E"><sessionId>\Q$token\E<},
     'the same head to the enterprise endpoint gets its own namespace');
is(recalled($mark), 0, 'another endpoint: parsed');

# -- a call tag that does not end as the remembered one ------------------

my $empty = qq{<x:Envelope xmlns:x="$NS"><x:Body><q/></x:Body></x:Envelope>};
my $broken = qq{<x:Envelope xmlns:x="$NS"><x:Body><q/<</x:Body></x:Envelope>};

my $fresh = $t->soap('/services/Soap/u/59.0', $broken);
is($fresh->{status}, 400, 'a broken call tag is refused by the module');

post($empty);
like(seen(), qr{<x:Body><q/></x:Body></x:Envelope>$},
     'an empty call element goes through');
$mark = $t->log_mark;
my $after = post($broken);
is($after->{status}, $fresh->{status},
   'the broken one after it is refused as before');
is($after->{content}, $fresh->{content}, 'with the same fault');
is(recalled($mark), 0, 'it was parsed');

# -- login, remembered, is still answered as login -----------------------

my $login = qq{<x:Envelope xmlns:x="$NS"><x:Body><u:login xmlns:u="$URN">}
    . qq{<u:username>a</u:username><u:password>b</u:password></u:login>}
    . qq{</x:Body></x:Envelope>};
my $l1 = post($login);
$mark = $t->log_mark;
my $l2 = post($login);
is($l2->{status}, $l1->{status}, 'login again: the same status');
like($l2->{content}, qr{<loginResponse>}, 'and a login answer');
is(recalled($mark), 1, 'from the remembered head');

# -- many heads: what is kept stays bounded, and still right -------------

for my $i (1 .. 40) {
    (my $h = $head) =~ s/200/$i/;
    is(post($h . $tail1)->{status}, 200, "head $i") or last;
    (my $w = $first) =~ s/>200</>$i</;
    is(seen(), $w, "head $i: the envelope as planned") or last;
}

$mark = $t->log_mark;
post($head . $tail1);
is(recalled($mark), 0, 'the first head was forgotten for newer ones');
is(seen(), $first, 'and parsed again the same');

ok(!$t->log_lines(qr/\[(alert|crit|emerg)\]/), 'no alert');
ok(!$t->log_lines(qr/\Q$token\E/), 'the token is not logged');

$t->finish;

done_testing();
