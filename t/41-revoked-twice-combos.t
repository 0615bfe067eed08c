#!/usr/bin/perl

# The second hold (t/41-revoked-twice.t) in each combination the first
# hold is tested in: a slow request's token is revoked, another request
# refreshes, Salesforce revokes again, and only then does the slow
# request's 401 (or INVALID_SESSION_ID fault) come; it is held, replayed
# with the newer (dead) token, held a second time and replayed with a
# token got after its 401.  Here with proxy_buffering off, request bodies
# in temp files (REST and SOAP, the same bytes on every replay), HTTP/2
# clients, gzip SOAP (a gzip request body, a gzip fault and answer), a
# mirror (never given the token, never replayed), and error_page with
# proxy_intercept_errors (the 200 after two holds, not the error page; a
# 401 no refresh cures, after two replays, reaches the error page once).
# Each: one whole 200 (one envelope), two token requests, three replays
# counted (the fast request 1, the slow one 2), no token in any log.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use Digest::SHA qw(sha256_hex);
use IO::Uncompress::Gunzip qw(gunzip $GunzipError);
use JSON::PP qw(encode_json decode_json);
use POSIX ();
use Test::More;

my $S = SfTest::time_scale();
my $LATE = 1.5 * $S;

my $t = SfTest->new;
$t->start_mock;

my $h2_port = SfTest::free_port();

$t->write_conf("    sf_oauth_zone zone=sf:1m;\n" . $t->credential . <<'EOF');
    client_max_body_size 10m;

    server {
        listen 127.0.0.1:%%PORT%% reuseport default_server;
        listen 127.0.0.1:H2PORT http2 reuseport;

        location /services/ {
            sf_oauth crm;
            add_header X-SF-OAuth-Status $sf_oauth_status always;
            proxy_pass http://127.0.0.1:%%MOCK%%;
        }

        location /nobuf/services/ {
            sf_oauth crm;
            proxy_buffering off;
            proxy_pass http://127.0.0.1:%%MOCK%%/services/;
        }

        location /tmpbody/services/ {
            sf_oauth crm;
            client_body_buffer_size 1k;
            proxy_pass http://127.0.0.1:%%MOCK%%/services/;
        }

        location /mirrored/services/ {
            sf_oauth crm;
            mirror /mirror;
            proxy_pass http://127.0.0.1:%%MOCK%%/services/;
        }

        location /mirrored-tmp/services/ {
            sf_oauth crm;
            client_body_buffer_size 1k;
            mirror /mirror;
            proxy_pass http://127.0.0.1:%%MOCK%%/services/;
        }

        location = /mirror {
            internal;
            proxy_pass http://127.0.0.1:%%MOCK%%/echo/mirror$request_uri;
        }

        location /intercept/services/ {
            sf_oauth crm;
            proxy_intercept_errors on;
            error_page 404 502 504 /denied;
            proxy_pass http://127.0.0.1:%%MOCK%%/services/;
        }

        location /intercept401/services/ {
            sf_oauth crm;
            proxy_intercept_errors on;
            error_page 401 /denied;
            proxy_pass http://127.0.0.1:%%MOCK%%/services/;
        }

        location = /denied {
            internal;
            proxy_method GET;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_pass http://127.0.0.1:%%MOCK%%/echo/denied;
        }

        location = /sf_oauth_info {
            sf_oauth_info;
        }
    }
EOF
$t->edit_conf(sub { s/H2PORT/$h2_port/ });
$t->start;

my $ENV_NS = 'http://schemas.xmlsoap.org/soap/envelope/';
my %SOAP_H = ('Content-Type' => 'text/xml', SOAPAction => '""');

# the mock's soap_log entries for PATH from the N-th on
sub soap_log_since {
    my ($n, $path) = @_;

    my $log = $t->stats->{soap_log};
    return grep { $_->{path} eq $path } @$log[$n .. $#$log];
}

# a query envelope; PAD bytes of a comment after the call (a body past
# client_body_buffer_size), pseudo-random so that gzip leaves it large
sub envelope {
    my ($pad) = @_;

    my $junk = '';
    my $h = 'seed';
    while (length $junk < ($pad // 0)) {
        $h = sha256_hex($h);
        $junk .= $h;
    }
    $junk = substr($junk, 0, $pad // 0);

    return qq{<soapenv:Envelope xmlns:soapenv="$ENV_NS"><soapenv:Body>}
         . qq{<query xmlns="urn:partner.soap.sforce.com"><queryString>}
         . qq{SELECT Id FROM Account</queryString></query>}
         . ($pad ? "<!-- $junk -->" : '')
         . qq{</soapenv:Body></soapenv:Envelope>};
}

sub tail {
    my ($env) = @_;
    $env =~ /<(?:[A-Za-z_][\w.\-]*:)?Body[\s\/>]/ or die "no Body in $env";
    return substr($env, $-[0]);
}

# Runs CODE (which returns a hashref: status, content, headers) in a
# child; returns a sub that waits for it and returns that hashref.
my $bg_n = 0;
sub bg {
    my ($code) = @_;

    my $file = $t->dir . '/bg.' . ++$bg_n . '.json';
    my $pid = fork() // die "fork: $!";
    if ($pid == 0) {
        my $r = eval { $code->() } || { status => 0, content => "$@" };
        open my $fh, '>', $file or POSIX::_exit(1);
        print $fh encode_json({ status => $r->{status},
                                content => unpack('H*', $r->{content} // ''),
                                headers => $r->{headers} || {} });
        close $fh;
        POSIX::_exit(0);
    }
    return sub {
        waitpid($pid, 0);
        open my $fh, '<', $file or return { status => 0 };
        local $/;
        my $r = decode_json(<$fh>);
        $r->{content} = pack('H*', $r->{content});
        return $r;
    };
}

# An HTTP/1.1 request through HTTP::Tiny, in a child
sub bg_http {
    my ($method, $path, %opt) = @_;

    return bg(sub {
        $t->http($method, $path, timeout => 30 * $S, %opt);
    });
}

# An HTTP/2 request (curl, prior knowledge), in a child: BODY from a file
sub bg_h2 {
    my ($method, $path, %opt) = @_;

    my $n = ++$bg_n;
    my $dir = $t->dir;
    my @args = ('curl', '-s', '--http2-prior-knowledge', '-X', $method,
                '--max-time', 30 * $S, '-D', "$dir/h2.$n.head",
                '-o', "$dir/h2.$n.body", '-w', '%{http_code} %{http_version}');
    if (defined $opt{body}) {
        $t->write_file("h2.$n.req", $opt{body}, 0644);
        push @args, '--data-binary', "\@$dir/h2.$n.req";
    }
    for my $h (sort keys %{ $opt{headers} || {} }) {
        push @args, '-H', "$h: $opt{headers}{$h}";
    }
    push @args, "http://127.0.0.1:$h2_port$path";

    return bg(sub {
        open my $out, '-|', @args or die "curl: $!";
        my $w = do { local $/; <$out> } // '';
        close $out;
        my ($code, $version) = split ' ', $w;
        my %headers = (version => $version // '');
        for (split /\r?\n/, $t->slurp("h2.$n.head")) {
            $headers{lc $1} = $2 if /^([\w-]+):\s*(.*)$/;
        }
        return { status => $code // 0, content => $t->slurp("h2.$n.body"),
                 headers => \%headers };
    });
}

# Waits until the mock checked the token of a request to PATH (its path
# and query, as the mock got them) with ?late401: its 401 is on the way.
sub late401_begun {
    my ($path) = @_;

    SfTest::wait_event(10, "the mock's late 401 for $path", sub {
        grep { $_ eq $path } @{ $t->stats->{late401_log} || [] };
    });
}

sub gunzipped {
    my ($r) = @_;

    return $r->{content}
        unless ($r->{headers}{'content-encoding'} // '') eq 'gzip';
    my $out;
    gunzip(\$r->{content} => \$out) or return "gunzip: $GunzipError";
    return $out;
}

# The revoked-twice scenario: START begins the slow request (returns its
# waiter), whose first try reaches the mock as MOCK_PATH; then a revoke,
# another request refreshes, a second revoke, and the slow request's 401
# comes.  Returns the slow request's answer after the common checks.
my $fast_n = 0;
my @answers;
sub twice {
    my ($name, $mock_path, $start, %opt) = @_;

    my $before = $t->token_requests;
    my $replays = $t->cred_info->{replays};
    my $mark = $t->log_mark;

    $t->mock('revoke');
    my $slow = $start->();
    late401_begun($mock_path);
    my $f = $t->get('/services/data/fast' . ++$fast_n);
    is($f->{status}, 200, "$name: a revoke, another request refreshes: 200");
    $t->mock('revoke');

    my $r = $slow->();
    push @answers, $r, $f;
    is($r->{status}, $opt{status} // 200,
       "$name: the slow request, its token and the next one revoked "
       . 'meanwhile: ' . ($opt{status} // 200))
        or diag(substr($r->{content}, 0, 500));
    my ($tr, $rp, $n) = @{ $opt{counts} || [2, 3, 3] };
    is($t->token_requests - $before, $tr,
       "$name: $tr token request(s)"
       . ($tr == 2 ? ', one per revoke' : ''));
    is($t->cred_info->{replays} - $replays, $rp,
       "$name: $rp replays counted"
       . ($rp == 3 ? ' (the fast request 1, the slow one 2)' : ''));

    my @tries = grep { $_->{path} eq $mock_path } @{ $t->stats->{api_log} };
    is(scalar @tries, $n, "$name: the mock got the slow request $n times");
    ok($t->error_log_since($mark) =~ /buffered to a temporary file/,
       "$name: the body was in a temp file") if $opt{temp_file};

    return ($r, \@tries);
}

is($t->get('/services/data/warm')->{status}, 200, 'warm');

my $mark = $t->log_mark;

# -- proxy_buffering off ----------------------------------------------------

{
    my $p = "/services/data/nobuf?late401=$LATE";
    my ($r) = twice('nobuf, REST', $p, sub { bg_http('GET', "/nobuf$p") });
    is($r->{content} =~ /"path":\s*"\Q$p\E"/ ? 1 : 0, 1,
       'nobuf, REST: the whole JSON answer');

    $p = "/services/Soap/u/59.0?late401=$LATE&c=nobuf";
    my $env = envelope();
    ($r) = twice('nobuf, SOAP', $p, sub {
        bg_http('POST', "/nobuf$p", body => $env,
                headers => { %SOAP_H });
    });
    my @env = $r->{content} =~ /<\/\w+:Envelope>/g;
    ok(@env == 1 && $r->{content} =~ /queryResponse/
       && $r->{content} !~ /INVALID_SESSION_ID/,
       'nobuf, SOAP: one whole answer, no fault')
        or diag($r->{content});
}

# -- request bodies in temp files -------------------------------------------

{
    my $body = encode_json({ Name => 'temp file', pad => 'x' x 65536 });
    my $p = "/services/data/tmpbody?late401=$LATE";
    my ($r, $tries) = twice('temp file, REST POST', $p, sub {
        bg_http('POST', "/tmpbody$p", body => $body,
                headers => { 'Content-Type' => 'application/json' });
    }, temp_file => 1);
    is(scalar(grep { $_->{body_sha256} eq sha256_hex($body) } @$tries), 3,
       'temp file, REST POST: the same body bytes on every try');
    my $j = eval { decode_json($r->{content}) } || {};
    is($j->{body_sha256}, sha256_hex($body),
       'temp file, REST POST: the final replay got the body');

    my $env = envelope(32768);
    $p = "/services/Soap/u/59.0?late401=$LATE&c=tmpbody";
    my $soap_n = @{ $t->stats->{soap_log} };
    ($r) = twice('temp file, SOAP', $p, sub {
        bg_http('POST', "/tmpbody$p", body => $env,
                headers => { %SOAP_H });
    }, temp_file => 1);
    my @log = soap_log_since($soap_n, $p);
    is(scalar(grep { ($_->{tail_sha256} // '') eq sha256_hex(tail($env)) }
              @log), 3,
       'temp file, SOAP: the same Body bytes on every try');
    ok($log[-1] && $log[-1]{session_valid} && $log[-1]{status} == 200,
       'temp file, SOAP: the final replay\'s session valid');
    my @env = $r->{content} =~ /<\/\w+:Envelope>/g;
    ok(@env == 1 && $r->{content} =~ /queryResponse/,
       'temp file, SOAP: one whole answer') or diag($r->{content});
}

# -- HTTP/2 clients ---------------------------------------------------------

{
    my $p = "/services/data/h2?late401=$LATE";
    my ($r) = twice('HTTP/2, REST', $p, sub { bg_h2('GET', $p) });
    is($r->{headers}{version}, '2', 'HTTP/2, REST: over HTTP/2');
    like($r->{content}, qr/"path":\s*"\Q$p\E"/,
         'HTTP/2, REST: the whole answer');

    my $body = encode_json({ Name => 'h2', pad => 'y' x 40000 });
    $p = "/services/data/h2post?late401=$LATE";
    my $tries;
    ($r, $tries) = twice('HTTP/2, REST POST in a temp file', $p, sub {
        bg_h2('POST', "/tmpbody$p", body => $body,
              headers => { 'Content-Type' => 'application/json' });
    }, temp_file => 1);
    is(scalar(grep { $_->{body_sha256} eq sha256_hex($body) } @$tries), 3,
       'HTTP/2, REST POST in a temp file: the same body bytes on every try');

    my $env = envelope(8192);
    $p = "/services/Soap/u/59.0?late401=$LATE&c=h2";
    ($r) = twice('HTTP/2, SOAP', $p, sub {
        bg_h2('POST', $p, body => $env,
              headers => { %SOAP_H });
    });
    my @env = $r->{content} =~ /<\/\w+:Envelope>/g;
    ok(@env == 1 && $r->{content} =~ /queryResponse/,
       'HTTP/2, SOAP: one whole answer') or diag($r->{content});
}

# -- gzip SOAP: a gzip request body, a gzip fault and answer ----------------

{
    $t->mock('gzip', 'on=1');

    for my $case ([ 'gzip SOAP', '', 0 ],
                  [ 'gzip SOAP in a temp file', '/tmpbody', 20000 ])
    {
        my ($name, $prefix, $pad) = @$case;
        my $env = envelope($pad);
        my $gz = SfTest::gz($env);
        my $p = "/services/Soap/u/59.0?late401=$LATE&c=gzip$pad";
        my $soap_n = @{ $t->stats->{soap_log} };
        my ($r) = twice($name, $p, sub {
            bg_http('POST', "$prefix$p", body => $gz,
                    headers => { 'Content-Type' => 'text/xml',
                                 SOAPAction => '""',
                                 'Content-Encoding' => 'gzip',
                                 'Accept-Encoding' => 'gzip' });
        }, temp_file => $pad > 0);
        my @log = soap_log_since($soap_n, $p);
        is(scalar(grep { ($_->{tail_sha256} // '') eq sha256_hex(tail($env)) }
                  @log), 3, "$name: the same Body on every try");
        is(scalar(grep { ($_->{accept_encoding} // '') =~ /gzip/
                         && $_->{status} == 500 } @log), 2,
           "$name: the two faults were asked for gzip");
        is($r->{headers}{'content-encoding'}, 'gzip',
           "$name: the answer is gzip, as the client accepts");
        my $plain = gunzipped($r);
        my @env = $plain =~ /<\/\w+:Envelope>/g;
        ok(@env == 1 && $plain =~ /queryResponse/
           && $plain !~ /INVALID_SESSION_ID/,
           "$name: one whole answer") or diag($plain);
    }

    $t->mock('gzip', 'on=0');
}

# -- mirror -----------------------------------------------------------------

{
    $t->mock('reset_echo');
    my $p = "/services/data/mirrored?late401=$LATE";
    my ($r) = twice('mirror', $p, sub { bg_http('GET', "/mirrored$p") });
    like($r->{content}, qr/"path":\s*"\Q$p\E"/, 'mirror: the whole answer');

    my @m = grep { $_->{path} eq "/echo/mirror/mirrored$p" }
            @{ $t->stats->{echo_log} };
    is(scalar @m, 1, 'mirror: the mirror got the request once, not '
                     . 'replayed');
    is(scalar(grep { @{ $_->{authorization} } } @m), 0,
       'mirror: no Authorization at the mirror');

    # a gzip envelope in a temp file, which the mirror reads too: the
    # mirror gets the client's own bytes, once; each try the same Body
    my $env = envelope(20000);
    my $gz = SfTest::gz($env);
    $p = "/services/Soap/u/59.0?late401=$LATE&c=mirrored";
    my $soap_n = @{ $t->stats->{soap_log} };
    ($r) = twice('mirror, gzip SOAP in a temp file', $p, sub {
        bg_http('POST', "/mirrored-tmp$p", body => $gz,
                headers => { %SOAP_H, 'Content-Encoding' => 'gzip' });
    }, temp_file => 1);
    my @env = $r->{content} =~ /<\/\w+:Envelope>/g;
    ok(@env == 1 && $r->{content} =~ /queryResponse/,
       'mirror, gzip SOAP in a temp file: one whole answer')
        or diag($r->{content});
    is(scalar(grep { ($_->{tail_sha256} // '') eq sha256_hex(tail($env)) }
              soap_log_since($soap_n, $p)), 3,
       'mirror, gzip SOAP in a temp file: the same Body on every try');
    @m = grep { $_->{path} eq "/echo/mirror/mirrored-tmp$p" }
         @{ $t->stats->{echo_log} };
    is(scalar @m, 1, 'mirror, gzip SOAP in a temp file: mirrored once');
    is($m[0] && $m[0]{body_length}, length $gz,
       'mirror, gzip SOAP in a temp file: the mirror got the client\'s '
       . 'compressed body');
    is(scalar(grep { @{ $_->{authorization} } } @m), 0,
       'mirror, gzip SOAP in a temp file: no Authorization at the mirror');
}

# -- error_page with proxy_intercept_errors --------------------------------

# error_page for other codes than the session's: the 401 and the fault are
# held as ever, the client gets the 200 after two holds, not the error
# page; a 401 that no refresh cures, after two replays, is Salesforce's
# (error_page has none for it)
{
    $t->mock('reset_echo');
    my $p = "/services/data/intercept?late401=$LATE";
    my ($r) = twice('intercept', $p, sub { bg_http('GET', "/intercept$p") });
    like($r->{content}, qr/"path":\s*"\Q$p\E"/,
         'intercept: the answer is the API\'s, not the error page');

    my $env = envelope();
    $p = "/services/Soap/u/59.0?late401=$LATE&c=intercept";
    ($r) = twice('intercept, SOAP', $p, sub {
        bg_http('POST', "/intercept$p", body => $env,
                headers => { %SOAP_H });
    });
    my @env = $r->{content} =~ /<\/\w+:Envelope>/g;
    ok(@env == 1 && $r->{content} =~ /queryResponse/,
       'intercept, SOAP: one whole answer') or diag($r->{content});

    # the fast request's token was got before the slow one's 401, the
    # second hold's token after it: that replay's 401 is the client's
    $p = "/services/data/uncured?reject=1&late401=$LATE";
    ($r) = twice('intercept, uncured', $p,
                 sub { bg_http('GET', "/intercept$p") }, status => 401);
    like($r->{content}, qr/INVALID_SESSION_ID/,
         'intercept, uncured: Salesforce\'s 401');
    is(scalar(grep { $_->{path} eq '/echo/denied' }
              @{ $t->stats->{echo_log} }), 0,
       'intercept: the error page was never reached');
}

# error_page 401 itself: an intercepted 401 is the operator's page, not
# held (docs/design.md): the slow request's 401 reaches the error page
# once, with no replay; the token it had is dropped, and the next request
# whose token is the revoked newer one is held and cured as ever
{
    $t->mock('reset_echo');
    my $p = "/services/data/intercept401?late401=$LATE";
    my ($r) = twice('intercept 401', $p,
                    sub { bg_http('GET', "/intercept401$p") },
                    status => 401, counts => [1, 1, 1]);
    like($r->{content}, qr{"echo":\s*"/echo/denied"},
         'intercept 401: the error page answers');
    is(scalar(grep { $_->{path} eq '/echo/denied' }
              @{ $t->stats->{echo_log} }), 1,
       'intercept 401: the error page reached exactly once');

    my $before = $t->token_requests;
    is($t->get('/services/data/after')->{status}, 200,
       'intercept 401: the next request, its token revoked: 200');
    is($t->token_requests - $before, 1, 'intercept 401: one token request');
}

# -- no token anywhere but upstream -----------------------------------------

my @tokens = $t->tokens;
cmp_ok(scalar @tokens, '>=', 2 * 13 + 1, 'the mock issued the tokens');

# (the mock's REST answers echo the Authorization header they got: that
# field is taken out, the rest of each answer checked)
$_->{content} =~ s/"authorization": "Bearer [^"]*"//g for @answers;
$t->no_token_in(\@answers, \@tokens);
is(scalar(grep { index(join('', map { @{ $_->{authorization} } }
                               @{ $t->stats->{echo_log} }), $_) >= 0 }
              @tokens), 0, 'no token reached an echo (mirror, error page)');
unlike($t->error_log_since($mark), qr/\[(alert|crit)\]/,
       'no alert or crit');

$t->finish;

done_testing;
