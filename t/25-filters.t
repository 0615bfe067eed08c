#!/usr/bin/perl

# Other modules in an sf_oauth location, each with a revoked token so that
# the 401 replay runs too: post_action, SSI (an include of an sf_oauth
# location is a subrequest that carries the token), sub_filter, addition,
# X-Accel-Redirect from the upstream, limit_rate.  The token never reaches
# a location without sf_oauth.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use Test::More;
use Time::HiRes qw(sleep);

my $t = SfTest->new(log_level => 'debug');
$t->start_mock;

my $other = SfTest::free_port();

$t->simple_conf(http_extra => <<'EOF2');
    server {
        listen 127.0.0.1:OTHERPORT;

        location /services/pa/ {
            sf_oauth crm;
            post_action @after;
            proxy_pass http://127.0.0.1:%%MOCK%%/services/;
        }

        location @after {
            rewrite ^ /echo/post_action break;
            proxy_pass http://127.0.0.1:%%MOCK%%;
        }

        location /services/ssi/ {
            sf_oauth crm;
            ssi on;
            proxy_pass http://127.0.0.1:%%MOCK%%/services/;
        }

        location /services/sub/ {
            sf_oauth crm;
            sub_filter Acme "Acme Corp";
            addition_types text/html;
            add_after_body /after;
            proxy_pass http://127.0.0.1:%%MOCK%%/services/;
        }

        location = /after {
            return 200 "after\n";
        }

        location /services/accel/ {
            sf_oauth crm;
            proxy_pass http://127.0.0.1:%%MOCK%%/services/;
        }

        location /internal/ {
            internal;
            rewrite ^/internal/(.*) /echo/accel/$1 break;
            proxy_pass http://127.0.0.1:%%MOCK%%;
        }

        location /services/slow/ {
            sf_oauth crm;
            limit_rate 20k;
            proxy_pass http://127.0.0.1:%%MOCK%%/services/;
        }
    }
EOF2

my $conf = $t->slurp('nginx.conf');
$conf =~ s/OTHERPORT/$other/;
open my $fh, '>', $t->dir . '/nginx.conf' or die;
print $fh $conf;
close $fh;

$t->start;

sub echo_log { @{ $t->stats->{echo_log} } }

sub wait_echo {
    my ($re) = @_;
    for (1 .. 100) {
        my ($e) = grep { $_->{path} =~ $re } echo_log();
        return $e if $e;
        sleep 0.05;
    }
    return undef;
}

is($t->get('/services/data/')->{status}, 200, 'warm-up: 200');

for my $revoke (0, 1) {
    my $what = $revoke ? 'replayed' : 'hot path';

    # post_action: runs after the response, in a location without sf_oauth
    $t->mock('revoke') if $revoke;
    my $r = $t->http('GET', "/services/pa/data/p$revoke", port => $other,
                     headers => { Authorization => 'Basic Y2xpZW50OnNlY3JldA==' });
    is($r->{status}, 200, "post_action, $what: 200");
    my $e = wait_echo(qr{^/echo/post_action});
    ok($e, "post_action, $what: the post action ran");
    is_deeply($e && $e->{authorization}, ['Basic Y2xpZW50OnNlY3JldA=='],
              "post_action, $what: the client's header, not the token");
    $t->mock('reset_echo');

    # SSI: the include is a subrequest of an sf_oauth location
    $t->mock('revoke') if $revoke;
    $r = $t->http('GET',
                  "/services/ssi/data/page$revoke?ssi=/services/ssi/data/inc",
                  port => $other);
    is($r->{status}, 200, "ssi, $what: 200");
    like($r->{content}, qr{^<p>\{.*"path": "/services/data/inc".*\}</p>$}s,
         "ssi, $what: the include got Salesforce's answer, with the token");

    # sub_filter and addition
    $t->mock('revoke') if $revoke;
    $r = $t->http('GET', "/services/sub/data/h$revoke?html=1", port => $other);
    is($r->{status}, 200, "sub_filter, $what: 200");
    like($r->{content}, qr/Account Acme Corp.*after/s,
         "sub_filter and addition, $what: applied to the answer");

    # X-Accel-Redirect from Salesforce's side to a location without sf_oauth
    $t->mock('revoke') if $revoke;
    $r = $t->http('GET', "/services/accel/data/a$revoke?accel=/internal/x$revoke",
                  port => $other);
    is($r->{status}, 200, "X-Accel-Redirect, $what: 200");
    $e = wait_echo(qr{^/echo/accel/x$revoke});
    ok($e, "X-Accel-Redirect, $what: redirected");
    is_deeply($e && $e->{authorization}, [],
              "X-Accel-Redirect, $what: the next location gets no token");

    # limit_rate: a replayed answer is still rate-limited, and complete
    $t->mock('revoke') if $revoke;
    $r = $t->http('GET', '/services/slow/data/big?bytes=40000', port => $other);
    is($r->{status}, 200, "limit_rate, $what: 200");
    is(length $r->{content}, 40000, "limit_rate, $what: every byte");
}

{
    my $log = $t->error_log;
    my $n = grep { index($log, substr($_, 19, 20)) >= 0 } $t->tokens();
    is($n, 0, 'no token in the debug log');
}

$t->finish;

done_testing;
