#!/usr/bin/perl

# A fleet of 2 nodes (rotation mode, a slow token request held
# by node A) with other modules in sf_oauth locations, and a revoke so
# that the requests of node B wait for A's refresh and are replayed:
#   - mirror: the mirror target never sees a token
#   - auth_request: the auth subrequest never carries the token
#   - proxy_intercept_errors on + error_page 401 = @fallback: the fallback
#     answers, without a token; the next request has a new token
#   - proxy_cache (proxy_cache_valid 200 401): the replayed 200 is cached,
#     the 401 never
# Plus: no answer holds a token in a header, no nginx-made body holds one.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use RedisTest;
use IO::Socket::INET;
use IO::Select;
use Test::More;
use Time::HiRes qw(sleep time);
use HTTP::Tiny;
use POSIX ();

my $S = SfTest::time_scale();
my $DELAY = 1.5 * $S;

my $t = SfTest->new;
$t->start_mock;
$t->mode('rotation');
my $redis = RedisTest->new(dir => $t->dir);
$redis->start;

my $extra = <<'EOF';
    proxy_cache_path %%DIR%%/cache keys_zone=sfc:1m;

    server {
        listen 127.0.0.1:XPORT;

        location /services/mirrored/ {
            sf_oauth crm;
            mirror /mirror;
            add_header X-SF $sf_oauth_status always;
            proxy_pass http://127.0.0.1:%%MOCK%%/services/;
        }
        location = /mirror {
            internal;
            proxy_pass http://127.0.0.1:%%MOCK%%/echo/mirror$request_uri;
        }
        location /services/authreq/ {
            sf_oauth crm;
            auth_request /auth;
            add_header X-SF $sf_oauth_status always;
            proxy_pass http://127.0.0.1:%%MOCK%%/services/;
        }
        location = /auth {
            internal;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_pass http://127.0.0.1:%%MOCK%%/echo/auth;
        }
        location /services/intercept/ {
            sf_oauth crm;
            proxy_intercept_errors on;
            error_page 401 = @fallback;
            add_header X-SF $sf_oauth_status always;
            proxy_pass http://127.0.0.1:%%MOCK%%/services/;
        }
        location @fallback {
            rewrite ^ /echo/fallback break;
            proxy_pass http://127.0.0.1:%%MOCK%%;
        }
        location /services/cached/ {
            sf_oauth crm;
            proxy_cache sfc;
            proxy_cache_key $request_uri;
            proxy_cache_valid 200 401 1m;
            add_header X-Cache $upstream_cache_status always;
            add_header X-SF $sf_oauth_status always;
            proxy_pass http://127.0.0.1:%%MOCK%%/services/;
        }
    }
EOF

my @x = map { SfTest::free_port() } 1 .. 2;
my @n = RedisTest::fleet(redis => $redis, first => $t, n => 2, start => 0);
for my $i (0, 1) {
    (my $e = $extra) =~ s/XPORT/$x[$i]/;
    RedisTest::configure_node($n[$i], redis => $redis, index => $i,
                              credential => { timeout => (8 * $S) . 's', http_extra => $e });
}
$_->start for @n;
my ($A, $B) = @n;

ok(RedisTest::all_connected(5, @n), 'connected');
is($A->get('/services/data/v59.0/warm')->{status}, 200, 'warm');
RedisTest::wait_for(3, sub { ((RedisTest::node_redis($B) || {})->{fleet_generation} // 0) >= 1 });

my @answers;
sub req {
    my ($port, $path) = @_;
    my $r = $t->get($path, port => $port, timeout => 20 * $S);
    push @answers, $r;
    return $r;
}

# one round: revoke, A's refresh held $DELAY s, B's requests at once
sub round {
    my ($what, @paths) = @_;
    $t->mock('delay', "seconds=$DELAY");
    $t->mock('revoke');
    my $pid = fork // die;
    if (!$pid) {
        my $r = HTTP::Tiny->new(timeout => 20 * $S)->get(
            'http://127.0.0.1:' . $A->port . "/services/data/v59.0/$what-A");
        POSIX::_exit($r->{status} == 200 ? 0 : 1);
    }
    RedisTest::wait_for(2, sub { ($redis->get($redis->key('lease')) // '') ne '' });
    my @r = map { req($x[1], $_) } @paths;   # sequential, the first waits
    waitpid($pid, 0);
    is($? >> 8, 0, "$what: A's request 200");
    $t->mock('delay', 'seconds=0.05');
    return @r;
}

$t->mock('reset_echo');
my $tr0 = $t->token_requests;

{
    my ($m) = round('mirror', '/services/mirrored/data/m1');
    is($m->{status}, 200, 'mirror: 200 on B after the fleet refresh');
    is($m->{headers}{'x-sf'}, 'RETRY', 'mirror: RETRY');
}
{
    my ($a) = round('authreq', '/services/authreq/data/a1');
    is($a->{status}, 200, 'auth_request: 200');
    is($a->{headers}{'x-sf'}, 'RETRY', 'auth_request: RETRY');
}
{
    my ($i, $i2) = round('intercept', '/services/intercept/data/i1',
                         '/services/intercept/data/i2');
    is($i->{status}, 200, 'intercept: 200');
    diag("intercept: first " . ($i->{headers}{'x-sf'} // '-') . ' '
         . substr($i->{content}, 0, 60));
    ok($i->{content} =~ m{"echo"\s*:\s*"/echo/fallback"} || ($i->{headers}{'x-sf'} // '') eq 'RETRY',
       'intercept: the fallback answers (documented) or the replay');
    is($i2->{status}, 200, 'intercept: the next request 200');
    unlike($i2->{content}, qr{/echo/fallback}, 'intercept: the next request is not the fallback');
}
{
    my ($c1, $c2) = round('cache', '/services/cached/data/c1', '/services/cached/data/c1');
    is($c1->{status}, 200, 'cache: 200 after the replay');
    is($c1->{headers}{'x-sf'}, 'RETRY', 'cache: RETRY');
    is($c2->{status}, 200, 'cache: again 200');
    is($c2->{headers}{'x-cache'}, 'HIT', 'cache: the replayed 200 was cached');
}
{
    # cached before the revoke, revoked: still HIT, no 401 cached
    my $w = req($x[1], '/services/cached/data/c2');
    is($w->{status}, 200, 'cache 2: 200');
    my ($c) = round('cache2', '/services/cached/data/c3', '/services/cached/data/c2');
    is($c->{status}, 200, 'cache 2: a new URI 200 after a revoke');
}

is($t->token_requests - $tr0, 5, 'one token request per revoke (5 rounds)');
my $st = $t->mock('stats');
is_deeply($st->{valid_refresh_tokens}, [ $st->{issued_refresh_tokens}[-1] ],
          'no reuse of a rotated-out refresh token');

my @tokens = @{ $st->{issued_access_tokens} };
my @echo = @{ $st->{echo_log} };
my %seen = map { ($_->{path} =~ m{^/echo/(\w+)})[0] => 1 } @echo;
ok($seen{mirror} && $seen{auth} , 'the mirror and auth endpoints were reached: '
   . join(',', sort keys %seen));
my @leaky = grep { my $e = $_; grep { my $a = $_; grep { index($a, $_) >= 0 } @tokens }
                                    @{ $e->{authorization} } } @echo;
is(scalar @leaky, 0, 'no token at the mirror, auth or fallback upstream')
    or diag(explain [ map { $_->{path} } @leaky ]);
ok(!grep({ @{ $_->{authorization} } } @echo), 'no Authorization at all there')
    or diag(explain \@echo);

# no token in any answer's headers; no token in a non-API body
my $hdr_leaks = 0;
for my $r (@answers) {
    my $h = join "\n", map { "$_: $r->{headers}{$_}" } keys %{ $r->{headers} };
    $hdr_leaks += grep { index($h, $_) >= 0 } @tokens;
    $hdr_leaks += grep { index($r->{content}, $_) >= 0 } @tokens
        if $r->{content} =~ m{/echo/};
}
is($hdr_leaks, 0, 'no answer header (nor fallback body) holds a token');
ok(!grep({ my $tok = $_; grep { index($_->error_log . $_->slurp('access.log'), $tok) >= 0 } @n } @tokens),
   'no log holds a token');

$_->finish for reverse @n;
ok($redis->finish, 'redis ran to the end');
done_testing;
