#!/usr/bin/perl

# Where the token may go: only on the upstream request of an sf_oauth
# location, and in $sf_oauth_token.  Not in $http_authorization (so not in
# add_header, a log, a proxy_set_header or a cache key), not in a mirror
# subrequest, not after an internal redirect (error_page, try_files), and
# not in the debug log after one.  And sf_oauth at server level gates only
# the locations that proxy: never static files, "return" or the status.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use Test::More;

my $t = SfTest->new(log_level => 'debug');
$t->start_mock;

my $other = SfTest::free_port();
my $dead = SfTest::free_port();
my $scoped = SfTest::free_port();

mkdir $t->dir . '/html';
mkdir $t->dir . '/html/static';
open my $fh, '>', $t->dir . '/html/static/file.txt' or die;
print $fh "a static file\n";
close $fh;

$t->simple_conf(
    http_extra => $t->credential(name => 'scoped')
                  . $t->credential(name => 'deny') . <<'EOF',
    proxy_cache_path %%DIR%%/cache keys_zone=sfc:1m;

    log_format seen '$request_uri auth=[$http_authorization]';
    access_log %%DIR%%/seen.log seen;

    server {
        listen 127.0.0.1:OTHERPORT;

        location /services/seen/ {
            sf_oauth crm;
            proxy_set_header X-Client-Auth $http_authorization;
            add_header X-Seen "[$http_authorization]" always;
            proxy_cache sfc;
            proxy_cache_key "$request_uri $http_authorization";
            proxy_cache_valid 200 1m;
            proxy_pass http://127.0.0.1:%%MOCK%%/services/;
        }

        location /services/mirrored/ {
            sf_oauth crm;
            mirror /mirror;
            proxy_pass http://127.0.0.1:%%MOCK%%/services/;
        }

        location /services/mirrored-nobody/ {
            sf_oauth crm;
            mirror /mirror;
            mirror_request_body off;
            proxy_pass http://127.0.0.1:%%MOCK%%/services/;
        }

        location = /mirror {
            internal;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_pass http://127.0.0.1:%%MOCK%%/echo/mirror$request_uri;
        }

        location /services/fallback/ {
            sf_oauth crm;
            proxy_pass http://127.0.0.1:DEADPORT;
            error_page 502 504 = @fallback;
        }

        location @fallback {
            rewrite ^ /echo/fallback break;
            proxy_pass http://127.0.0.1:%%MOCK%%;
        }

        location /services/authreq/ {
            sf_oauth crm;
            auth_request /auth;
            proxy_pass http://127.0.0.1:%%MOCK%%/services/;
        }

        location = /auth {
            internal;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_pass http://127.0.0.1:%%MOCK%%/echo/auth;
        }

        location /services/authdeny/ {
            sf_oauth deny;
            auth_request /deny;
            proxy_pass http://127.0.0.1:%%MOCK%%/services/;
        }

        location = /deny {
            internal;
            return 403;
        }

        location /services/tried/ {
            sf_oauth crm;
            root %%DIR%%/html;
            try_files $uri @tried;
        }

        location @tried {
            rewrite ^ /echo/tried break;
            proxy_pass http://127.0.0.1:%%MOCK%%;
        }
    }

    server {
        listen 127.0.0.1:SCOPEDPORT;
        sf_oauth scoped;

        location /static/ {
            root %%DIR%%/html;
        }

        location /ret {
            return 200 "returned\n";
        }

        location = /status {
            sf_oauth_info;
        }

        location /services/ {
            proxy_pass http://127.0.0.1:%%MOCK%%;
        }
    }
EOF
);

my $conf = $t->slurp('nginx.conf');
$conf =~ s/OTHERPORT/$other/;
$conf =~ s/DEADPORT/$dead/;
$conf =~ s/SCOPEDPORT/$scoped/;
open $fh, '>', $t->dir . '/nginx.conf' or die;
print $fh $conf;
close $fh;

$t->start;

my $client_auth = 'Basic Y2xpZW50OmNsaWVudHNlY3JldA==';


sub echo_log {
    return @{ $t->mock('stats')->{echo_log} };
}

# -- $http_authorization is the client's, never the token ----------------

for my $with (0, 1) {
    my %h = $with ? (Authorization => $client_auth) : ();
    my $what = $with ? 'with the client\'s Authorization'
                     : 'without an Authorization';
    my $r = $t->http('GET', "/services/seen/data/s$with", port => $other,
                     headers => \%h);

    is($r->{status}, 200, "$what: 200");
    is($r->{json}{authorization}, 'Bearer ' . ($t->tokens())[-1],
       "$what: Salesforce gets the token");
    is($r->{json}{authorization_count}, 1, "$what: one Authorization");
    is($r->{headers}{'x-seen'}, $with ? "[$client_auth]" : '[]',
       "$what: add_header \$http_authorization shows the client's");
    is($r->{json}{headers}{'X-Client-Auth'}, $with ? $client_auth : undef,
       "$what: proxy_set_header \$http_authorization sends the client's");
}

{
    # the access log is written after the response: wait for both lines
    for (1 .. 100) {
        last if ($t->slurp('seen.log') =~ tr/\n//) >= 2;
        select undef, undef, undef, 0.05;
    }

    my $log = $t->slurp('seen.log');
    like($log, qr{^/services/seen/data/s1 auth=\[\Q$client_auth\E\]$}m,
         'access log: $http_authorization is the client\'s');
    like($log, qr{^/services/seen/data/s0 auth=\[-\]$}m,
         'access log: empty without a client Authorization');

    # the cache files' KEY lines (the mock echoes the header in its body)
    my $cache = join '', map { `grep -a '^KEY: ' $_` } glob($t->dir . '/cache/*');
    like($cache, qr{KEY: /services/seen/data/s1 \Q$client_auth\E}, 'cache key: the client\'s');
    for my $tok ($t->tokens()) {
        ok(index($cache, $tok) < 0, 'no cache file holds the token');
        ok(index($log, $tok) < 0, 'the access log does not hold the token');
    }
}

# -- a mirror never gets the token ----------------------------------------

for my $loc ('mirrored', 'mirrored-nobody') {
    for my $with (0, 1) {
        my %h = $with ? (Authorization => $client_auth) : ();
        my $r = $t->http('POST', "/services/$loc/data/m$with", port => $other,
                         headers => \%h, body => '{"m":1}');
        is($r->{status}, 200, "$loc $with: the main request: 200");
        is($r->{json}{authorization}, 'Bearer ' . ($t->tokens())[-1],
           "$loc $with: the main request carries the token");

        my $m;
        for (1 .. 50) {
            ($m) = grep { $_->{path} =~ m{/echo/mirror/services/$loc/data/m$with} }
                   echo_log();
            last if $m;
            select undef, undef, undef, 0.05;
        }
        ok($m, "$loc $with: the mirror got the request");
        is_deeply($m->{authorization}, $with ? [$client_auth] : [],
                  "$loc $with: the mirror got the client's Authorization, "
                  . 'not the token');
    }
}

# the mirror and a replay together
$t->mock('revoke');
{
    my $r = $t->http('POST', '/services/mirrored/data/replayed', port => $other,
                     body => '{"r":1}');
    is($r->{status}, 200, 'mirror and replay: 200');
    is($r->{json}{authorization}, 'Bearer ' . ($t->tokens())[-1],
       'mirror and replay: the new token upstream');
    select undef, undef, undef, 0.3;
    my @m = grep { $_->{path} =~ m{/echo/mirror/services/mirrored/data/replayed} }
            echo_log();
    ok(@m >= 1, 'mirror and replay: mirrored');
    is(scalar(grep { @{ $_->{authorization} } } @m), 0,
       'mirror and replay: no Authorization at the mirror');
}

# -- an internal redirect leaves the token behind --------------------------

{
    my $r = $t->http('GET', '/services/fallback/data/f', port => $other,
                     headers => { Authorization => $client_auth });
    is($r->{status}, 200, 'error_page 502 = @fallback: the fallback answers');
    my ($e) = grep { $_->{path} =~ m{^/echo/fallback} } echo_log();
    ok($e, 'the fallback upstream got the request');
    is_deeply($e->{authorization}, [$client_auth],
              'the fallback upstream got the client\'s header, not the token');

    $r = $t->http('GET', '/services/fallback/data/f2', port => $other);
    $e = (echo_log())[-1];
    is_deeply($e->{authorization}, [],
              'no client header: the fallback upstream gets none');
}

{
    my $r = $t->http('GET', '/services/tried/data/t', port => $other);
    is($r->{status}, 200, 'try_files to a named location: 200');
    my ($e) = grep { $_->{path} =~ m{^/echo/tried} } echo_log();
    ok($e, 'the try_files fallback got the request');
    is_deeply($e->{authorization}, [],
              'try_files fallback: no token');
}

# -- auth_request runs first, and never sees the token --------------------

{
    my $r = $t->http('POST', '/services/authreq/data/a', port => $other,
                     headers => { Authorization => $client_auth },
                     body => '{"a":1}');
    is($r->{status}, 200, 'auth_request allows: 200');
    is($r->{json}{authorization}, 'Bearer ' . ($t->tokens())[-1],
       'auth_request allows: Salesforce gets the token');
    my ($e) = grep { $_->{path} =~ m{^/echo/auth} } echo_log();
    ok($e, 'the auth_request subrequest ran');
    is_deeply($e->{authorization}, [$client_auth],
              'the auth_request subrequest got the client\'s header');

    my $before = $t->token_requests;
    $r = $t->http('GET', '/services/authdeny/data/d', port => $other);
    is($r->{status}, 403, 'auth_request denies: 403');
    is($t->token_requests, $before, 'a denied request costs no token request');
}

# -- sf_oauth at server level gates only what goes upstream ----------------

# "scoped" has never had a token, and Salesforce is down
$t->mode('down');
{
    my $before = $t->token_requests;

    my $r = $t->http('GET', '/static/file.txt', port => $scoped);
    is($r->{status}, 200, 'server-level sf_oauth: a static file is served');
    is($r->{content}, "a static file\n", 'the static file');

    $r = $t->http('GET', '/ret', port => $scoped);
    is($r->{status}, 200, 'server-level sf_oauth: return is served');

    $r = $t->http('GET', '/status', port => $scoped);
    is($r->{status}, 200, 'server-level sf_oauth: sf_oauth_info answers');

    is($t->token_requests, $before, 'none of them made a token request');
}
is($t->http('GET', '/services/data/', port => $scoped)->{status}, 502,
   'server-level sf_oauth: the proxied location needs the token');

# -- no token in the error log, at debug level -----------------------------

{
    my $log = $t->error_log;
    my $n = 0;
    for my $tok ($t->tokens()) {
        $n++ if index($log, $tok) >= 0;
        $n++ if index($log, substr($tok, 19, 20)) >= 0;
    }
    is($n, 0, 'no token, whole or in part, in the debug log');
    like($log, qr/\[sf_oauth:[0-9a-f]{8}\]/, 'the debug log shows fingerprints');
}

system('cp', $t->dir . '/error.log', '/tmp/scope_error.log') if $ENV{SF_KEEP_LOG};
$t->finish;

done_testing;
