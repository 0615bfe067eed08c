#!/usr/bin/perl

# SOAP where it meets the rest of nginx: $request_body in a cache key and
# the access log never holds the token; an error answer that the upstream
# cuts short does not park the request; a JWT-format token in a SOAP
# request is named in the error log; nginx -t warns where error_page
# would take SOAP and Bulk answers.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use File::Find;
use IO::Select;
use IO::Socket::INET;
use Test::More;
use Time::HiRes qw(time sleep);

my $t = SfTest->new;
$t->start_mock;

# An upstream that answers every request with a SOAP 500 whose body it
# cuts in the middle: Content-Length 332, 166 bytes, then it closes.
my $cut_port = SfTest::free_port();
my $cut = IO::Socket::INET->new(LocalAddr => '127.0.0.1',
                                LocalPort => $cut_port, Listen => 16,
                                ReuseAddr => 1)
    or die "listen: $!";
my $cut_pid = fork() // die "fork: $!";

if ($cut_pid == 0) {
    my $fault = '<?xml version="1.0" encoding="UTF-8"?>'
        . '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/'
        . 'soap/envelope/"><soapenv:Body><soapenv:Fault><faultcode>'
        . 'soapenv:Server</faultcode><faultstring>';
    $fault .= 'x' x (332 - length $fault);
    while (my $c = $cut->accept) {
        my $req = '';
        while ($req !~ /\r\n\r\n/) {
            sysread($c, $req, 4096, length $req) or last;
        }
        my ($len) = $req =~ /Content-Length: (\d+)/i;
        my ($head, $body) = split /\r\n\r\n/, $req, 2;
        $body //= '';
        while (length $body < ($len // 0)) {
            sysread($c, $body, 65536, length $body) or last;
        }
        print $c "HTTP/1.1 500 Internal Server Error\r\n"
                 . "Content-Type: text/xml\r\nContent-Length: 332\r\n\r\n"
                 . substr($fault, 0, 166);
        close $c;
    }
    exit 0;
}

close $cut;

my $cache = $t->dir . '/cache';

$t->simple_conf(http_extra => <<"EOF", location_extra => <<"EOF2");
    proxy_cache_path $cache levels=1 keys_zone=soap:1m;
    log_format body '\$request_uri \$status rb=[\$request_body]';
EOF
        }

        location /cached/services/ {
            sf_oauth crm;
            access_log %%DIR%%/body.log body;
            proxy_cache soap;
            proxy_cache_methods POST;
            proxy_cache_key "\$request_uri|\$request_body";
            proxy_cache_valid 200 1m;
            proxy_set_header X-Body-Copy \$request_body;
            proxy_pass http://127.0.0.1:%%MOCK%%/services/;
        }

        location /login/services/ {
            sf_oauth crm;
            sf_oauth_soap_login on;
            proxy_pass http://127.0.0.1:%%MOCK%%/services/;
        }

        location /cut/services/ {
            sf_oauth crm;
            proxy_pass http://127.0.0.1:$cut_port/services/;
EOF2
$t->start;

my $NS = 'http://schemas.xmlsoap.org/soap/envelope/';

sub envelope {
    my ($session) = @_;
    return qq{<?xml version="1.0" encoding="UTF-8"?>}
        . qq{<soapenv:Envelope xmlns:soapenv="$NS" }
        . qq{xmlns:urn="urn:partner.soap.sforce.com"><soapenv:Header>}
        . qq{<urn:SessionHeader><urn:sessionId>$session</urn:sessionId>}
        . qq{</urn:SessionHeader></soapenv:Header><soapenv:Body>}
        . qq{<urn:query><urn:queryString>SELECT Id FROM Account}
        . qq{</urn:queryString></urn:query></soapenv:Body>}
        . qq{</soapenv:Envelope>};
}

sub files_under {
    my ($dir) = @_;
    my @f;
    find(sub { push @f, $File::Find::name if -f }, $dir) if -d $dir;
    return @f;
}

sub slurp_file {
    my ($f) = @_;
    open my $fh, '<', $f or return '';
    local $/;
    return <$fh>;
}

# -- login() emulation: the identity service, read once -----------------

my $LOGIN = qq{<se:Envelope xmlns:se="$NS"><se:Body>}
    . qq{<n1:login xmlns:n1="urn:partner.soap.sforce.com">}
    . qq{<n1:username>someone\@acme.example</n1:username>}
    . qq{<n1:password>PW-never-leaves</n1:password></n1:login></se:Body>}
    . qq{</se:Envelope>};

{
    # the first call of all: it waits for the token, then for the identity
    my $r = $t->soap('/login/services/Soap/u/59.0', $LOGIN);
    is($r->{status}, 200, 'login(): 200, cold');
    like($r->{content}, qr{<userName>integration\@mock\.example\.com</userName>},
         'login(): userName from the identity service, on the first call');
    like($r->{content},
         qr{<userFullName>Mock &lt;Integration&gt; &amp; Co</userFullName>},
         'login(): userFullName, XML-escaped');
    like($r->{content}, qr{<userEmail>integration\@mock\.example\.com</userEmail>}
         , 'login(): userEmail');
    like($r->{content}, qr{<userTimeZone>America/Los_Angeles</userTimeZone>},
         'login(): userTimeZone');
    like($r->{content}, qr{<organizationId>00D\w{12}</organizationId>},
         'login(): organizationId from the id URL');
    like($r->{content}, qr{<userId>005\w{12}</userId>},
         'login(): userId from the id URL');
    unlike($r->{content}, qr/PW-never-leaves|someone/,
           'login(): the caller\'s username and password are not echoed');

    for (1 .. 4) {
        $r = $t->soap('/login/services/Soap/u/59.0', $LOGIN);
        like($r->{content}, qr{<userName>integration\@mock}, 'login() again');
    }

    is($t->mock('stats')->{identity_requests}, 1,
       'the identity service is read once, for both workers');
    unlike($t->error_log, qr/PW-never-leaves/, 'the password is not logged');

    # a refresh for the same user does not read it again
    $t->mock('revoke');
    is($t->get('/services/data/v59.0/sobjects')->{status}, 200,
       'a revoke is cured');
    $r = $t->soap('/login/services/Soap/u/59.0', $LOGIN);
    like($r->{content}, qr{<userName>integration\@mock},
         'login() after a refresh: the same user');
    is($t->mock('stats')->{identity_requests}, 1,
       'a refresh for the same user does not read the identity again');
}

# -- $request_body in proxy_cache_key, proxy_set_header and the log ------

{
    my $r = $t->soap('/cached/services/Soap/u/59.0', envelope('CLIENTSID'));
    is($r->{status}, 200, 'cached location: the SOAP call succeeds');

    $t->mock('revoke');
    $r = $t->soap('/cached/services/Soap/u/59.0', envelope('CLIENTSID2'));
    is($r->{status}, 200, 'cached location: a call after a revoke succeeds');

    # the second call was replayed; the first may be served from the cache
    my @tokens = $t->tokens();
    ok(@tokens >= 2, 'two tokens were issued');

    my @files = files_under($cache);
    ok(@files >= 1, 'the cache holds the answers');

    # the mock echoes what it got in its answers: only the KEY lines count
    my $keys = join "\n", map { slurp_file($_) =~ /^KEY: ([^\n]*)/m ? $1 : () }
                          @files;
    like($keys, qr/CLIENTSID/, 'the cache key is the client\'s envelope');

    my $log = $t->slurp('body.log');
    like($log, qr/rb=\[[^\]]*CLIENTSID/,
         '$request_body in the access log is the client\'s envelope');

    for my $tok (@tokens) {
        my $part = substr($tok, 0, 40);
        unlike($keys, qr/\Q$part\E/, 'no token in a cache key');
        unlike($log, qr/\Q$part\E/, 'no token in the access log');
    }
}

# -- an error answer cut short by the upstream --------------------------

{
    my $start = time;
    my $raw = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                    PeerPort => $t->port)
        or die "connect: $!";
    my $body = envelope('X');
    print $raw "POST /cut/services/Soap/u/59.0 HTTP/1.1\r\nHost: localhost\r\n"
               . "Content-Type: text/xml\r\nContent-Length: " . length($body)
               . "\r\n\r\n$body";

    my $got = '';
    my $sel = IO::Select->new($raw);
    while (time - $start < 10 && $sel->can_read(10 - (time - $start))) {
        my $n = sysread($raw, $got, 65536, length $got);
        last unless $n;
    }
    my $took = time - $start;

    like($got, qr{^HTTP/1\.1 500}, 'a cut SOAP 500: its header reaches the '
                                   . 'client');
    my ($b) = $got =~ /\r\n\r\n(.*)\z/s;
    is(length($b // ''), 166, 'a cut SOAP 500: the bytes that came, no more');
    cmp_ok($took, '<', 5, 'a cut SOAP 500: the connection closes at once '
                          . '(not at send_timeout)');
    is($t->get('/services/data/v59.0/sobjects')->{status}, 200,
       'requests go on afterwards');
}

# -- a JWT-format token in a SOAP request ---------------------------------

{
    my $jwt = 'eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ0ZXN0In0.c2lnbmF0dXJl';
    $t->mock('fixed', "token=$jwt");
    $t->mock('revoke');

    # a REST call gets the new token (its 401 replays with it)
    $t->get('/services/data/v59.0/sobjects');
    $t->soap('/services/Soap/u/59.0', envelope('X'));
    $t->soap('/services/Soap/u/59.0', envelope('X'));

    my @lines = grep { /access token is a JWT/ } split /\n/, $t->error_log;
    ok(@lines >= 1, 'a JWT-format token in a SOAP request is named');
    ok(@lines <= 2, 'once per token and worker, not per request');
    like($lines[0] // '', qr/Issue JSON Web Token \(JWT\)-based access tokens/,
         'the error line names the setting to turn off');
    like($lines[0] // '', qr/\[error\]/, 'at level error');
    unlike($t->error_log, qr/\Q$jwt\E/, 'the token itself is not logged');

    $t->mock('fixed', 'token=');
}

$t->finish;

# -- the identity service fails: login() answers with the ids ------------

{
    my $u = SfTest->new;
    $u->start_mock;
    $u->simple_conf(location_extra => "            sf_oauth_soap_login on;\n");
    $u->mock('identity_mode', 'mode=fail');
    $u->start;

    my $r = $u->http('POST', '/services/Soap/u/59.0', body => $LOGIN,
                     headers => { 'Content-Type' => 'text/xml' });
    is($r->{status}, 200, 'identity service down: login() still answers');
    like($r->{content}, qr{<userId>005\w{12}</userId>.*<userName></userName>}s,
         'the ids, and no name');
    like($u->error_log, qr/\[warn\].*identity service did not answer/,
         'a failed identity request is a warn');

    $r = $u->http('POST', '/services/Soap/u/59.0', body => $LOGIN,
                  headers => { 'Content-Type' => 'text/xml' });
    is($r->{status}, 200, 'login() again');
    cmp_ok($u->mock('stats')->{identity_requests}, '<=', 2,
           'a failed identity request is not tried again at once '
           . '(at most once per worker)');
    $u->finish;
}

# -- at debug level: no token in the log, a fault or the status ----------

{
    my $d = SfTest->new(log_level => 'debug');
    $d->start_mock;
    $d->simple_conf;
    $d->start;

    my %h = ('Content-Type' => 'text/xml; charset=UTF-8', SOAPAction => '""');
    my $r = $d->http('POST', '/services/Soap/u/59.0', body => envelope('A'),
                     headers => \%h);
    is($r->{status}, 200, 'debug: a SOAP call');

    $d->mock('revoke');
    $r = $d->http('POST', '/services/Soap/u/59.0', body => envelope('B'),
                  headers => \%h);
    is($r->{status}, 200, 'debug: a SOAP call replayed after a revoke');

    $d->mock('revoke');
    $r = $d->http('GET', '/services/async/59.0/job/750000000000001AAA',
                  headers => { 'X-SFDC-Session' => 'mine' });
    ok($r->{status} == 200 || $r->{status} == 400,
       'debug: a Bulk call replayed after a revoke');

    my $fault = $d->http('POST', '/services/Soap/u/59.0',
                         body => '<a><b></a>', headers => \%h);
    is($fault->{status}, 400, 'debug: a malformed envelope gets a fault');

    my $info = $d->get('/sf_oauth_info')->{content};
    my @tokens = $d->tokens;
    cmp_ok(scalar @tokens, '>=', 3, 'debug: three tokens were issued');

    my $log = $d->error_log;
    like($log, qr/\[debug\]/, 'debug: the log is at debug level');

    for my $tok (@tokens) {
        # the org id starts every token: the part after it is the secret
        my $part = substr($tok, 18, 16);
        unlike($log, qr/\Q$part\E/, 'debug: no token in the error log');
        unlike($fault->{content}, qr/\Q$part\E/, 'debug: none in a fault');
        unlike($info, qr/\Q$part\E/, 'debug: none in sf_oauth_info');
    }

    $d->finish;
}

# -- nginx -t: error_page takes SOAP 500s and Bulk 400s -------------------

{
    my $u = SfTest->new;
    $u->simple_conf(location_extra => <<'EOF');
            proxy_intercept_errors on;
            error_page 500 502 /50x.html;
EOF
    my ($rc, $out) = $u->test_conf;
    is($rc, 0, 'nginx -t passes with proxy_intercept_errors and error_page');
    like($out, qr/\[warn\].*proxy_intercept_errors on and an error_page for 500/,
         'nginx -t warns that a dead SOAP or Bulk session is not replayed');

    $u->simple_conf(location_extra => <<'EOF');
            proxy_intercept_errors on;
            error_page 401 /401.html;
EOF
    ($rc, $out) = $u->test_conf;
    unlike($out, qr/proxy_intercept_errors on and an error_page/,
           'no warning for an error_page of 401 only');
}

kill 'TERM', $cut_pid;
waitpid $cut_pid, 0;

done_testing;
