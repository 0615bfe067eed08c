#!/usr/bin/perl

# SOAP: the module puts the token into the envelope's
# <SessionHeader><sessionId>, whatever the client put there or left out,
# in the endpoint's namespace and with any prefix; a dead session (HTTP 500
# with faultcode INVALID_SESSION_ID) is refreshed once and replayed; other
# faults reach the client byte for byte; a malformed envelope or one with a
# DOCTYPE gets the module's own 400 fault and never reaches Salesforce.
#
# Also: every endpoint's namespace, HTTP/2, gzip-compressed envelopes and
# gzip-compressed faults, a 20 MiB deploy through a 16k body buffer (RSS),
# 100 concurrent replays, sf_oauth_soap_login (zeep, jsforce), and that no
# answer or log holds a token.
#
# A real client (python3-zeep, generated from t/lib/wsdl/partner.wsdl; run
# with Debian's /usr/bin/python3), jsforce when t/lib/install-node-deps.sh
# has installed it, and raw envelopes.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use Digest::SHA qw(sha256 sha256_hex);
use IO::Select;
use IO::Socket::INET;
use JSON::PP;
use IO::Compress::Gzip qw(gzip $GzipError);
use IO::Uncompress::Gunzip qw(gunzip);
use MIME::Base64 qw(encode_base64);
use Test::More;
use Time::HiRes qw(sleep time);

my $PY = '/usr/bin/python3';    # Debian's, which has python3-zeep
my $HAVE_ZEEP = system("$PY -c 'import zeep' 2>/dev/null") == 0;
my $NODE_PATH = "$SfTest::ROOT/build/node/node_modules";
my $HAVE_JSFORCE = -f "$NODE_PATH/jsforce/package.json"
                   && system('node -e 1 2>/dev/null') == 0;

my $ENV_NS = 'http://schemas.xmlsoap.org/soap/envelope/';
my %NS = (
    u => 'urn:partner.soap.sforce.com',
    c => 'urn:enterprise.soap.sforce.com',
    m => 'http://soap.sforce.com/2006/04/metadata',
    T => 'urn:tooling.soap.sforce.com',
    class => 'http://soap.sforce.com/schemas/class/MyService',
);

my $t = SfTest->new;
$t->start_mock;
my $h2_port = SfTest::free_port();
my $login_port = SfTest::free_port();
$t->simple_conf(http_extra => <<"EOF");
    client_body_buffer_size 16k;
    client_max_body_size 64m;

    server {
        listen 127.0.0.1:$login_port;

        location /services/ {
            sf_oauth crm;
            sf_oauth_soap_login on;
            allow 127.0.0.1;
            deny all;
            add_header X-SF-OAuth-Status \$sf_oauth_status always;
            proxy_pass http://127.0.0.1:%%MOCK%%;
        }

        # over HTTP/1.1: nginx 1.22 answers an HTTP/2 request whose body it
        # discards with RST_STREAM more often than not (any early answer)
        location /nobuf/services/ {
            sf_oauth crm;
            proxy_request_buffering off;
            proxy_pass http://127.0.0.1:%%MOCK%%/services/;
        }
    }

    server {
        listen 127.0.0.1:$h2_port http2;

        location /services/ {
            sf_oauth crm;
            add_header X-SF-OAuth-Status \$sf_oauth_status always;
            proxy_pass http://127.0.0.1:%%MOCK%%;
        }
    }
EOF
$t->start;

my $U = '/services/Soap/u/59.0';
my @responses;    # every answer through nginx, checked for tokens at the end

sub token { ($t->tokens)[-1] }

# a SOAP call, its answer kept for the check that no answer holds a token
sub soap {
    my ($path, $body, %headers) = @_;
    my $r = $t->soap($path, $body, headers => \%headers);
    push @responses, $r;
    return $r;
}

# the bytes from the Body's start tag to the end: what the module must
# never change
sub tail {
    my ($env) = @_;
    $env =~ /<(?:[A-Za-z_][\w.\-]*:)?Body[\s\/>]/ or die "no Body in $env";
    return substr($env, $-[0]);
}

sub xml_inspect {
    my ($xml) = @_;
    my $file = $t->dir . '/inspect.xml';
    open my $fh, '>', $file or die;
    print $fh $xml;
    close $fh;
    my $out = `$PY $SfTest::ROOT/t/lib/xml_inspect.py < $file`;
    return decode_json($out);
}

sub zeep { zeep_at($t->port, @_) }

sub zeep_at {
    my ($port, @args) = @_;
    my $q = join ' ', map { "'" . s/'/'\\''/gr . "'" } @args;
    my $out = `$PY $SfTest::ROOT/t/lib/soap_client.py http://127.0.0.1:$port $q 2>&1`;
    my $res = eval { decode_json($out) };
    if (!$res) {
        diag("soap_client.py: $out");
        return { ok => 0 };
    }
    push @responses, { content => $res->{received} // '',
                       headers => $res->{headers} // {} };
    return $res;
}

# The checks on what reached the mock for an envelope that the module
# injected into: one SessionHeader, in the endpoint's namespace, holding the
# current token; nothing of the client's own value; the Body untouched; a
# Content-Length that matches the bytes.
sub injected_ok {
    my ($name, $sent, $ns, $entry) = @_;

    my $st = $t->stats();
    $entry //= $st->{soap_log}[-1];
    my $token = $st->{issued_access_tokens}[-1];

    is($entry->{status}, 200, "$name: the mock answered 200")
        or diag(explain $entry);
    is_deeply($entry->{session_headers}, [$ns],
              "$name: one SessionHeader, in $ns");
    ok($entry->{session_valid}, "$name: a valid session");
    ok(defined $entry->{session_id} && $entry->{session_id} eq $token,
       "$name: the sessionId is the module's current token");
    ok(!grep({ $_ ne $token } @{ $entry->{session_ids} }),
       "$name: no other sessionId arrived")
        or diag(explain $entry->{session_ids});
    is($entry->{content_length}, $entry->{body_len},
       "$name: Content-Length is the body's length");
    is($entry->{tail_sha256}, sha256_hex(tail($sent)),
       "$name: the Body arrived byte for byte");
    ok($entry->{header}, "$name: the envelope has a soap Header");
    unlike($st->{soap_last_envelope}, qr/bogus/,
           "$name: the client's own sessionId is gone");
}

# -- a real client: zeep ----------------------------------------------------

SKIP: {
    skip 'python3-zeep is missing (apt-get install python3-zeep)', 30
        unless $HAVE_ZEEP;

    my $r = zeep('query', '--session', 'bogus');
    ok($r->{ok}, 'zeep, cold: query succeeded') or diag(explain $r);
    is($r->{result}{size}, 2, 'zeep: a QueryResult of 2 records');
    is($r->{result}{records}[0]{Name}, 'Acme', 'zeep: the records parsed');
    is($r->{headers}{'X-SF-OAuth-Status'}, 'WAIT', 'zeep, cold: WAIT');
    is($t->token_requests, 1, 'zeep, cold: one token request');
    injected_ok('zeep query', $r->{sent}, $NS{u});
    like($r->{sent}, qr/<soap-env:Header>/, 'zeep wrote soap-env: with a Header');

    $r = zeep('create', '--name', 'Acme', '--name', 'Globex');
    ok($r->{ok}, 'zeep: create succeeded') or diag(explain $r);
    is(scalar @{ $r->{result} // [] }, 2, 'zeep: two SaveResults');
    ok($r->{result}[0]{success}, 'zeep: create success');
    is($r->{headers}{'X-SF-OAuth-Status'}, 'HIT', 'zeep: HIT');
    injected_ok('zeep create', $r->{sent}, $NS{u});

    $r = zeep('describe', '--no-session');
    ok($r->{ok}, 'zeep without a SessionHeader: describeSObject succeeded')
        or diag(explain $r);
    is($r->{result}{name}, 'Account', 'zeep: DescribeSObjectResult');
    unlike($r->{sent}, qr/Header/, 'zeep sent no soap Header at all');
    injected_ok('zeep without a Header', $r->{sent}, $NS{u});

    $r = zeep('login', '--username', 'legacy@example.com',
              '--password', 'hunter2');
    ok($r->{ok}, 'zeep: login answered') or diag(explain $r);
    like($r->{result}{serverUrl} // '', qr{/services/Soap/u/59\.0/},
         'zeep: a LoginResult');
    my $login = $t->stats()->{soap_logins}[-1];
    is($login->{username}, 'legacy@example.com', 'login reached the mock');
    ok($login->{password}, 'login: the password arrived');

    # after a revoke: one refresh, the replay carries the new token
    my $before = $t->token_requests;
    my $old = token();
    $t->mock('revoke');
    $r = zeep('query', '--session', 'bogus');
    ok($r->{ok}, 'zeep after a revoke: the client sees success')
        or diag(explain $r);
    is($r->{status}, 200, 'zeep after a revoke: HTTP 200');
    is($r->{headers}{'X-SF-OAuth-Status'}, 'RETRY', 'zeep after a revoke: RETRY');
    is($t->token_requests, $before + 1, 'zeep after a revoke: one token request');
    my ($first, $second) = map { $_ // {} } @{ $t->stats()->{soap_log} }[-2, -1];
    is($first->{status}, 500, 'the first attempt got the INVALID_SESSION_ID 500');
    is($first->{session_id}, $old, 'the first attempt carried the old token');
    injected_ok('zeep replay', $r->{sent}, $NS{u}, $second);
    isnt($second->{session_id}, $old, 'the replay carried a new token');

    # a non-session fault, through zeep
    $before = $t->token_requests;
    $r = zeep('query', '--soql', 'SELECT bad FROM Account');
    ok(!$r->{ok}, 'zeep: a bad query fails');
    is($r->{fault}{code}, 'sf:MALFORMED_QUERY', 'zeep: Salesforce\'s fault');
    is($t->token_requests, $before, 'zeep: a MALFORMED_QUERY costs no token');
}

# -- login() answered by the module (sf_oauth_soap_login on) -----------------

{
    my $PASS = 'S3cret-Pass-4711';
    my $USER = 'legacy.user@example.com';
    my ($org) = token() =~ /^([^!]+)!/;
    my $placeholder = "$org!SF_OAUTH_PROXY_SESSION";
    my $st = $t->stats();
    my ($logins, $api) = (scalar @{ $st->{soap_logins} }, $st->{api_requests});

  SKIP: {
        skip 'python3-zeep is missing', 12 unless $HAVE_ZEEP;

        my $r = zeep_at($login_port, 'login', '--username', $USER,
                        '--password', $PASS);
        ok($r->{ok}, 'soap_login: zeep login() succeeds') or diag(explain $r);
        my $lr = $r->{result} || {};
        is($lr->{serverUrl}, "http://127.0.0.1:$login_port/services/Soap/u/59.0/$org",
           'soap_login: serverUrl points back at the proxy');
        is($lr->{metadataServerUrl},
           "http://127.0.0.1:$login_port/services/Soap/m/59.0/$org",
           'soap_login: metadataServerUrl too');
        is($lr->{sessionId}, $placeholder, 'soap_login: a placeholder sessionId');
        like($lr->{userId} // '', qr/^005000000000001/, 'soap_login: the token\'s user');
        like($lr->{userInfo}{organizationId} // '', qr/^\Q$org\E/,
             'soap_login: the token\'s org');
        ok(defined $lr->{sandbox} && !$lr->{sandbox}, 'soap_login: not a sandbox');
        ok(defined $lr->{passwordExpired} && !$lr->{passwordExpired},
           'soap_login: password not expired');

        $r = zeep_at($login_port, 'query', '--session', $placeholder);
        ok($r->{ok}, 'soap_login: a query with the placeholder session succeeds')
            or diag(explain $r);
        injected_ok('soap_login: query', $r->{sent}, $NS{u});

        my $before = $t->token_requests;
        $t->mock('revoke');
        $r = zeep_at($login_port, 'query', '--session', $placeholder);
        ok($r->{ok}, 'soap_login: after a revoke, the query succeeds');
        is($t->token_requests, $before + 1, 'soap_login: one token request');
    }

    for my $kind ('u', 'c') {
        my $path = "/services/Soap/$kind/59.0";
        my $env = qq{<soapenv:Envelope xmlns:soapenv="$ENV_NS" xmlns:urn="$NS{$kind}"><soapenv:Body><urn:login><urn:username>$USER</urn:username><urn:password>$PASS</urn:password></urn:login></soapenv:Body></soapenv:Envelope>};
        my $r = $t->http('POST', $path, port => $login_port, body => $env,
                         headers => { 'Content-Type' => 'text/xml', SOAPAction => '""' });
        push @responses, $r;
        is($r->{status}, 200, "soap_login: raw login() to /$kind/: 200");
        like($r->{content}, qr{<serverUrl>http://127\.0\.0\.1:$login_port/services/Soap/$kind/59\.0/\Q$org\E</serverUrl>},
             "soap_login: /$kind/: serverUrl on the proxy");
        my $x = xml_inspect($r->{content});
        ok($x->{ok}, "soap_login: /$kind/: well-formed");

        $env = qq{<soapenv:Envelope xmlns:soapenv="$ENV_NS"><soapenv:Header><SessionHeader xmlns="$NS{$kind}"><sessionId>$placeholder</sessionId></SessionHeader></soapenv:Header><soapenv:Body><logout xmlns="$NS{$kind}"/></soapenv:Body></soapenv:Envelope>};
        $r = $t->http('POST', $path, port => $login_port, body => $env,
                      headers => { 'Content-Type' => 'text/xml', SOAPAction => '""' });
        push @responses, $r;
        is($r->{status}, 200, "soap_login: logout() to /$kind/: 200");
        like($r->{content}, qr/logoutResponse/, "soap_login: /$kind/: a logoutResponse");
    }

  SKIP: {
        skip 'jsforce is missing: run t/lib/install-node-deps.sh', 9
            unless $HAVE_JSFORCE;
        my $soap_from = scalar @{ $t->stats()->{soap_log} };
        my $out = `NODE_PATH=$NODE_PATH node $SfTest::ROOT/t/lib/jsforce_login.js http://127.0.0.1:$login_port '$USER' '$PASS' 2>&1`;
        my $j = eval { decode_json($out) } || { ok => 0, raw => $out };
        ok($j->{ok}, 'soap_login: jsforce login(), then REST, SOAP and Bulk, succeeds')
            or diag(explain $j);
        is($j->{instanceUrl}, "http://127.0.0.1:$login_port",
           'soap_login: jsforce\'s instanceUrl is the proxy');
        is($j->{accessToken}, $placeholder, 'soap_login: jsforce holds the placeholder');
        is($j->{rest}{path}, '/services/data/v59.0/sobjects', 'soap_login: jsforce REST call');
        is($j->{rest}{authorization_count}, 1, 'soap_login: one Authorization');
        is(join(' ', map { "$_->{method} $_->{path}" } @{ $j->{crud} || [] }),
           'POST /services/data/v59.0/sobjects/Account '
           . 'GET /services/data/v59.0/sobjects/Account/001000000000001AAA '
           . 'PATCH /services/data/v59.0/sobjects/Account/001000000000001AAA '
           . 'DELETE /services/data/v59.0/sobjects/Account/001000000000001AAA',
           'soap_login: jsforce CRUD over REST');
        my @creates = grep { ($_->{op} // '') eq 'create' }
                      @{ $t->stats()->{soap_log} }[$soap_from .. $#{ $t->stats()->{soap_log} }];
        ok(@creates == 1 && $creates[0]{status} == 200
           && $creates[0]{session_valid},
           'soap_login: jsforce\'s SOAP create reached Salesforce once, '
           . 'with a valid session') or diag(explain \@creates);
        is(scalar(grep { $_->{success} } @{ $j->{bulk} || [] }), 2,
           'soap_login: jsforce Bulk load');
        ok(!grep({ $_ eq $placeholder } @{ $t->stats()->{bulk_sessions} }),
           'soap_login: the placeholder never reached Salesforce');
    }

    $st = $t->stats();
    is(scalar @{ $st->{soap_logins} }, $logins, 'soap_login: no login() reached Salesforce');
    ok(!grep({ index($_, $PASS) >= 0 } @{ $st->{soap_session_ids} }, $st->{soap_last_envelope}),
       'soap_login: the password never reached Salesforce');
    my $logs = $t->error_log . $t->slurp('access.log');
    ok(index($logs, $PASS) < 0, 'soap_login: the password is in no log');
}

# -- raw envelopes: prefixes and head shapes -------------------------------

my $Q = qq{<query xmlns="$NS{u}"><queryString>SELECT Id FROM Account</queryString></query>};
my $SH = qq{<SessionHeader xmlns="$NS{u}"><sessionId>bogus</sessionId></SessionHeader>};

my @cases = (
    [ 'soapenv:, SessionHeader with a bogus sessionId' =>
      qq{<?xml version="1.0" encoding="UTF-8"?>\n<soapenv:Envelope xmlns:soapenv="$ENV_NS"><soapenv:Header>$SH</soapenv:Header><soapenv:Body>$Q</soapenv:Body></soapenv:Envelope>} ],
    [ 'env: prefix' =>
      qq{<env:Envelope xmlns:env="$ENV_NS"><env:Header>$SH</env:Header><env:Body>$Q</env:Body></env:Envelope>} ],
    [ 's: prefix, no XML declaration' =>
      qq{<s:Envelope xmlns:s="$ENV_NS" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><s:Header>$SH</s:Header><s:Body>$Q</s:Body></s:Envelope>} ],
    [ 'default namespace' =>
      qq{<Envelope xmlns="$ENV_NS"><Header>$SH</Header><Body>$Q</Body></Envelope>} ],
    [ 'a prefixed SessionHeader (SoapUI style)' =>
      qq{<soapenv:Envelope xmlns:soapenv="$ENV_NS" xmlns:urn="$NS{u}">\n   <soapenv:Header>\n      <urn:SessionHeader>\n         <urn:sessionId>bogus</urn:sessionId>\n      </urn:SessionHeader>\n   </soapenv:Header>\n   <soapenv:Body>\n      <urn:query>\n         <urn:queryString>SELECT Id FROM Account</urn:queryString>\n      </urn:query>\n   </soapenv:Body>\n</soapenv:Envelope>\n} ],
    [ 'no Header' =>
      qq{<soapenv:Envelope xmlns:soapenv="$ENV_NS"><soapenv:Body>$Q</soapenv:Body></soapenv:Envelope>} ],
    [ 'no Header, default namespace' =>
      qq{<Envelope xmlns="$ENV_NS"><Body>$Q</Body></Envelope>} ],
    [ 'empty Header element' =>
      qq{<soapenv:Envelope xmlns:soapenv="$ENV_NS"><soapenv:Header/><soapenv:Body>$Q</soapenv:Body></soapenv:Envelope>} ],
    [ 'empty Header with an end tag' =>
      qq{<soapenv:Envelope xmlns:soapenv="$ENV_NS"><soapenv:Header>\n</soapenv:Header><soapenv:Body>$Q</soapenv:Body></soapenv:Envelope>} ],
    [ 'other headers, no SessionHeader' =>
      qq{<soapenv:Envelope xmlns:soapenv="$ENV_NS"><soapenv:Header><CallOptions xmlns="$NS{u}"><client>legacy</client></CallOptions><QueryOptions xmlns="$NS{u}"><batchSize>200</batchSize></QueryOptions></soapenv:Header><soapenv:Body>$Q</soapenv:Body></soapenv:Envelope>} ],
    [ 'an empty <sessionId/>' =>
      qq{<soapenv:Envelope xmlns:soapenv="$ENV_NS"><soapenv:Header><SessionHeader xmlns="$NS{u}"><sessionId/></SessionHeader></soapenv:Header><soapenv:Body>$Q</soapenv:Body></soapenv:Envelope>} ],
    [ 'a SessionHeader without a sessionId' =>
      qq{<soapenv:Envelope xmlns:soapenv="$ENV_NS"><soapenv:Header><SessionHeader xmlns="$NS{u}"></SessionHeader></soapenv:Header><soapenv:Body>$Q</soapenv:Body></soapenv:Envelope>} ],
    [ 'comments and CDATA in the head' =>
      qq{<?xml version="1.0"?><!-- <sessionId>in-a-comment</sessionId> --><soapenv:Envelope xmlns:soapenv="$ENV_NS"><!-- a comment --><soapenv:Header><!-- <SessionHeader><sessionId>x</sessionId></SessionHeader> --><SessionHeader xmlns="$NS{u}"><!-- c --><sessionId><![CDATA[bogus]]></sessionId></SessionHeader></soapenv:Header><soapenv:Body>$Q</soapenv:Body></soapenv:Envelope>} ],
    [ 'a sessionId split by CDATA and a comment' =>
      qq{<soapenv:Envelope xmlns:soapenv="$ENV_NS"><soapenv:Header><SessionHeader xmlns="$NS{u}"><sessionId>bo<!-- x --><![CDATA[g]]>us</sessionId></SessionHeader></soapenv:Header><soapenv:Body>$Q</soapenv:Body></soapenv:Envelope>} ],
    [ 'a SessionHeader in another namespace only' =>
      qq{<soapenv:Envelope xmlns:soapenv="$ENV_NS"><soapenv:Header><SessionHeader xmlns="urn:example.com"><sessionId>other</sessionId></SessionHeader></soapenv:Header><soapenv:Body>$Q</soapenv:Body></soapenv:Envelope>},
      { other_ns => 'urn:example.com' } ],
    [ 'a 40 KiB head (past client_body_buffer_size)' =>
      qq{<soapenv:Envelope xmlns:soapenv="$ENV_NS"><soapenv:Header><!-- } . ('pad ' x 10240) . qq{ --><CallOptions xmlns="$NS{u}"><client>} . ('c' x 2000) . qq{</client></CallOptions>$SH</soapenv:Header><soapenv:Body>$Q</soapenv:Body></soapenv:Envelope>} ],
    [ 'a SessionHeader inside the Body is not the header' =>
      qq{<soapenv:Envelope xmlns:soapenv="$ENV_NS"><soapenv:Body><query xmlns="$NS{u}"><queryString>SELECT Id FROM Account</queryString><SessionHeader><sessionId>in-the-body</sessionId></SessionHeader></query></soapenv:Body></soapenv:Envelope>} ],
    [ 'CRLF and tabs between the tags' =>
      qq{<soapenv:Envelope\r\n\txmlns:soapenv="$ENV_NS"\r\n>\r\n\t<soapenv:Header\r\n>\r\n\t\t<SessionHeader xmlns="$NS{u}"\r\n><sessionId\r\n>bogus</sessionId\r\n></SessionHeader\r\n>\r\n\t</soapenv:Header\r\n>\r\n\t<soapenv:Body>$Q</soapenv:Body>\r\n</soapenv:Envelope>\r\n} ],
);

for my $case (@cases) {
    my ($name, $env, $opt) = @$case;
    my $r = soap($U, $env);
    is($r->{status}, 200, "$name: 200") or diag($r->{content});
    like($r->{content}, qr/<queryResponse>/, "$name: the query's answer");
    if ($opt && $opt->{other_ns}) {
        my $e = $t->stats()->{soap_log}[-1];
        ok($e->{session_valid}, "$name: a SessionHeader in $NS{u} was added");
        is_deeply([ sort @{ $e->{session_headers} } ],
                  [ sort($opt->{other_ns}, $NS{u}) ],
                  "$name: the other one is left alone, one more added");
        is($e->{content_length}, $e->{body_len}, "$name: Content-Length right");
        is($e->{tail_sha256}, sha256_hex(tail($env)), "$name: Body byte for byte");
        next;
    }
    injected_ok($name, $env, $NS{u});
}

# the head is in the first bytes of a chunked request body, cut mid-tag
{
    my $env = $cases[0][1];
    my @parts = (substr($env, 0, 60), substr($env, 60, 37), substr($env, 97));
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $t->port)
        or die;
    print $s "POST $U HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml\r\n"
             . "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    for my $p (@parts) {
        printf $s "%x\r\n%s\r\n", length $p, $p;
        sleep 0.05;
    }
    print $s "0\r\n\r\n";
    local $/;
    my $res = <$s> // '';
    like($res, qr{^HTTP/1\.1 200}, 'a chunked request body: 200');
    injected_ok('chunked request body', $env, $NS{u});
}

# -- each endpoint's namespace ----------------------------------------------

for my $ep ([ u => "$U/00D5g000004Tmock", 'query',
              '<queryString>SELECT Id FROM Account</queryString>' ],
            [ c => '/services/Soap/c/59.0', 'query',
              '<queryString>SELECT Id FROM Account</queryString>' ],
            [ T => '/services/Soap/T/59.0', 'query',
              '<queryString>SELECT Id FROM ApexClass</queryString>' ],
            [ m => '/services/Soap/m/59.0', 'deploy',
              '<ZipFile>UEsFBgAAAAAAAAAAAAAAAAAAAAAAAA==</ZipFile>' ],
            [ class => '/services/Soap/class/MyService', 'doWork',
              '<input>x</input>' ])
{
    my ($kind, $path, $op, $args) = @$ep;
    my $ns = $NS{$kind};
    my $body = qq{<$op xmlns="$ns">$args</$op>};

    for my $shape ('no Header', 'bogus sessionId') {
        my $head = $shape eq 'no Header' ? ''
            : qq{<soapenv:Header><SessionHeader xmlns="$ns"><sessionId>bogus</sessionId></SessionHeader></soapenv:Header>};
        my $env = qq{<soapenv:Envelope xmlns:soapenv="$ENV_NS">$head<soapenv:Body>$body</soapenv:Body></soapenv:Envelope>};
        my $r = soap($path, $env);
        is($r->{status}, 200, "$path, $shape: 200") or diag($r->{content});
        injected_ok("$path, $shape", $env, $ns);
    }
}

# -- HTTP/2 --------------------------------------------------------------------

for my $size (0, 40000) {
    my $env = qq{<soapenv:Envelope xmlns:soapenv="$ENV_NS"><soapenv:Header>$SH</soapenv:Header><soapenv:Body><query xmlns="$NS{u}"><queryString>SELECT Id FROM Account WHERE Name = '} . ('q' x $size) . qq{'</queryString></query></soapenv:Body></soapenv:Envelope>};
    my $file = $t->dir . '/h2.xml';
    open my $fh, '>', $file or die;
    print $fh $env;
    close $fh;
    for my $revoke (0, 1) {
        my $name = "HTTP/2, a $size-byte query" . ($revoke ? ', after a revoke' : '');
        $t->mock('revoke') if $revoke;
        my $before = $t->token_requests;
        my $out = `curl -s -o /dev/null -w '%{http_code} %{http_version}' --http2-prior-knowledge -H 'Content-Type: text/xml' --data-binary \@$file http://127.0.0.1:$h2_port$U`;
        is($out, '200 2', "$name: 200");
        is($t->token_requests, $before + $revoke, "$name: $revoke token request(s)");
        injected_ok($name, $env, $NS{u});
    }
}

# -- proxy_request_buffering off: the envelope cannot get the session --------

{
    my $st = $t->stats();
    my $r = $t->http('POST', "/nobuf$U", port => $login_port, body => $cases[5][1],
                     headers => { 'Content-Type' => 'text/xml' });
    push @responses, $r;
    is($r->{status}, 500, 'proxy_request_buffering off: a 500 fault')
        or diag($r->{content});
    my $x = xml_inspect($r->{content});
    is($x->{faultcode_local}, 'Server', 'proxy_request_buffering off: soapenv:Server');
    like($x->{faultstring} // '', qr/^sf_oauth: .*proxy_request_buffering/,
         'proxy_request_buffering off: the fault says why');
    is($t->stats()->{api_requests}, $st->{api_requests},
       'proxy_request_buffering off: the mock was not reached');
    like($t->error_log, qr/\[error\].*proxy_request_buffering is off/,
         'proxy_request_buffering off: an error line');
}

# -- malformed envelopes: the module's own 400 fault ------------------------

sub module_fault_ok {
    my ($name, $r, $api_before, $soap_before) = @_;

    is($r->{status}, 400, "$name: 400") or diag($r->{content});
    like($r->{headers}{'content-type'} // '', qr{^text/xml\b},
         "$name: Content-Type text/xml");
    my $x = xml_inspect($r->{content});
    ok($x->{ok}, "$name: the fault is well-formed XML") or diag($r->{content});
    is($x->{root}, "{$ENV_NS}Envelope", "$name: a SOAP 1.1 envelope");
    is($x->{faultcode_local}, 'Client', "$name: faultcode Client");
    is($x->{faultcode_ns}, $ENV_NS,
       "$name: the faultcode's prefix is the SOAP envelope namespace");
    like($x->{faultstring} // '', qr/^sf_oauth: \S/,
         "$name: faultstring 'sf_oauth: <reason>'");
    my $st = $t->stats();
    is($st->{api_requests}, $api_before, "$name: the mock was not reached");
    is(scalar @{ $st->{soap_log} }, $soap_before, "$name: no SOAP call arrived");
}

my @malformed = (
    [ 'mismatched tags in the head' =>
      qq{<soapenv:Envelope xmlns:soapenv="$ENV_NS"><soapenv:Header><SessionHeader xmlns="$NS{u}"><sessionId>bogus</sessionId></soapenv:Header><soapenv:Body>$Q</soapenv:Body></soapenv:Envelope>} ],
    [ 'the body ends inside the head' =>
      qq{<soapenv:Envelope xmlns:soapenv="$ENV_NS"><soapenv:Header><SessionHeader xmlns="$NS{u}"><sessionId>bog} ],
    [ 'not XML' => "hello, this is not an envelope\n" ],
    [ 'an unbound prefix' =>
      qq{<soapenv:Envelope><soapenv:Header/><soapenv:Body>$Q</soapenv:Body></soapenv:Envelope>} ],
    [ 'a root that is not a SOAP Envelope' =>
      qq{<query xmlns="$NS{u}"><queryString>SELECT Id FROM Account</queryString></query>} ],
    [ 'an Envelope in another namespace' =>
      qq{<soapenv:Envelope xmlns:soapenv="urn:not-soap"><soapenv:Body>$Q</soapenv:Body></soapenv:Envelope>} ],
    [ 'a broken attribute in the Envelope tag' =>
      qq{<soapenv:Envelope xmlns:soapenv="$ENV_NS" a=b><soapenv:Body>$Q</soapenv:Body></soapenv:Envelope>} ],
);

for my $case (@malformed) {
    my ($name, $env) = @$case;
    my $st = $t->stats();
    my $r = soap($U, $env);
    module_fault_ok("malformed, $name", $r, $st->{api_requests},
                    scalar @{ $st->{soap_log} });
}

# -- DOCTYPE: XXE and entity expansion ----------------------------------------

{
    my $mock = $t->mock_url;
    my @xxe = (
        [ 'XXE, an external entity' =>
          qq{<?xml version="1.0"?>\n<!DOCTYPE x [<!ENTITY e SYSTEM "$mock/__mock/xxe">]>\n<soapenv:Envelope xmlns:soapenv="$ENV_NS"><soapenv:Header><SessionHeader xmlns="$NS{u}"><sessionId>&e;</sessionId></SessionHeader></soapenv:Header><soapenv:Body><query xmlns="$NS{u}"><queryString>&e;</queryString></query></soapenv:Body></soapenv:Envelope>} ],
        [ 'XXE, a parameter entity' =>
          qq{<!DOCTYPE soapenv:Envelope [<!ENTITY % p SYSTEM "$mock/__mock/xxe?p"> %p;]><soapenv:Envelope xmlns:soapenv="$ENV_NS"><soapenv:Body>$Q</soapenv:Body></soapenv:Envelope>} ],
        [ 'XXE, an external DTD' =>
          qq{<!DOCTYPE soapenv:Envelope SYSTEM "$mock/__mock/xxe?dtd"><soapenv:Envelope xmlns:soapenv="$ENV_NS"><soapenv:Body>$Q</soapenv:Body></soapenv:Envelope>} ],
        [ 'entity expansion (billion laughs)' =>
          qq{<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol0 "lol">}
          . join('', map { qq{<!ENTITY lol$_ "} . ('&lol' . ($_ - 1) . ';') x 10
                           . '">' } 1 .. 9)
          . qq{]><soapenv:Envelope xmlns:soapenv="$ENV_NS"><soapenv:Body><query xmlns="$NS{u}"><queryString>&lol9;</queryString></query></soapenv:Body></soapenv:Envelope>} ],
    );

    for my $case (@xxe) {
        my ($name, $env) = @$case;
        my $st = $t->stats();
        my $start = time;
        my $r = soap($U, $env);
        ok(time - $start < 5, "$name: answered at once");
        module_fault_ok($name, $r, $st->{api_requests},
                        scalar @{ $st->{soap_log} });
    }
    sleep 0.5;      # on purpose: a late fetch of an entity would show now
    is($t->stats()->{xxe_hits}, 0, 'XXE: nothing was fetched');
}

# -- a 20 MiB Metadata deploy through client_body_buffer_size 16k -----------

sub worker_rss {
    my %rss;
    for my $pid ($t->worker_pids) {
        open my $fh, '<', "/proc/$pid/status" or next;
        while (<$fh>) {
            $rss{$pid} = $1 if /^VmRSS:\s+(\d+) kB/;
        }
    }
    return \%rss;
}

{
    # 15 MiB of incompressible bytes: 20 MiB of base64
    my $zip = '';
    my $seed = 'sf_oauth deploy';
    $zip .= sha256($seed . length $zip) while length $zip < 15 * 1048576;
    my $b64 = encode_base64($zip, '');
    my $m = '/services/Soap/m/59.0';
    my $env = qq{<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="$ENV_NS" xmlns:met="$NS{m}"><soapenv:Header><met:SessionHeader><met:sessionId>bogus</met:sessionId></met:SessionHeader></soapenv:Header><soapenv:Body><met:deploy><met:ZipFile>$b64</met:ZipFile><met:DeployOptions><met:checkOnly>true</met:checkOnly></met:DeployOptions></met:deploy></soapenv:Body></soapenv:Envelope>};
    my $tail = sha256_hex(tail($env));

    # warm: a valid token first
    soap($U, $cases[0][1]);

    my $rss0 = worker_rss();
    my $n0 = scalar @{ $t->stats()->{soap_deploys} };

    my $r = soap($m, $env);
    is($r->{status}, 200, '20 MiB deploy: 200') or diag(substr $r->{content}, 0, 2000);
    like($r->{content}, qr/<deployResponse>/, '20 MiB deploy: an AsyncResult');
    my $st = $t->stats();
    my $d = $st->{soap_deploys}[-1] // {};
    is(scalar @{ $st->{soap_deploys} }, $n0 + 1, '20 MiB deploy: one call');
    is($d->{zip_len}, length $zip, '20 MiB deploy: every byte of the zip');
    is($d->{zip_sha256}, sha256_hex($zip), '20 MiB deploy: the right bytes');
    is($d->{tail_sha256}, $tail, '20 MiB deploy: the Body byte for byte');
    injected_ok('20 MiB deploy', $env, $NS{m});

    # the same after a revoke: the body is replayed from its temp file
    my $before = $t->token_requests;
    $t->mock('revoke');
    $r = soap($m, $env);
    is($r->{status}, 200, '20 MiB deploy after a revoke: 200');
    is($r->{headers}{'x-sf-oauth-status'}, 'RETRY', '20 MiB deploy after a revoke: RETRY');
    is($t->token_requests, $before + 1, '20 MiB deploy after a revoke: one token request');
    $st = $t->stats();
    my ($first, $second) = map { $_ // {} } @{ $st->{soap_log} }[-2, -1];
    is($first->{status}, 500, '20 MiB deploy: the first attempt got 500');
    is($first->{tail_sha256}, $tail, '20 MiB deploy: the first Body intact');
    is(($st->{soap_deploys}[-1] // {})->{zip_sha256}, sha256_hex($zip),
       '20 MiB deploy: the replayed zip intact');
    injected_ok('20 MiB deploy, replayed', $env, $NS{m}, $second);

    my $rss1 = worker_rss();
    SKIP: {
        skip 'RSS under valgrind means nothing', 1 if $ENV{SF_TEST_VALGRIND};
        my ($worst) = sort { $b <=> $a }
                      map { ($rss1->{$_} // 0) - ($rss0->{$_} // 0) } keys %$rss0;
        ok(defined $worst && $worst < 16 * 1024,
           'the workers\' RSS grew by less than 16 MiB (' . ($worst // '?') . ' KiB)')
            or diag(explain [$rss0, $rss1]);
    }
}

# -- gzip-compressed envelopes (WSC clients such as Data Loader) -------------

{
    my $env = $cases[0][1];
    my $gz;
    gzip(\$env => \$gz) or die $GzipError;
    soap($U, $env);    # a valid token in the cache

    my $r = soap($U, $gz, 'Content-Encoding' => 'gzip');
    is($r->{status}, 200, 'gzip request: 200') or diag($r->{content});
    injected_ok('gzip request', $env, $NS{u});
    isnt($t->stats()->{soap_log}[-1]{content_encoding} // '', 'gzip',
         'gzip request: not sent as gzip after the edit');

    my $before = $t->token_requests;
    $t->mock('revoke');
    $r = soap($U, $gz, 'Content-Encoding' => 'gzip');
    is($r->{status}, 200, 'gzip request after a revoke: 200');
    is($r->{headers}{'x-sf-oauth-status'}, 'RETRY', 'gzip request after a revoke: RETRY');
    is($t->token_requests, $before + 1, 'gzip request after a revoke: one token request');
    injected_ok('gzip request, replayed', $env, $NS{u});

    # the body in the same packet as the header (read at once), or later
    for my $case ([ 'plain', $env, '' ], [ 'gzip', $gz, "Content-Encoding: gzip\r\n" ]) {
        my ($kind, $body, $extra) = @$case;
        for my $split (0, 1) {
            my $name = "$kind request, body " . ($split ? 'after the header' : 'with the header');
            my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $t->port)
                or die;
            my $head = "POST $U HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml\r\n"
                       . $extra . 'Content-Length: ' . length($body)
                       . "\r\nConnection: close\r\n\r\n";
            if ($split) {
                print $s $head;
                sleep 0.2;
                print $s $body;
            } else {
                print $s $head . $body;
            }
            local $/;
            my $res = <$s> // '';
            like($res, qr{^HTTP/1\.1 200}, "$name: 200");
            push @responses, { content => $res, headers => {} };
            injected_ok($name, $env, $NS{u});
            isnt($t->stats()->{soap_log}[-1]{content_encoding} // '', 'gzip',
                 "$name: no Content-Encoding: gzip upstream");
        }
    }

    # a 20 MiB deploy, gzip-compressed, through client_body_buffer_size 16k
    my $zip = '';
    $zip .= sha256('gz deploy' . length $zip) while length $zip < 15 * 1048576;
    my $big = qq{<soapenv:Envelope xmlns:soapenv="$ENV_NS"><soapenv:Header><SessionHeader xmlns="$NS{m}"><sessionId>bogus</sessionId></SessionHeader></soapenv:Header><soapenv:Body><deploy xmlns="$NS{m}"><ZipFile>} . encode_base64($zip, '') . q{</ZipFile></deploy></soapenv:Body></soapenv:Envelope>};
    my $bgz;
    gzip(\$big => \$bgz) or die $GzipError;
    my $rss0 = worker_rss();
    $r = soap('/services/Soap/m/59.0', $bgz, 'Content-Encoding' => 'gzip');
    my $rss1 = worker_rss();
    is($r->{status}, 200, 'gzip 20 MiB deploy: 200') or diag(substr $r->{content}, 0, 2000);
    is(($t->stats()->{soap_deploys}[-1] // {})->{zip_sha256}, sha256_hex($zip),
       'gzip 20 MiB deploy: the zip arrived intact');
    injected_ok('gzip 20 MiB deploy', $big, $NS{m});
    SKIP: {
        skip 'RSS under valgrind means nothing', 1 if $ENV{SF_TEST_VALGRIND};
        my ($worst) = sort { $b <=> $a }
                      map { ($rss1->{$_} // 0) - ($rss0->{$_} // 0) } keys %$rss0;
        ok(defined $worst && $worst < 16 * 1024,
           'gzip 20 MiB deploy: RSS grew by less than 16 MiB (' . ($worst // '?') . ' KiB)');
    }

    # a zip bomb: 100 MiB of zeros inflated, client_max_body_size is 64m
    my $bomb;
    my $z = IO::Compress::Gzip->new(\$bomb) or die $GzipError;
    $z->print(qq{<soapenv:Envelope xmlns:soapenv="$ENV_NS"><soapenv:Body><query xmlns="$NS{u}"><queryString>});
    $z->print("\0" x 1048576) for 1 .. 100;
    $z->close;
    my $st = $t->stats();
    my $start = time;
    $rss0 = worker_rss();
    $r = soap($U, $bomb, 'Content-Encoding' => 'gzip');
    $rss1 = worker_rss();
    ok($r->{status} == 400 || $r->{status} == 413,
       "zip bomb: refused ($r->{status})");
    ok(time - $start < 10, 'zip bomb: at once');
    is($t->stats()->{api_requests}, $st->{api_requests}, 'zip bomb: the mock was not reached');
    SKIP: {
        skip 'RSS under valgrind means nothing', 1 if $ENV{SF_TEST_VALGRIND};
        my ($worst) = sort { $b <=> $a }
                      map { ($rss1->{$_} // 0) - ($rss0->{$_} // 0) } keys %$rss0;
        ok(defined $worst && $worst < 16 * 1024,
           'zip bomb: RSS grew by less than 16 MiB (' . ($worst // '?') . ' KiB)');
    }

    # other encodings cannot be edited: refused
    $st = $t->stats();
    $r = soap($U, $gz, 'Content-Encoding' => 'br');
    module_fault_ok('Content-Encoding br', $r, $st->{api_requests},
                    scalar @{ $st->{soap_log} });

    # a gzip stream that is cut short
    $st = $t->stats();
    $r = soap($U, substr($gz, 0, length($gz) - 12), 'Content-Encoding' => 'gzip');
    module_fault_ok('a cut gzip stream', $r, $st->{api_requests},
                    scalar @{ $st->{soap_log} });
}

# -- non-session faults pass through byte for byte --------------------------

sub direct {
    my ($path, $env) = @_;
    return HTTP::Tiny->new(timeout => 30)->request('POST', $t->mock_url . $path, {
        content => $env,
        headers => { 'Content-Type' => 'text/xml; charset=UTF-8',
                     SOAPAction => '""' } });
}

sub same_headers {
    my ($name, $via, $direct) = @_;
    my %skip = map { $_ => 1 } qw(date server connection x-sf-oauth-status);
    my %a = map { $_ => $via->{headers}{$_} } grep { !$skip{$_} } keys %{ $via->{headers} };
    my %b = map { $_ => $direct->{headers}{$_} } grep { !$skip{$_} } keys %{ $direct->{headers} };
    is_deeply(\%a, \%b, "$name: the same headers as Salesforce sent");
}

for my $case ([ 'MALFORMED_QUERY' => 'SELECT bad FROM Account' ],
              [ 'a fault that mentions INVALID_SESSION_ID' => 'SELECT trap FROM Account' ],
              [ 'UNKNOWN_EXCEPTION with its own headers' => 'SELECT custom500 FROM Account' ])
{
    my ($name, $soql) = @$case;
    my $body = qq{<soapenv:Body><query xmlns="$NS{u}"><queryString>$soql</queryString></query></soapenv:Body></soapenv:Envelope>};

    soap($U, $cases[0][1]);    # a valid token in the cache
    my $token = token();
    my $want = direct($U, qq{<soapenv:Envelope xmlns:soapenv="$ENV_NS"><soapenv:Header><SessionHeader xmlns="$NS{u}"><sessionId>$token</sessionId></SessionHeader></soapenv:Header>$body});
    is($want->{status}, 500, "$name: Salesforce answers 500 (direct)");

    my $before = $t->token_requests;
    my $calls = scalar @{ $t->stats()->{soap_log} };
    my $r = soap($U, qq{<soapenv:Envelope xmlns:soapenv="$ENV_NS"><soapenv:Header>$SH</soapenv:Header>$body});
    is($r->{status}, 500, "$name: the client gets the 500");
    is($r->{content}, $want->{content}, "$name: the body byte for byte");
    same_headers($name, $r, $want);
    is($t->token_requests, $before, "$name: no token request");
    is(scalar @{ $t->stats()->{soap_log} }, $calls + 1, "$name: no replay");
    is($r->{headers}{'x-sf-oauth-status'}, 'HIT', "$name: HIT, not RETRY");
}

# -- Salesforce gzips its answers, faults too, when the client accepts gzip --

{
    $t->mock('gzip', 'on=1');
    my $env = $cases[0][1];
    soap($U, $env);    # a valid token in the cache

    my $before = $t->token_requests;
    $t->mock('revoke');
    my $r = soap($U, $env, 'Accept-Encoding' => 'gzip');
    is($r->{status}, 200, 'gzip: a gzipped INVALID_SESSION_ID 500 is replayed')
        or diag($r->{content});
    is($r->{headers}{'x-sf-oauth-status'}, 'RETRY', 'gzip: RETRY');
    is($t->token_requests, $before + 1, 'gzip: one token request');
    is($r->{headers}{'content-encoding'}, 'gzip', 'gzip: the answer is gzipped');
    my $plain = '';
    gunzip(\$r->{content} => \$plain);
    like($plain, qr/<queryResponse>/, 'gzip: the replay\'s answer');
    push @responses, { content => $plain, headers => {} };

    my $token = token();
    my $bad = qq{<soapenv:Body><query xmlns="$NS{u}"><queryString>SELECT bad FROM Account</queryString></query></soapenv:Body></soapenv:Envelope>};
    my $want = HTTP::Tiny->new(timeout => 30)->request('POST', $t->mock_url . $U, {
        content => qq{<soapenv:Envelope xmlns:soapenv="$ENV_NS"><soapenv:Header><SessionHeader xmlns="$NS{u}"><sessionId>$token</sessionId></SessionHeader></soapenv:Header>$bad},
        headers => { 'Content-Type' => 'text/xml', 'Accept-Encoding' => 'gzip' } });
    $before = $t->token_requests;
    $r = soap($U, qq{<soapenv:Envelope xmlns:soapenv="$ENV_NS">$bad}, 'Accept-Encoding' => 'gzip');
    is($r->{status}, 500, 'gzip: a gzipped MALFORMED_QUERY passes');
    ok($r->{content} eq $want->{content}, 'gzip: byte for byte');
    same_headers('gzip MALFORMED_QUERY', $r, $want);
    is($t->token_requests, $before, 'gzip: MALFORMED_QUERY costs no token');

  SKIP: {
        skip 'python3-zeep is missing', 3 unless $HAVE_ZEEP;
        # zeep (python-requests) always says Accept-Encoding: gzip, deflate
        $before = $t->token_requests;
        $t->mock('revoke');
        my $z = zeep('query');
        ok($z->{ok}, 'gzip: zeep after a revoke succeeds') or diag(explain $z);
        is($z->{headers}{'Content-Encoding'}, 'gzip', 'gzip: zeep got gzip');
        is($t->token_requests, $before + 1, 'gzip: zeep, one token request');
    }
    $t->mock('gzip', 'on=0');
}

# -- 100 concurrent calls after a revoke -------------------------------------

sub parallel_post {
    my ($n, $path, @bodies) = @_;
    my (@socks, %buf, %idx);

    for my $i (0 .. $n - 1) {
        my $body = $bodies[$i % @bodies];
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                      PeerPort => $t->port, Proto => 'tcp')
            or die "connect: $!";
        print $s "POST $path HTTP/1.1\r\nHost: localhost\r\n"
                 . "Content-Type: text/xml\r\nContent-Length: " . length($body)
                 . "\r\nConnection: close\r\n\r\n$body";
        push @socks, $s;
        $idx{fileno $s} = $i;
        $buf{$i} = '';
    }

    my $sel = IO::Select->new(@socks);
    my $end = time + 30;
    while ($sel->count && time < $end) {
        for my $s ($sel->can_read(0.5)) {
            my $got = sysread($s, my $chunk, 65536);
            if (!$got) {
                $sel->remove($s);
                close $s;
                next;
            }
            $buf{ $idx{fileno $s} } .= $chunk;
        }
    }
    return map { $buf{$_} } 0 .. $n - 1;
}

{
    soap($U, $cases[0][1]);
    $t->mock('revoke');
    my $before = $t->token_requests;
    my $calls = scalar @{ $t->stats()->{soap_log} };
    my @res = parallel_post(100, $U, map { $_->[1] } @cases[0 .. 5]);
    my @ok = grep { m{^HTTP/1\.1 200} && /<queryResponse>/ } @res;
    is(scalar @ok, 100, '100 concurrent calls after a revoke: all 200')
        or diag(join ' ', map { m{^HTTP/1\.1 (\d+)} ? $1 : 0 } @res);
    is($t->token_requests, $before + 1,
       '100 concurrent calls after a revoke: exactly 1 token request');
    my $st = $t->stats();
    my @log = @{ $st->{soap_log} }[$calls .. $#{ $st->{soap_log} }];
    my $token = $st->{issued_access_tokens}[-1];
    is(scalar(grep { $_->{status} == 200 && $_->{session_id} eq $token } @log), 100,
       '100 concurrent calls: each replay carried the new token');
    push @responses, map { { content => $_, headers => {} } } @res;
}

# -- the token never appears in an answer -----------------------------------

{
    my @tokens = @{ $t->stats()->{issued_access_tokens} };
    ok(@tokens >= 3, 'several tokens were issued (' . scalar(@tokens) . ')');
    $t->no_token_in(\@responses, \@tokens);
}

$t->finish;

done_testing;
