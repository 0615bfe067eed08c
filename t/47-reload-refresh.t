#!/usr/bin/perl

# A reload while a token request is in flight costs nothing.  When the
# reload changes the credential (the grant), the old worker's token
# request ends with one result, which the changed record does not take,
# and no retry after it; the request that waits in the old worker gets
# the token that the new configuration gets, in the shared zone.  No false
# "authorize the connected app again".  A reload that changes nothing
# still costs the one token request, and so does one that changes the
# token_url alone: the record is kept (its refresh token is the org's at
# any endpoint), and the old worker's answer, with the refresh token the
# mock rotated into it, is taken (t/60-token-url-change.t).

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use IO::Select;
use IO::Socket::INET;
use Test::More;
use Time::HiRes qw(sleep time);

my $scale = SfTest->time_scale;
my $delay = 2 * $scale;

my $t = SfTest->new;
$t->start_mock;

# nginx.conf with the credential "crm": the refresh grant by default;
# token_url's path, the grant and the other lines may be given
sub conf {
    my (%opt) = @_;

    my $path = delete $opt{path} // '/services/oauth2/token';
    my $grant = delete $opt{grant} // 'refresh_token';

    my %line = (
        token_url => $t->mock_url . $path,
        grant => $grant,
        client_id => $SfTest::CLIENT_ID,
        client_secret => $SfTest::CLIENT_SECRET,
        refresh_token => $grant eq 'refresh_token' ? $SfTest::REFRESH_TOKEN
                                                   : undef,
        timeout => (10 * $scale) . 's',
        %opt,
    );

    my $block = "    sf_oauth_credential crm {\n        zone sf;\n";
    for my $k (qw(token_url grant client_id client_secret refresh_token
                  timeout))
    {
        $block .= "        $k $line{$k};\n" if defined $line{$k};
    }
    $block .= "    }\n";

    $t->simple_conf->edit_conf(sub {
        s/    sf_oauth_credential crm \{\n.*?\n    \}\n/$block/s
            or die 'no credential block';
    });
}

# the pid of the worker that holds the refresh lease, once one does
sub refreshing_pid {
    for (1 .. 200) {
        my $info = $t->cred_info('crm');
        return $info->{lease_pid} if $info && $info->{refreshing};
        sleep 0.02;
    }
    return 0;
}

# A cold request that waits for the token; then, with its token request
# in flight, a reload to the configuration that %new writes.  Returns the
# client's status, how long it took, and the pid of the old worker that
# made the token request (gone when this returns).
sub reload_during_refresh {
    my (%new) = @_;

    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $t->port) or die;
    my $start = time;
    print $s "GET /services/data/v59.0/ HTTP/1.1\r\nHost: localhost\r\n"
             . "Connection: close\r\n\r\n";

    my $owner = refreshing_pid();

    conf(%new);
    kill 'HUP', $t->{nginx_pid};

    my $answer = '';
    my $sel = IO::Select->new($s);
    while (time - $start < 40 * $scale) {
        next unless $sel->can_read(0.5);
        last unless sysread($s, my $chunk, 65536);
        $answer .= $chunk;
    }
    my $took = time - $start;
    close $s;

    # the old workers end when their requests are done
    my $wait = time;
    sleep 0.05 while $owner && kill(0, $owner) && time - $wait < 30 * $scale;

    # and the new ones are up
    for (1 .. 100) {
        last if $t->worker_pids >= 2;
        sleep 0.05;
    }

    my ($status) = $answer =~ m{^HTTP/1\.\d (\d+)};

    return ($status // 0, $took, $owner);
}

# every case starts from a cold zone and a slow token endpoint
sub cold_start {
    $t->stop;
    $t->mock('reset');
    $t->mock('delay', "seconds=$delay");
    truncate $t->dir . '/error.log', 0;
    conf(@_);
    $t->start;
}

# CHANGED: whether the reload changed the credential; MAX: how many token
# requests there may be in all
sub check {
    my ($what, $changed, $max_requests, $status, $took, $owner) = @_;

    ok($owner, "$what: a worker was refreshing at the reload");
    is($status, 200, sprintf('%s: the waiting client gets 200 (%.1f s)',
                             $what, $took));
    ok(!kill(0, $owner), "$what: the old worker has ended");

    # no late retry of the old worker's: the count stays
    my $n = $t->token_requests;
    ok($n <= $max_requests, "$what: $n token requests, at most $max_requests");

    my $r = $t->get('/services/data/v59.0/');
    is($r->{status}, 200, "$what: the next request: 200");
    is($r->{headers}{'x-sf-oauth-status'}, 'HIT',
       "$what: with the token in the zone");
    is($t->token_requests, $n, "$what: and no other token request");

    my @authorize = $t->log_lines(qr/authorize/);
    is(scalar @authorize, 0, "$what: no \"authorize\" in the log")
        or diag(join "\n", @authorize[0 .. ($#authorize < 4 ? $#authorize : 4)]);

    my @bad = $t->log_lines(qr/\[(alert|crit|emerg)\]/);
    is(scalar @bad, 0, "$what: no alert") or diag(join "\n", @bad);

    # a change: the old request's one answer is dropped, once, and one
    # worker of the new configuration refreshes for the waiting request
    is(scalar $t->log_lines(qr/the answer \(a token\) is dropped/),
       $changed ? 1 : 0, "$what: the old answer dropped "
                         . ($changed ? 'once' : 'never'));
    is(scalar $t->log_lines(qr/while requests waited for its token: refreshing for them/),
       $changed ? 1 : 0, "$what: the new workers refreshed for it "
                         . ($changed ? 'once' : 'never'));

    # the metrics count the old answer as dropped; with the others, every
    # token request the JSON counted (none is in flight)
    my $text = $t->get('/sf_oauth_info?format=prometheus')->{content} // '';
    my %result = $text =~ /^sf_oauth_token_requests_total
                           \{credential="crm",zone="sf",result="(\w+)"\}
                           \x20(\d+)$/mgx;
    is($result{dropped}, $changed ? 1 : 0,
       "$what: sf_oauth_token_requests_total{result=\"dropped\"} "
       . ($changed ? 1 : 0));
    my $sum = 0;
    $sum += $_ for values %result;
    is($sum, $t->cred_info('crm')->{token_requests},
       "$what: the sum over result is the JSON's token_requests ($sum)");
}

# -- a reload that changes nothing: one token request ------------------------

cold_start();
check('no change', 0, 1, reload_during_refresh());

# the mock rotating: no rotated-out refresh token was ever presented
sub no_reuse {
    my ($what) = @_;

    my $s = $t->mock('stats');
    my @bad = grep { $_->[1] ne 'ok' } @{ $s->{refresh_log} };
    is(scalar @bad, 0, "$what: no rotated-out refresh token presented")
        or diag(explain $s->{refresh_log});
    is_deeply($s->{valid_refresh_tokens}, [ $s->{issued_refresh_tokens}[-1] ],
              "$what: the mock revoked nothing");
}

# -- a changed token_url: the old worker's answer is taken -------------------

cold_start();
$t->mode('rotation');
check('token_url changed', 0, 1,
      reload_during_refresh(path => '/alt/services/oauth2/token'));
is($t->mock('stats')->{token_requests}, $t->token_requests, 'one mock');
no_reuse('token_url changed');

# -- a changed grant: refresh_token to client_credentials --------------------

cold_start();
check('grant changed', 1, 2,
      reload_during_refresh(grant => 'client_credentials'));
is($t->mock('stats')->{grants}{client_credentials}, 1,
   'grant changed: the new configuration made its client credentials grant');

# -- a request held after a 401, its refresh in flight, a changed token_url --

cold_start();
$t->mode('rotation');
is($t->get('/services/data/v59.0/')->{status}, 200, '401: a first token');
$t->mock('revoke');
check('401 held, token_url changed', 0, 2,
      reload_during_refresh(path => '/alt/services/oauth2/token'));
no_reuse('401 held, token_url changed');

$t->finish;

done_testing;
