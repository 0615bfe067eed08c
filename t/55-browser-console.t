#!/usr/bin/perl

# The operator console in a real browser (headless Chromium through
# selenium, t/lib/console_browser.py), with the module: open the console,
# click Connect on a credential that has no refresh token, log in and
# consent on the mock Salesforce's pages, land on the callback's page; then
# a request through the proxy gets 200 with the exchange's token, with no
# reload and no other token request.  A revoke makes requests 502 and the
# console say "needs authorization"; a reconnect in the browser makes them
# work at once.  A reconnect to another org needs the confirm.  The
# console's screenshot is saved (to $SF_CONSOLE_SCREENSHOT too, when set:
# the README's picture).
#
# NEEDS the console and connect branches (issue 20): until sf_oauth_console
# is a directive nginx -t knows, and its page has Connect forms, it skips.
# Needs Debian's chromium, chromium-driver and python3-selenium (make deps).

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use Test::More;
use File::Copy qw(copy);
use Time::HiRes qw(time);

my @missing = SfTest::browser_missing();
plan skip_all => "no @missing (make deps installs chromium, chromium-driver "
    . 'and python3-selenium)' if @missing;

my $t = SfTest->new;
$t->start_mock;

my $server = <<'EOF';
    server {
        listen 127.0.0.1:%%PORT%% reuseport default_server;

        location /services/ {
            sf_oauth crm;
            proxy_pass http://127.0.0.1:%%MOCK%%;
        }

        location /sf_oauth/ {
            allow 127.0.0.1;
            deny all;
            sf_oauth_console;
        }

        location = /sf_oauth_info {
            sf_oauth_info;
        }
    }
EOF

# first with a refresh token: does nginx know sf_oauth_console at all?
$t->write_conf("    sf_oauth_zone zone=sf:1m;\n" . $t->credential . $server);
my ($rc, $out) = $t->test_conf;
plan skip_all => 'needs the console and connect branches of issue 20: '
    . 'nginx -t does not know sf_oauth_console yet'
    if $out =~ /unknown directive "sf_oauth_console"/;

# the credential to connect has none
$t->write_conf("    sf_oauth_zone zone=sf:1m;\n"
               . $t->credential(refresh_token => undef) . $server);
($rc, $out) = $t->test_conf;
die "nginx -t: $out" if $rc;

$t->start;
my $console = 'http://127.0.0.1:' . $t->port . '/sf_oauth/';
my $page = $t->get('/sf_oauth/');
if (!grep { ($_->{action} // '') =~ /connect$/ }
          SfTest::html_forms($page->{content} // '')) {
    $t->stop;
    plan skip_all => 'needs the connect branch of issue 20: the console '
        . "page (HTTP $page->{status}) has no Connect form yet";
}
pass('nginx -t and start: a not-connected credential with a console');

my $api = '/services/data/v59.0/sobjects';
my $r = $t->get($api);
is($r->{status}, 502, 'not connected: 502');
like($r->{content}, qr/crm/, 'not connected: the 502 names the credential');
is($t->token_requests, 0, 'not connected: no token request');

my $shot = $t->dir . '/console.png';
my $b = $t->browser('--console', $console, '--credential', 'crm',
                    '--screenshot', $shot,
                    '--screenshot-after', "$shot.after.png",
                    '--timeout', 30 * SfTest::time_scale());
ok($b->{ok}, 'Chromium: Connect, login, consent, the callback')
    or diag(explain($b));
like($b->{final_url} // '', qr{/sf_oauth/callback\?}, 'landed on the callback');
unlike($b->{text} // '', qr/\b(refused|denied|expired|error)\b/i,
       'the callback\'s page reports no error') or diag($b->{text});
for my $png ($shot, "$shot.after.png") {
    open my $fh, '<:raw', $png;
    my $head = '';
    read($fh, $head, 8) if $fh;
    is($head, "\x89PNG\r\n\x1a\n", "screenshot $png: a PNG");
}
copy("$shot.after.png", $ENV{SF_CONSOLE_SCREENSHOT})
    if $ENV{SF_CONSOLE_SCREENSHOT};

my $stats = $t->stats;
is($stats->{authorize}{exchanges_ok}, 1, 'one code exchange');
$r = $t->get($api);
is($r->{status}, 200, 'connected: a request gets 200, no reload');
is($r->{json} && $r->{json}{authorization},
   'Bearer ' . ($stats->{code_access_tokens}[0] // '?'),
   'with the exchange\'s access token');
is($t->stats->{grants}{refresh_token}, 0, 'and no refresh grant first');

my $c = $t->get('/sf_oauth/', headers => { Accept => 'application/json' });
my ($crm) = grep { $_->{name} eq 'crm' }
            @{ ($c->{json} || {})->{credentials} || [] };
is($crm && $crm->{state}, 'valid', 'the console: crm is valid');

# revoke, then reconnect in the browser
$t->mock('revoke_refresh');
$r = $t->get($api);
is($r->{status}, 502, 'revoked: 502');
$c = $t->get('/sf_oauth/', headers => { Accept => 'application/json' });
($crm) = grep { $_->{name} eq 'crm' }
         @{ ($c->{json} || {})->{credentials} || [] };
is($crm && $crm->{state}, 'needs authorization',
   'revoked: the console says needs authorization');
like($t->get('/sf_oauth/')->{content}, qr/needs authorization/,
     'revoked: the page says it too');

my $t0 = time;
$b = $t->browser('--console', $console, '--credential', 'crm',
                 '--timeout', 30 * SfTest::time_scale());
ok($b->{ok}, 'Chromium: reconnect') or diag(explain($b));
$r = $t->get($api);
is($r->{status}, 200, 'reconnected: 200 at once');
is($r->{json} && $r->{json}{authorization},
   'Bearer ' . ($t->stats->{code_access_tokens}[1] // '?'),
   'reconnected: the new exchange\'s token');
ok(time - $t0 < 60 * SfTest::time_scale(), 'reconnected well inside the hold');

# another org: the confirm
$b = $t->browser('--console', $console, '--credential', 'crm',
                 '--user', 'other@globex', '--confirm',
                 '--timeout', 30 * SfTest::time_scale());
ok($b->{ok}, 'Chromium: reconnect to another org, confirmed')
    or diag(explain($b));
is_deeply([map { $_->{step} } @{ $b->{steps} || [] }],
          ['console', 'login page', 'consent page', 'callback', 'confirm'],
          'another org: the callback asked for a confirm');
$r = $t->get($api);
is($r->{json} && $r->{json}{authorization},
   'Bearer ' . ($t->stats->{code_access_tokens}[2] // '?'),
   'another org: its token once confirmed');

my $all = $t->stats;
$t->no_token_in([], [@{ $all->{issued_codes} },
                     @{ $all->{code_refresh_tokens} },
                     @{ $all->{code_access_tokens} },
                     @{ $all->{code_verifiers} }]);

$t->finish;
done_testing;
