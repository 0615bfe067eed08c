#!/usr/bin/perl

# A real browser (headless Chromium through selenium, t/lib/console_browser.py)
# on the mock Salesforce's pages alone, no nginx: from an authorize URL it
# logs in and consents, and the redirect brings code and state to the
# redirect_uri (the mock's own /echo/, which logs what it gets); the code
# then exchanges with the PKCE verifier.  Deny brings error=access_denied;
# a wrong password never reaches the consent.  Then the whole console flow
# in Chromium against t/lib/fake_console.py (a stand-in for the module's
# console, same contract): Connect clicked, the 303 followed under the
# page's CSP form-action, the callback reached with the cookie; which
# Origin and Sec-Fetch-Site Chromium sends on the connect POST.
# t/55-browser-console.t does the same with the module.
#
# Needs Debian's chromium, chromium-driver and python3-selenium (make deps
# installs them).

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use Test::More;
use Digest::SHA ();
use HTTP::Tiny;
use JSON::PP;

# no nginx runs here (the mock, a stand-in console and Chromium): under
# valgrind there is no module code to check, only minutes to lose
plan skip_all => 'no module code runs here: nothing for valgrind to check'
    if $ENV{SF_TEST_VALGRIND};

my @missing = SfTest::browser_missing();
plan skip_all => "no @missing (make deps installs chromium, chromium-driver "
    . 'and python3-selenium)' if @missing;

my $t = SfTest->new;
$t->start_mock;
my $mock = $t->mock_url;

sub authorize_url {
    my (%q) = @_;
    return "$mock/services/oauth2/authorize?" . SfTest::form_encode({
        response_type => 'code', client_id => $SfTest::CLIENT_ID,
        scope => 'api refresh_token', prompt => 'login consent', %q });
}

# -- the mock's pages alone, to its /echo/ ------------------------------------

my $redirect_uri = "$mock/echo/sf_oauth/callback";
my ($verifier, $challenge) = SfTest::pkce();
my $state = 'br0wser state&=/?' . int(rand 1e6);
my $r = $t->browser('--authorize', authorize_url(
                    redirect_uri => $redirect_uri, state => $state,
                    code_challenge => $challenge,
                    code_challenge_method => 'S256'),
                '--timeout', 30 * SfTest::time_scale());
ok($r->{ok}, 'Chromium: login and consent on the mock\'s pages')
    or diag(explain($r));
is_deeply([map { $_->{step} } @{ $r->{steps} }],
          ['login page', 'consent page', 'callback'],
          'Chromium: login page, consent page, the redirect_uri');
like($r->{final_url} // '', qr{^\Q$redirect_uri\E\?code=},
     'Chromium landed on the redirect_uri with a code');

my $echo = $t->stats->{echo_log};
my ($hit) = grep { $_->{path} =~ m{^/echo/sf_oauth/callback\?} } @$echo;
ok($hit, 'the redirect_uri got the request') or diag(explain($echo));
is($hit && $hit->{method}, 'GET', 'the redirect_uri: a GET');
my $q = SfTest::parse_query($hit ? $hit->{path} : '');
is($q->{state}, $state, 'the state arrived, byte for byte');
my $stats = $t->stats;
is_deeply($stats->{issued_codes}, [$q->{code}], 'the code arrived');
is($stats->{authorize}{logins}, 1, 'one login');
is($stats->{authorize}{consents}, 1, 'one consent');

$r = $t->code_exchange(code => $q->{code}, redirect_uri => $redirect_uri,
                       code_verifier => $verifier);
is($r->{status}, 200, 'the browser\'s code exchanges with the verifier');
ok($r->{json} && $r->{json}{refresh_token}, 'a refresh token');

# Deny
$t->mock('reset_echo');
$r = $t->browser('--authorize', authorize_url(redirect_uri => $redirect_uri,
                                          state => 'd1'),
             '--deny', '--timeout', 30 * SfTest::time_scale());
ok($r->{ok}, 'Chromium: Deny pressed') or diag(explain($r));
($hit) = grep { $_->{path} =~ m{^/echo/sf_oauth/callback\?} }
         @{ $t->stats->{echo_log} };
$q = SfTest::parse_query($hit ? $hit->{path} : '');
is($q->{error}, 'access_denied', 'Deny: error=access_denied arrived');
is($q->{state}, 'd1', 'Deny: with the state');
ok(!exists $q->{code}, 'Deny: no code');

# another user
$r = $t->browser('--authorize', authorize_url(redirect_uri => $redirect_uri,
                                          state => 'o1'),
             '--user', 'other@globex', '--timeout', 30 * SfTest::time_scale());
ok($r->{ok}, 'Chromium: other@globex logs in');
$q = SfTest::parse_query($r->{final_url} // '');
$r = $t->code_exchange(code => $q->{code}, redirect_uri => $redirect_uri);
like($r->{json} && $r->{json}{id}, qr{/id/00D5g000009GlbX/005000000000002$},
     'other@globex: the code is theirs (org B)');

# a wrong password: the consent never comes, the script says so
$r = $t->browser('--authorize', authorize_url(redirect_uri => $redirect_uri),
             '--password', 'wrong', '--timeout', 30 * SfTest::time_scale());
ok(!$r->{ok}, 'a wrong password: not ok');
like($r->{error} // '', qr/^the login was refused: Please check/,
     'a wrong password: refused at the login, not a timeout')
    or diag(explain($r));
is(last_step($r), 'login page',
   'a wrong password: stuck at the login');
like($r->{text} // '', qr/Please check your username and password/,
     'a wrong password: the page says so');

# -- the console flow in Chromium, against the stand-in console -------------------

$t->mock('reset');
my $console = $t->start_fake_console('crm', 'sales');
my $shot = $t->dir . '/console.png';
$r = $t->browser('--console', $console, '--credential', 'sales',
             '--screenshot', $shot, '--screenshot-after', "$shot.after.png",
             '--timeout', 30 * SfTest::time_scale());
ok($r->{ok}, 'Chromium: Connect on the console, login, consent, callback')
    or diag(explain($r));
is_deeply([map { $_->{step} } @{ $r->{steps} }],
          ['console', 'login page', 'consent page', 'callback',
           'console again'], 'Chromium: every step');
like($r->{text} // '', qr/Credential sales is connected as 00D5g000004TmoK/,
     'Chromium: the callback\'s page says connected');
like($r->{connect_form}{action} // '', qr{/sf_oauth/connect$},
     'Chromium: the form it clicked');

for my $png ($shot, "$shot.after.png") {
    open my $fh, '<:raw', $png;
    my $head = '';
    read($fh, $head, 8) if $fh;
    is($head, "\x89PNG\r\n\x1a\n", "the screenshot $png is a PNG");
    ok((-s $png // 0) > 2000, 'and not empty');
}

isnt(Digest::SHA::sha256_hex($t->slurp('console.png')),
     Digest::SHA::sha256_hex($t->slurp('console.png.after.png')),
     'the console after the connection is another picture');

my $fs = decode_json(HTTP::Tiny->new->get($console . '__state')->{content});
is($fs->{creds}{sales}{connections}, 1, 'the stand-in stored one connection');
is_deeply($fs->{refusals}, [], 'nothing refused');
my $h = $fs->{connect_headers}[0] || {};
is($h->{sec_fetch_site}, 'same-origin',
   'Chromium sent Sec-Fetch-Site: same-origin on the connect POST');
diag("Chromium's connect POST: Origin "
     . ($h->{origin} // '(none)') . ', Sec-Fetch-Site '
     . ($h->{sec_fetch_site} // '(none)'));
ok(!defined $h->{origin} || $h->{origin} eq 'null'
   || $h->{origin} eq ($console =~ s{/sf_oauth/$}{}r),
   'its Origin: the console\'s own, or null (Referrer-Policy: no-referrer)');

# the console page's CSP decides: form-action 'self' alone, and Chromium
# does not follow the connect's 303 to the authorize URL (it stays on the
# console), as issue 20 says
my $strict = $t->start_fake_console('crm', '--form-action-self');
my $before = $t->stats->{authorize}{requests};
$r = $t->browser('--console', $strict, '--credential', 'crm',
                 '--timeout', 30 * SfTest::time_scale(),
                 '--wait-login', 5 * SfTest::time_scale());
ok(!$r->{ok}, 'form-action \'self\' alone: the flow does not go through');
is(last_step($r), 'console', 'form-action \'self\' alone: no login page');
is($t->stats->{authorize}{requests}, $before,
   'form-action \'self\' alone: the mock\'s authorize never reached');
$fs = decode_json(HTTP::Tiny->new->get($strict . '__state')->{content});
is(scalar @{ $fs->{connect_headers} }, 1,
   'form-action \'self\' alone: the connect POST itself was sent (its 303 '
   . 'not followed)');

$t->finish;
done_testing;

# the step the browser got to last, or undef when it got nowhere
sub last_step {
    my ($r) = @_;

    my @steps = @{ $r->{steps} || [] };

    return @steps ? $steps[-1]{step} : undef;
}
