#!/usr/bin/perl

# SOAP and Bulk 1.0 clients get answers in their own shape, and a SOAP
# call the module cannot classify is never forwarded where it may be a
# login():
#
# - with sf_oauth_soap_login on, a call whose start tag lies past the
#   envelope's first 64 KiB (a long comment or whitespace before it, a
#   large Header, a tag cut at the limit) gets the module's 400 fault, and
#   Salesforce gets nothing: not the password, not the call; without
#   sf_oauth_soap_login, the same envelope goes on with the token;
# - when no token can be had, a SOAP call (login() included) gets a
#   soapenv:Server fault with the cause, a Bulk 1.0 call the Bulk API's
#   XML error (or its JSON one for a JSON job), a REST call the JSON error
#   as before; a real SOAP client (zeep) and jsforce's Bulk client read
#   them as errors with the cause.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use JSON::PP;
use Test::More;

my $PY = '/usr/bin/python3';
my $HAVE_ZEEP = system("$PY -c 'import zeep' 2>/dev/null") == 0;
my $NODE_PATH = "$SfTest::ROOT/build/node/node_modules";
my $HAVE_JSFORCE = -f "$NODE_PATH/jsforce/package.json"
                   && system('node -e 1 2>/dev/null') == 0;

my $ENV_NS = 'http://schemas.xmlsoap.org/soap/envelope/';
my $PARTNER = 'urn:partner.soap.sforce.com';
my $U = '/services/Soap/u/59.0';
my $PASS = 'S3cr3t-Pa55w0rd';

my $t = SfTest->new;
$t->start_mock;
my $login_port = SfTest::free_port();
$t->simple_conf(http_extra => <<"EOF");
    server {
        listen 127.0.0.1:$login_port;

        location /services/ {
            sf_oauth crm;
            sf_oauth_soap_login on;
            proxy_pass http://127.0.0.1:%%MOCK%%;
        }
    }
EOF
$t->start;

sub soap_at {
    my ($port, $body, $path) = @_;
    return $t->soap($path // $U, $body, port => $port);
}

sub xml_inspect {
    my ($xml) = @_;
    my $file = $t->dir . '/inspect.xml';
    open my $fh, '>', $file or die;
    print $fh $xml;
    close $fh;
    return decode_json(`$PY $SfTest::ROOT/t/lib/xml_inspect.py < $file`);
}

sub envelope {
    my ($header, $before, $call) = @_;
    return qq{<soapenv:Envelope xmlns:soapenv="$ENV_NS" xmlns:urn="$PARTNER">}
         . $header . qq{<soapenv:Body>$before$call</soapenv:Body>}
         . qq{</soapenv:Envelope>};
}

my $LOGIN = "<urn:login><urn:username>legacy\@example.com</urn:username>"
          . "<urn:password>$PASS</urn:password></urn:login>";
my $QUERY = '<urn:query><urn:queryString>SELECT Id FROM Account'
          . '</urn:queryString></urn:query>';
my $SESSION = '<soapenv:Header><urn:SessionHeader><urn:sessionId>bogus'
            . '</urn:sessionId></urn:SessionHeader></soapenv:Header>';

# warm: a token, and login() answered by the module with a short head
my $r = soap_at($login_port, envelope('', '', $LOGIN));
is($r->{status}, 200, 'a short login() is answered by the module');
like($r->{content}, qr/<loginResponse/, 'with a loginResponse');
is(scalar @{ $t->stats()->{soap_logins} }, 0, 'and it did not reach Salesforce');

# -- a call that cannot be classified within 64 KiB ----------------------------

my $prefix = envelope('', '', '');
$prefix =~ s{</soapenv:Body>.*}{};
my $cut = 65528 - length($prefix);    # <urn:login> starts at byte 65,528

my @hidden = (
    [ '70 KiB comment before login()',
      envelope('', '<!--' . ('x' x (70 * 1024)) . '-->', $LOGIN) ],
    [ '70 KiB whitespace before login()',
      envelope('', ' ' x (70 * 1024), $LOGIN) ],
    [ 'a 60 KiB Header, then login()',
      envelope('<soapenv:Header><urn:CallOptions><urn:client>'
               . ('y' x (60 * 1024)) . '</urn:client></urn:CallOptions>'
               . '</soapenv:Header>', "\n" x (8 * 1024), $LOGIN) ],
    [ 'login() starting at byte 65,528',
      envelope('', ' ' x $cut, $LOGIN) ],
);

is(index($hidden[3][1], '<urn:login>'), 65528,
   'the last case puts <urn:login> at byte 65,528');

my $before = $t->stats();

for my $case (@hidden) {
    my ($name, $env) = @$case;

    $r = soap_at($login_port, $env);
    is($r->{status}, 400, "soap_login, $name: 400");
    like($r->{headers}{'content-type'} // '', qr{^text/xml},
         "soap_login, $name: a SOAP fault");
    my $x = xml_inspect($r->{content});
    is($x->{faultcode_local}, 'Client', "soap_login, $name: soapenv:Client")
        or diag($r->{content});
    like($x->{faultstring} // '',
         qr/^sf_oauth: the call in the SOAP Body does not start within the envelope's first 64 KiB/,
         "soap_login, $name: the fault says why");
    unlike($r->{content}, qr/\Q$PASS\E/, "soap_login, $name: no password in the answer");
}

my $after = $t->stats();
is(scalar @{ $after->{soap_logins} }, scalar @{ $before->{soap_logins} },
   'soap_login: no login() reached Salesforce');
is($after->{api_requests}, $before->{api_requests},
   'soap_login: nothing reached Salesforce at all');

like($t->error_log, qr/\[info\].*SOAP envelope refused: the call in the SOAP Body does not start within/,
     'soap_login: an info line says why');
unlike($t->error_log . $t->slurp('access.log'), qr/\Q$PASS\E/,
       'soap_login: the password is in no log');

# the same shape without sf_oauth_soap_login goes on, with the token
$r = soap_at($t->port, envelope($SESSION, ' ' x (70 * 1024), $QUERY));
is($r->{status}, 200, 'without soap_login: a call past 64 KiB goes on');
my $entry = $t->stats()->{soap_log}[-1];
is($entry->{op}, 'query', 'without soap_login: the query reached Salesforce');
ok($entry->{session_valid}, 'without soap_login: with the token');

# with soap_login, a short non-login call still goes on
$r = soap_at($login_port, envelope($SESSION, '', $QUERY));
is($r->{status}, 200, 'soap_login: a short query goes on');

# -- no token to be had: each API in its own shape ----------------------------

$t->mode('invalid_grant');
$t->mock('revoke');

$r = $t->get('/services/data/v59.0/sobjects');
is($r->{status}, 502, 'REST, no token: 502');
like($r->{headers}{'content-type'} // '', qr{^application/json},
     'REST, no token: JSON as before');
is($r->{json}{error}, 'sf_oauth_token_unavailable', 'REST, no token: its code');

for my $case ([ 'SOAP query', $t->port, envelope($SESSION, '', $QUERY) ],
              [ 'SOAP login()', $login_port, envelope('', '', $LOGIN) ])
{
    my ($name, $port, $env) = @$case;

    $r = soap_at($port, $env);
    is($r->{status}, 502, "$name, no token: 502");
    like($r->{headers}{'content-type'} // '', qr{^text/xml},
         "$name, no token: a SOAP fault, not JSON");
    my $x = xml_inspect($r->{content});
    ok($x->{ok}, "$name, no token: well-formed") or diag($r->{content});
    is($x->{faultcode_ns}, $ENV_NS, "$name, no token: faultcode in soapenv");
    is($x->{faultcode_local}, 'Server', "$name, no token: soapenv:Server");
    like($x->{faultstring} // '',
         qr/^sf_oauth: sf_oauth_token_unavailable: credential "crm": .*invalid_grant/,
         "$name, no token: the faultstring carries the cause");
    like($r->{headers}{'retry-after'} // '', qr/^\d+$/,
         "$name, no token: Retry-After");
    is($r->{headers}{'cache-control'}, 'no-store',
       "$name, no token: Cache-Control no-store");
    unlike($r->{content}, qr/\Q$PASS\E/, "$name, no token: no password");
}

$r = $t->http('POST', '/services/async/59.0/job',
              body => '<?xml version="1.0" encoding="UTF-8"?>'
                    . '<jobInfo xmlns="http://www.force.com/2009/06/asyncapi/dataload">'
                    . '<operation>insert</operation><object>Account</object>'
                    . '<contentType>CSV</contentType></jobInfo>',
              headers => { 'Content-Type' => 'application/xml; charset=UTF-8',
                           'X-SFDC-Session' => 'bogus' });
is($r->{status}, 502, 'Bulk XML, no token: 502');
like($r->{headers}{'content-type'} // '', qr{^application/xml},
     'Bulk XML, no token: XML');
my $x = xml_inspect($r->{content});
ok($x->{ok}, 'Bulk XML, no token: well-formed') or diag($r->{content});
is($x->{root}, '{http://www.force.com/2009/06/asyncapi/dataload}error',
   'Bulk XML, no token: the Bulk API\'s <error>');
like($r->{content},
     qr{<exceptionCode>sf_oauth_token_unavailable</exceptionCode><exceptionMessage>sf_oauth_token_unavailable: credential &quot;crm&quot;: [^<]*invalid_grant},
     'Bulk XML, no token: exceptionCode and exceptionMessage with the cause');

$r = $t->http('POST', '/services/async/59.0/job',
              body => '{"operation":"insert","object":"Account",'
                    . '"contentType":"JSON"}',
              headers => { 'Content-Type' => 'application/json',
                           'X-SFDC-Session' => 'bogus' });
is($r->{status}, 502, 'Bulk JSON, no token: 502');
like($r->{headers}{'content-type'} // '', qr{^application/json},
     'Bulk JSON, no token: JSON');
is(($r->{json} // {})->{exceptionCode}, 'sf_oauth_token_unavailable',
   'Bulk JSON, no token: exceptionCode');
like(($r->{json} // {})->{exceptionMessage} // '', qr/credential "crm": .*invalid_grant/,
     'Bulk JSON, no token: exceptionMessage with the cause');

SKIP: {
    skip 'python3-zeep is missing', 2 unless $HAVE_ZEEP;

    my $out = `$PY $SfTest::ROOT/t/lib/soap_client.py http://127.0.0.1:$login_port login --username u --password '$PASS' 2>&1`;
    my $z = eval { decode_json($out) } // { raw => $out };
    is(($z->{fault} // {})->{code}, 'soapenv:Server',
       'zeep login(), no token: a Fault, soapenv:Server')
        or diag(explain $z);
    like(($z->{fault} // {})->{message} // '', qr/invalid_grant/,
         'zeep login(), no token: the fault names the cause');
}

SKIP: {
    skip 'jsforce is not installed', 2 unless $HAVE_JSFORCE;

    my $url = 'http://127.0.0.1:' . $t->port;
    my $out = `NODE_PATH=$NODE_PATH node $SfTest::ROOT/t/lib/bulk_jsforce.js $url 1 2>&1`;
    my $j = eval { decode_json((split /\n/, $out)[-1]) } // { raw => $out };
    is(($j->{error} // {})->{errorCode}, 'sf_oauth_token_unavailable',
       'jsforce Bulk, no token: the error code is read')
        or diag(explain $j);
    like(($j->{error} // {})->{message} // '', qr/invalid_grant/,
         'jsforce Bulk, no token: and the cause');
}

unlike($t->error_log, qr/\[alert\]/, 'no alert');

$t->finish;
done_testing;
