#!/usr/bin/perl

# Bulk API 1.0: requests to /services/async/ carry the token in
# X-SFDC-Session (the client's own value never reaches Salesforce); a dead
# session (HTTP 400 InvalidSessionId, XML or JSON) is refreshed once and
# replayed; other 400s reach the client byte for byte.  And the REST 401
# that no refresh cures ("This session is not valid for use with the REST
# API") passes through without a token request.
#
# Clients: jsforce's conn.bulk (installed by t/lib/install-node-deps.sh
# into build/node) and a step-by-step urllib client (t/lib/bulk_client.py).

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use Digest::SHA qw(sha256_hex);
use HTTP::Tiny;
use IO::Uncompress::Gunzip qw(gunzip);
use JSON::PP;
use Test::More;

my $ROOT = $SfTest::ROOT;
my $NODE_PATH = "$ROOT/build/node/node_modules";
my $HAVE_JSFORCE = -f "$NODE_PATH/jsforce/package.json"
                   && system('node -e 1 2>/dev/null') == 0;

my $t = SfTest->new;
$t->start_mock;
$t->simple_conf;
$t->start;

my $BASE = '/services/async/59.0';
my @responses;    # every answer through nginx, checked for tokens at the end

sub token { ($t->tokens)[-1] }

sub run_json {
    my ($cmd) = @_;
    my $out = `$cmd 2>&1`;
    my $res = eval { decode_json($out) };
    if (!$res) {
        diag("$cmd: $out");
        return { ok => 0 };
    }
    return $res;
}

sub jsforce {
    my ($n) = @_;
    my $res = run_json("NODE_PATH=$NODE_PATH node $ROOT/t/lib/bulk_jsforce.js "
                       . "http://127.0.0.1:${\ $t->port} $n");
    push @responses, { content => encode_json($res), headers => {} };
    return $res;
}

sub bulk_client {
    my (@args) = @_;
    my $q = join ' ', map { "'" . s/'/'\\''/gr . "'" } @args;
    my $res = run_json("python3 $ROOT/t/lib/bulk_client.py "
                       . "http://127.0.0.1:${\ $t->port} --mock "
                       . $t->mock_url . " $q");
    push @responses, map { { content => $_->{body}, headers => $_->{headers} } }
                     @{ $res->{steps} || [] };
    return $res;
}

# Every Bulk call that reached the mock since $from carried exactly one
# X-SFDC-Session, a token the mock issued, never the client's own value,
# and no Authorization other than the token's.
sub sessions_ok {
    my ($name, $from, $client_value) = @_;
    my $st = $t->stats();
    my %issued = map { $_ => 1 } @{ $st->{issued_access_tokens} };
    my @log = @{ $st->{bulk_log} }[$from .. $#{ $st->{bulk_log} }];
    ok(@log, "$name: calls reached the mock (" . scalar(@log) . ')');
    is(scalar(grep { @{ $_->{sessions} } != 1 } @log), 0,
       "$name: each call carried one X-SFDC-Session")
        or diag(explain \@log);
    is(scalar(grep { !$issued{ $_->{sessions}[0] // '' } } @log), 0,
       "$name: always a token the mock issued");
    if (defined $client_value) {
        ok(!grep({ $_ eq $client_value } @{ $st->{bulk_sessions} }),
           "$name: the client's own X-SFDC-Session never arrived");
    }
    is(scalar(grep { grep { !/^Bearer (.+)$/ || !$issued{$1} }
                     @{ $_->{authorization} } } @log), 0,
       "$name: no Authorization but the module's token");
    return @log;
}

# -- jsforce ---------------------------------------------------------------

SKIP: {
    skip 'jsforce is missing: run t/lib/install-node-deps.sh', 12
        unless $HAVE_JSFORCE;

    my $from = scalar @{ $t->stats()->{bulk_log} };
    my $r = jsforce(4);
    ok($r->{ok}, 'jsforce bulk load, cold: success') or diag(explain $r);
    is(scalar(grep { $_->{success} } @{ $r->{results} || [] }), 4,
       'jsforce: 4 records inserted');
    is($t->token_requests, 1, 'jsforce, cold: one token request');
    my @log = sessions_ok('jsforce', $from, 'jsforce-bogus-session');
    is(scalar(grep { $_->{status} >= 300 } @log), 0,
       'jsforce: no call failed at the mock');
    like(join(' ', map { "$_->{method} $_->{path}" } @log),
         qr{POST \S+/job .*POST \S+/batch .*GET \S+/batch/\w+ .*GET \S+/result .*POST \S+/job/\w+$},
         'jsforce: job, batch, poll, result, close');

    # after a revoke: the first call gets 400 InvalidSessionId, the
    # module refreshes once, replays, and jsforce never notices
    my $before = $t->token_requests;
    $from = scalar @{ $t->stats()->{bulk_log} };
    $t->mock('revoke');
    $r = jsforce(2);
    ok($r->{ok}, 'jsforce after a revoke: success') or diag(explain $r);
    is($t->token_requests, $before + 1, 'jsforce after a revoke: one token request');
    @log = sessions_ok('jsforce after a revoke', $from, 'jsforce-bogus-session');
    is($log[0]{status}, 400, 'the first call got 400 InvalidSessionId');
    is($log[1]{status}, 201, 'its replay created the job');
    is($log[1]{body_sha256}, $log[0]{body_sha256}, 'the replay sent the same body');
}

# -- step by step, across revokes -----------------------------------------

for my $json (0, 1) {
    my $kind = $json ? 'JSON job' : 'XML job, CSV batch';
    for my $revoke (['job'], ['batch'], ['info', 'close'], ['result']) {
        my $name = "$kind, revoked before @$revoke";
        my $before = $t->token_requests;
        my $from = scalar @{ $t->stats()->{bulk_log} };

        my $r = bulk_client(($json ? ('--json') : ()),
                            map { ('--revoke-before', $_) } @$revoke);
        ok($r->{ok}, "$name: every step succeeded") or diag(explain $r);
        is($r->{batch_state}, 'Completed', "$name: the batch completed");
        is($r->{job_state}, 'Closed', "$name: the job closed");
        like($r->{result} // '', $json ? qr/"success": true/ : qr/^"Id","Success"/,
             "$name: the results");
        is($t->token_requests, $before + @$revoke,
           "$name: one token request per revoke");

        my @log = sessions_ok($name, $from, 'client-bogus-session');
        my @dead = grep { $_->{status} == 400 } @log;
        is(scalar @dead, scalar @$revoke, "$name: a 400 per revoke, each replayed");
        is(scalar @log, 5 + @$revoke, "$name: 5 calls and the replays");
        for my $d (@dead) {
            my ($replay) = grep { $_->{method} eq $d->{method}
                                  && $_->{path} eq $d->{path}
                                  && $_->{status} < 300 } @log;
            ok($replay && $replay->{body_sha256} eq $d->{body_sha256},
               "$name: $d->{method} $d->{path} replayed with the same body");
        }
    }
}

# -- the client's own session header ---------------------------------------

{
    my $from = scalar @{ $t->stats()->{bulk_log} };
    my $r = bulk_client('--no-session');
    ok($r->{ok}, 'no X-SFDC-Session from the client: the module adds one');
    sessions_ok('no X-SFDC-Session', $from);

    # two of them, in odd case, and an Authorization of its own
    my $job = $r->{ids}{job};
    $from = scalar @{ $t->stats()->{bulk_log} };
    my $res = $t->http('GET', "$BASE/job/$job", headers => {
        'x-sfdc-session' => ['client-one', 'client-two'],
        'Authorization' => 'Bearer client-own-token' });
    push @responses, $res;
    is($res->{status}, 200, 'two client X-SFDC-Session headers: 200');
    sessions_ok('two client X-SFDC-Session headers', $from, 'client-one');
    ok(!grep({ $_ eq 'client-two' } @{ $t->stats()->{bulk_sessions} }),
       'the second client value never arrived either');
}

# -- other 400s pass through byte for byte ---------------------------------

sub same_headers {
    my ($name, $via, $direct) = @_;
    my %skip = map { $_ => 1 } qw(date server connection x-sf-oauth-status);
    my %a = map { $_ => $via->{headers}{$_} } grep { !$skip{$_} } keys %{ $via->{headers} };
    my %b = map { $_ => $direct->{headers}{$_} } grep { !$skip{$_} } keys %{ $direct->{headers} };
    is_deeply(\%a, \%b, "$name: the same headers as Salesforce sent");
}

for my $ctype (undef, 'application/json') {
    my $name = 'InvalidJob' . ($ctype ? ' (JSON)' : ' (XML)');
    my %h = $ctype ? ('Content-Type' => $ctype) : ();

    $t->http('GET', "$BASE/job/750WARM")    # a valid token in the cache
        ;
    my $want = HTTP::Tiny->new->request('GET', $t->mock_url . "$BASE/job/750NOSUCHJOB",
        { headers => { %h, 'X-SFDC-Session' => token() } });
    is($want->{status}, 400, "$name: Salesforce answers 400 (direct)");
    like($want->{content}, qr/InvalidJob/, "$name: an InvalidJob error");

    my $before = $t->token_requests;
    my $calls = scalar @{ $t->stats()->{bulk_log} };
    my $r = $t->http('GET', "$BASE/job/750NOSUCHJOB",
                     headers => { %h, 'X-SFDC-Session' => 'client-bogus-session' });
    push @responses, $r;
    is($r->{status}, 400, "$name: the client gets the 400");
    is($r->{content}, $want->{content}, "$name: the body byte for byte");
    same_headers($name, $r, $want);
    is($t->token_requests, $before, "$name: no token request");
    is(scalar @{ $t->stats()->{bulk_log} }, $calls + 1, "$name: no replay");
}

# -- Salesforce gzips its answers, errors too, when the client accepts gzip --

{
    $t->mock('gzip', 'on=1');
    my $r = bulk_client();
    my $job = $r->{ids}{job} // 'none';
    for my $ctype (undef, 'application/json') {
        my $name = 'gzip' . ($ctype ? ' (JSON)' : ' (XML)');
        my %h = ('Accept-Encoding' => 'gzip', $ctype ? ('Content-Type' => $ctype) : ());
        my $before = $t->token_requests;
        $t->mock('revoke');
        $r = $t->http('GET', "$BASE/job/$job", headers => \%h);
        is($r->{status}, 200, "$name: a gzipped InvalidSessionId 400 is replayed")
            or diag($r->{content});
        is($r->{headers}{'x-sf-oauth-status'}, 'RETRY', "$name: RETRY");
        is($t->token_requests, $before + 1, "$name: one token request");
        is($r->{headers}{'content-encoding'}, 'gzip', "$name: gzipped");
        my $plain = '';
        gunzip(\$r->{content} => \$plain);
        like($plain, qr/\Q$job\E/, "$name: the job's info");
        push @responses, { content => $plain, headers => {} };

        my $want = HTTP::Tiny->new->request('GET', $t->mock_url . "$BASE/job/750NOSUCHJOB",
            { headers => { %h, 'X-SFDC-Session' => token() } });
        $before = $t->token_requests;
        $r = $t->http('GET', "$BASE/job/750NOSUCHJOB", headers => \%h);
        is($r->{status}, 400, "$name: a gzipped InvalidJob passes");
        ok($r->{content} eq $want->{content}, "$name: byte for byte");
        same_headers("$name InvalidJob", $r, $want);
        is($t->token_requests, $before, "$name: InvalidJob costs no token");
    }
  SKIP: {
        skip 'jsforce is missing', 2 unless $HAVE_JSFORCE;
        # jsforce (node-fetch) always says Accept-Encoding: gzip,deflate
        my $before = $t->token_requests;
        $t->mock('revoke');
        my $j = jsforce(2);
        ok($j->{ok}, 'gzip: jsforce after a revoke succeeds') or diag(explain $j);
        is($t->token_requests, $before + 1, 'gzip: jsforce, one token request');
    }
    $t->mock('gzip', 'on=0');
}

# -- 100 concurrent calls after a revoke --------------------------------------

{
    my $r = bulk_client();
    my $job = $r->{ids}{job} // 'none';
    $t->mock('revoke');
    my $before = $t->token_requests;
    my @status = $t->parallel(100, "$BASE/job/$job");
    is(scalar(grep { $_ == 200 } @status), 100,
       '100 concurrent Bulk calls after a revoke: all 200')
        or diag("@status");
    is($t->token_requests, $before + 1,
       '100 concurrent Bulk calls after a revoke: exactly 1 token request');
}

# -- REST: a 401 that no refresh cures ----------------------------------------

{
    my $r = $t->get('/services/data/v59.0/limits');    # a valid token
    is($r->{status}, 200, 'REST: 200 with the token');

    my $before = $t->token_requests;
    my $api = $t->stats()->{api_requests};
    $r = $t->get('/services/data/v59.0/query?q=SELECT+Id+FROM+Account&notrest=1');
    push @responses, $r;
    is($r->{status}, 401, '"not valid for use with the REST API": 401 to the client');
    is($r->{content},
       '[{"message":"This session is not valid for use with the REST API",'
       . '"errorCode":"INVALID_SESSION_ID"}]',
       'the 401 body byte for byte');
    is($t->token_requests, $before, 'no token request');
    is($t->stats()->{api_requests}, $api + 1, 'no replay');
    isnt($r->{headers}{'x-sf-oauth-status'}, 'RETRY', 'not RETRY');

    $r = $t->get('/services/data/v59.0/limits');
    is($r->{status}, 200, 'REST: the token still works afterwards');
    is($t->token_requests, $before, 'and was not dropped');
}

# -- the token never appears in an answer -----------------------------------

{
    $t->no_token_in(\@responses, $t->stats()->{issued_access_tokens});
}

$t->finish;

done_testing;
