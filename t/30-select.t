#!/usr/bin/perl

# sf_oauth $variable: one location, two orgs.  The credential of each
# request is the one the variable's value names (exactly): its token goes
# upstream, on the first attempt, on the 401 replay and after waiting for
# a refresh, and $sf_oauth_instance_url and $sf_oauth_status are its own.
# An empty value adds no token at all; a value that names no credential is
# the module's 502, with one error line, and nothing reaches Salesforce.
#
# Two mock orgs: "prod" is the first mock, "sandbox" an extra one.  A token
# of one is 401 at the other, so a mixed-up token shows as a 401 in the
# mock's api_log and as an extra token request.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use IO::Socket::INET;
use JSON::PP;
use Test::More;
use Time::HiRes qw(sleep time);

# token requests slow enough that 200 requests arrive while they run
my $t = SfTest->new(mock_args => ['--token-delay', '0.5']);
$t->start_mock;
my $m2 = $t->start_extra_mock('--token-delay', '0.5');

my %url = (prod => $t->mock_url, sandbox => $m2->url);

sub stats {
    my ($org) = @_;
    return ($org eq 'prod' ? $t : $m2)->stats;
}

sub token_of { stats($_[0])->{issued_access_tokens}[-1] }

sub counts {
    my %c;
    for my $org (qw(prod sandbox)) {
        my $s = stats($org);
        $c{$org} = { api => $s->{api_requests}, token => $s->{token_requests} };
    }
    return \%c;
}

my $creds = "    sf_oauth_zone zone=sf:1m;\n"
    . $t->credential(name => 'prod')
    . $t->credential(name => 'sandbox',
                     token_url => $m2->url . '/services/oauth2/token');

# The map is the access control: the names it lists, plus (for this test
# only) "raw:VALUE", which hands any value through to sf_oauth.
my $maps = <<'EOF';
    map $http_x_sf_org $sf_cred {
        default              "";
        prod                 prod;
        sandbox              sandbox;
        bogus                nosuch;
        upper                PROD;
        ~^raw:(?<name>.*)$   $name;
    }

    map $sf_cred $sf_upstream {
        default              127.0.0.1:%%MOCK%%;
        sandbox              127.0.0.1:%%MOCK2%%;
    }

    log_format sel '$request_uri $status $sf_oauth_status';
EOF

sub conf_with {
    my ($directive, $credentials) = @_;

    return ($credentials // $creds) . $maps . <<"EOF";
    server {
        listen 127.0.0.1:%%PORT%% reuseport default_server;
        access_log %%DIR%%/select.log sel;

        location /services/ {
            $directive
            add_header X-SF-OAuth-Status "[\$sf_oauth_status]" always;
            add_header X-Instance "[\$sf_oauth_instance_url]" always;
            proxy_pass http://\$sf_upstream;
        }

        location /services/v/ {
            $directive
            add_header X-SF-OAuth-Status "[\$sf_oauth_status]" always;
            add_header X-Instance "[\$sf_oauth_instance_url]" always;
            proxy_pass \$sf_oauth_instance_url;
        }

        location /services/fixed/ {
            sf_oauth prod;
            add_header X-SF-OAuth-Status "[\$sf_oauth_status]" always;
            proxy_pass http://127.0.0.1:%%MOCK%%/services/;
        }

        location /services/off/ {
            sf_oauth off;
            add_header X-SF-OAuth-Status "[\$sf_oauth_status]" always;
            proxy_pass http://127.0.0.1:%%MOCK%%/services/;
        }

        location /plain/ {
            add_header X-SF-OAuth-Status "[\$sf_oauth_status]" always;
            add_header X-Instance "[\$sf_oauth_instance_url]" always;
            proxy_pass http://127.0.0.1:%%MOCK%%/services/;
        }

        location = /sf_oauth_info {
            sf_oauth_info;
        }
    }
EOF
}

# -- nginx -t ----------------------------------------------------------------

{
    $t->write_conf(conf_with('sf_oauth $sf_nope;'));
    my ($rc, $out) = $t->test_conf;
    isnt($rc, 0, 'nginx -t: sf_oauth $undefined_variable is rejected');
    like($out, qr/unknown "sf_nope" variable/, 'nginx -t: says unknown variable')
        or diag($out);

    $t->write_conf(conf_with('sf_oauth nosuch;'));
    ($rc, $out) = $t->test_conf;
    isnt($rc, 0, 'nginx -t: sf_oauth with an unknown NAME is still rejected');
    like($out, qr/unknown sf_oauth_credential "nosuch" in "sf_oauth"/,
         'nginx -t: says which credential') or diag($out);

    $t->write_conf(conf_with('sf_oauth "";'));
    ($rc, $out) = $t->test_conf;
    isnt($rc, 0, 'nginx -t: sf_oauth "" is rejected');
    like($out, qr/empty "sf_oauth": name a credential, a variable, or "off"/,
         'nginx -t: says what to write instead') or diag($out);

    # sf_oauth prod and sf_oauth off are in every one of these
    $t->write_conf(conf_with('sf_oauth $sf_cred;'));
    ($rc, $out) = $t->test_conf;
    is($rc, 0, 'nginx -t: sf_oauth $variable next to sf_oauth NAME and off')
        or diag($out);
}

$t->start;

# -- one raw HTTP/1.1 exchange, for header bytes HTTP::Tiny will not send,
# -- and several on one keepalive connection ---------------------------------

sub read_answer {
    my ($s) = @_;

    my $head = '';
    while (my $line = <$s>) {
        $head .= $line;
        last if $line eq "\r\n";
    }
    my ($status) = $head =~ m{^HTTP/1\.1 (\d+)} or return { status => 0 };
    my %h;
    $h{lc $1} = $2 while $head =~ /^([^:\r\n]+):\s*(.*?)\r$/mg;

    my $body = '';
    if (defined $h{'content-length'}) {
        read($s, $body, $h{'content-length'}) if $h{'content-length'};
    } elsif (($h{'transfer-encoding'} // '') =~ /chunked/i) {
        while (my $len = <$s>) {
            $len = hex $len or do { <$s>; last };
            read($s, my $chunk, $len);
            $body .= $chunk;
            <$s>;
        }
    } else {
        local $/;
        $body = <$s> // '';
    }

    my $json = ($h{'content-type'} // '') =~ /json/
               ? eval { decode_json($body) } : undef;
    return { status => $status, headers => \%h, content => $body,
             json => $json };
}

sub raw_get {
    my ($path, $org) = @_;

    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $t->port) or die "connect: $!";
    print $s "GET $path HTTP/1.1\r\nHost: localhost\r\nX-SF-Org: $org\r\n"
             . "Connection: close\r\n\r\n";
    my $r = read_answer($s);
    close $s;
    return $r;
}

sub parse_raw {
    my ($raw) = @_;

    open my $fh, '<', \$raw or die;
    return read_answer($fh);
}

# the JSON object of an answer, {} when it has none (a 401 is a JSON list)
sub j {
    my ($r) = @_;
    return ref $r->{json} eq 'HASH' ? $r->{json} : {};
}

sub get_org {
    my ($path, $org, %h) = @_;
    return $t->get($path, headers => { (defined $org ? ('X-SF-Org' => $org)
                                                     : ()), %h });
}

# the module's own answers (the mock's 200s echo the token they get),
# for no_token_in
my @answers;

# -- cold start: 200 requests over both orgs, one token request at each ----

{
    my @raw;
    my @org = map { $_ % 2 ? 'sandbox' : 'prod' } 0 .. 199;
    my @status = $t->parallel(200, '/services/data/v59.0/sobjects',
                              headers => sub { { 'X-SF-Org' => $org[$_[0]] } },
                              answers => \@raw);

    is(scalar(grep { $_ == 200 } @status), 200,
       'cold start, 200 requests over two orgs: all 200')
        or diag("@status");
    is(stats('prod')->{token_requests}, 1, 'cold start: one token request at prod');
    is(stats('sandbox')->{token_requests}, 1,
       'cold start: one token request at sandbox');

    my %tok = map { $_ => token_of($_) } qw(prod sandbox);
    isnt($tok{prod}, $tok{sandbox}, 'the two orgs issued different tokens');

    my (%wrong, %wait);
    for my $i (0 .. 199) {
        my $r = parse_raw($raw[$i]);
        $wrong{ $org[$i] }++
            if (j($r)->{authorization} // '') ne "Bearer " . ($tok{ $org[$i] } // '');
        $wait{ $org[$i] }++
            if ($r->{headers}{'x-sf-oauth-status'} // '') eq '[WAIT]';
    }
    is_deeply(\%wrong, {}, 'cold start: each request carried its own org\'s token');
    ok($wait{prod} && $wait{sandbox},
       'cold start: requests of both orgs waited for their refresh')
        or diag(explain \%wait);

    for my $org (qw(prod sandbox)) {
        my @log = @{ stats($org)->{api_log} };
        is(scalar @log, 100, "cold start: 100 requests reached $org");
        is(scalar(grep { $_->{status} != 200 } @log), 0,
           "cold start: $org answered none of them 401");
    }

    # hot: no token request, still each its own
    @raw = ();
    @status = $t->parallel(200, '/services/data/v59.0/limits',
                           headers => sub { { 'X-SF-Org' => $org[$_[0]] } },
                           answers => \@raw);
    is(scalar(grep { $_ == 200 } @status), 200, 'hot, 200 requests: all 200');
    is_deeply([ map { stats($_)->{token_requests} } qw(prod sandbox) ], [1, 1],
              'hot: no more token requests');
    %wrong = ();
    for my $i (0 .. 199) {
        my $r = parse_raw($raw[$i]);
        $wrong{ $org[$i] }++
            if (j($r)->{authorization} // '') ne "Bearer " . ($tok{ $org[$i] } // '')
               || ($r->{headers}{'x-sf-oauth-status'} // '') ne '[HIT]';
    }
    is_deeply(\%wrong, {}, 'hot: each request carried its own org\'s token, HIT');
}

$t->mock('delay', 'seconds=0.05');
$m2->mock('delay', 'seconds=0.05');

# -- one request at a time: token, instance_url, status ----------------------

for my $org (qw(prod sandbox)) {
    my $before = counts();

    my $r = get_org('/services/data/v59.0/one', $org);
    is($r->{status}, 200, "$org: 200");
    is(j($r)->{authorization}, 'Bearer ' . token_of($org), "$org: its token");
    is($r->{headers}{'x-sf-oauth-status'}, '[HIT]', "$org: \$sf_oauth_status HIT");
    is($r->{headers}{'x-instance'}, "[$url{$org}]",
       "$org: \$sf_oauth_instance_url is its org's");

    # proxy_pass $sf_oauth_instance_url goes to the org of the credential
    $r = get_org('/services/v/data/v59.0/two', $org);
    is($r->{status}, 200, "$org, proxy_pass \$sf_oauth_instance_url: 200");
    is(j($r)->{path}, '/services/v/data/v59.0/two',
       "$org, proxy_pass \$sf_oauth_instance_url: the URI");
    is(j($r)->{authorization}, 'Bearer ' . token_of($org),
       "$org, proxy_pass \$sf_oauth_instance_url: its token");
    is($r->{headers}{'x-instance'}, "[$url{$org}]",
       "$org, proxy_pass \$sf_oauth_instance_url: its instance_url");

    my $after = counts();
    my $other = $org eq 'prod' ? 'sandbox' : 'prod';
    is($after->{$org}{api} - $before->{$org}{api}, 2,
       "$org: both requests reached $org");
    is($after->{$other}{api}, $before->{$other}{api}, "$org: none reached $other");
}

# -- alternating orgs on one keepalive connection ----------------------------

{
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $t->port) or die;
    my @seq = qw(prod sandbox sandbox prod sandbox prod);
    my $ok = 0;
    for my $i (0 .. $#seq) {
        print $s "GET /services/data/v59.0/ka$i HTTP/1.1\r\nHost: localhost\r\n"
                 . "X-SF-Org: $seq[$i]\r\n\r\n";
        my $r = read_answer($s);
        $ok++ if $r->{status} == 200
                 && j($r)->{authorization} eq 'Bearer ' . token_of($seq[$i])
                 && $r->{headers}{'x-instance'} eq "[$url{ $seq[$i] }]";
    }
    close $s;
    is($ok, scalar @seq,
       'keepalive connection, orgs alternating: each request its own token '
       . 'and instance_url');
}

# -- sf_oauth NAME and off next to it still work -----------------------------

{
    my $r = get_org('/services/fixed/data/', 'sandbox');
    is(j($r)->{authorization}, 'Bearer ' . token_of('prod'),
       'sf_oauth prod: prod\'s token whatever the header says');
    is($r->{headers}{'x-sf-oauth-status'}, '[HIT]', 'sf_oauth prod: HIT');

    $r = get_org('/services/off/data/', 'prod');
    is($r->{status}, 401, 'sf_oauth off: no token');
    is($r->{headers}{'x-sf-oauth-status'}, '[]', 'sf_oauth off: no status');
}

# -- the 401 replay uses the request's own credential ------------------------

for my $case (['prod', '/services/data/'], ['sandbox', '/services/data/'],
              ['prod', '/services/v/data/'], ['sandbox', '/services/v/data/'])
{
    my ($org, $loc) = @$case;
    my $other = $org eq 'prod' ? 'sandbox' : 'prod';
    my $what = "401 replay, $org, $loc";

    ($org eq 'prod' ? $t : $m2)->mock('revoke');
    my $before = counts();

    my $r = get_org("${loc}v59.0/replay", $org);
    is($r->{status}, 200, "$what: 200");
    is($r->{headers}{'x-sf-oauth-status'}, '[RETRY]', "$what: RETRY");
    is(j($r)->{authorization}, 'Bearer ' . token_of($org),
       "$what: the replay carries $org\'s new token");
    is($r->{headers}{'x-instance'}, "[$url{$org}]", "$what: instance_url");

    my $after = counts();
    is($after->{$org}{token} - $before->{$org}{token}, 1,
       "$what: one token request at $org");
    is($after->{$other}{token}, $before->{$other}{token},
       "$what: none at $other");
    my @log = @{ stats($org)->{api_log} }[-2, -1];
    is(join(' ', map { $_->{status} } @log), '401 200',
       "$what: $org saw the 401 and the replay");
    is($after->{$other}{api}, $before->{$other}{api}, "$what: nothing at $other");
}

# both orgs revoked, a crowd of both: one refresh each, each its own token
{
    $t->mock('revoke');
    $m2->mock('revoke');
    my $before = counts();

    my (@raw, @org);
    @org = map { $_ % 3 ? 'prod' : 'sandbox' } 0 .. 59;
    my @status = $t->parallel(60, '/services/data/v59.0/crowd',
                              headers => sub { { 'X-SF-Org' => $org[$_[0]] } },
                              answers => \@raw);
    is(scalar(grep { $_ == 200 } @status), 60,
       'both revoked, 60 requests of both orgs: all 200') or diag("@status");

    my $after = counts();
    for my $org (qw(prod sandbox)) {
        is($after->{$org}{token} - $before->{$org}{token}, 1,
           "both revoked: one token request at $org");
    }
    my %tok = map { $_ => token_of($_) } qw(prod sandbox);
    my %wrong;
    for my $i (0 .. 59) {
        my $r = parse_raw($raw[$i]);
        $wrong{ $org[$i] }++
            if (j($r)->{authorization} // '') ne "Bearer " . ($tok{ $org[$i] } // '');
    }
    is_deeply(\%wrong, {}, 'both revoked: each request got its own org\'s new token');
}

# one org's slow refresh: the other org's requests do not wait for it
{
    $m2->mode('slow');
    $m2->mock('revoke');

    my $slow = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                      PeerPort => $t->port) or die;
    print $slow "GET /services/data/v59.0/slow HTTP/1.1\r\nHost: localhost\r\n"
                . "X-SF-Org: sandbox\r\nConnection: close\r\n\r\n";

    # sandbox's slow refresh has begun
    $t->wait_info('sandbox', sub { $_[0]{refreshing} }, 10);

    my $start = time;
    my $r = get_org('/services/data/v59.0/meanwhile', 'prod');
    my $took = time - $start;
    is($r->{status}, 200, 'during sandbox\'s slow refresh, prod: 200');
    is(j($r)->{authorization}, 'Bearer ' . token_of('prod'),
       'during sandbox\'s slow refresh, prod: its token');
    is($r->{headers}{'x-sf-oauth-status'}, '[HIT]',
       'during sandbox\'s slow refresh, prod: HIT');
    ok($took < 1, sprintf('prod did not wait for sandbox\'s refresh (%.2f s)', $took));

    # a second sandbox request meanwhile waits for that refresh
    $r = get_org('/services/data/v59.0/slow2', 'sandbox');
    is($r->{status}, 200, 'a second sandbox request during its refresh: 200');
    is(j($r)->{authorization}, 'Bearer ' . token_of('sandbox'),
       'a second sandbox request during its refresh: the new token');

    $r = read_answer($slow);
    close $slow;
    is($r->{status}, 200, 'the slow sandbox request: 200');
    is($r->{headers}{'x-sf-oauth-status'}, '[RETRY]', 'the slow sandbox request: RETRY');
    is(j($r)->{authorization}, 'Bearer ' . token_of('sandbox'),
       'the slow sandbox request: sandbox\'s new token');

    $m2->mode('normal');
}

# -- an empty value: no token, as if there were no sf_oauth ------------------

{
    my $plain = $t->get('/plain/data/v59.0/');

    for my $org (undef, 'unmapped', 'raw:') {
        my $what = 'empty value (' . ($org // 'no header') . ')';
        my $before = counts();

        # the client's own Authorization passes untouched
        my $client = 'Bearer ' . token_of('prod');
        my $r = get_org('/services/data/v59.0/empty', $org,
                        Authorization => $client, 'X-Custom' => 'kept');
        is($r->{status}, 200, "$what, client's token: 200");
        is(j($r)->{authorization}, $client,
           "$what: the client's Authorization reaches Salesforce untouched");
        is(j($r)->{authorization_count}, 1, "$what: one Authorization");
        is(j($r)->{headers}{'X-Custom'}, 'kept', "$what: other headers too");
        is($r->{headers}{'x-sf-oauth-status'}, $plain->{headers}{'x-sf-oauth-status'},
           "$what: \$sf_oauth_status as without sf_oauth ("
           . $plain->{headers}{'x-sf-oauth-status'} . ')');
        is($r->{headers}{'x-instance'}, $plain->{headers}{'x-instance'},
           "$what: \$sf_oauth_instance_url as without sf_oauth");

        # none: Salesforce's 401 comes back as it is, not replayed
        $r = get_org('/services/data/v59.0/empty-none', $org);
        is($r->{status}, 401, "$what, no Authorization: Salesforce's 401");
        is((ref $r->{json} eq 'ARRAY' ? $r->{json}[0]{errorCode} : undef), 'INVALID_SESSION_ID',
           "$what: with its body");
        is($r->{headers}{'x-sf-oauth-status'}, '[]', "$what: status empty");

        my $after = counts();
        is($after->{prod}{api} - $before->{prod}{api}, 2,
           "$what: two requests at the upstream, no replay");
        is_deeply([ map { $after->{$_}{token} } qw(prod sandbox) ],
                  [ map { $before->{$_}{token} } qw(prod sandbox) ],
                  "$what: no token request");
    }
}

# -- a value that names no credential ----------------------------------------

sub new_log {
    my ($offset) = @_;
    return substr($t->error_log, $offset);
}

sub unknown_ok {
    my ($what, $path, $org, $logged, %opt) = @_;

    my $offset = length $t->error_log;
    my $before = counts();

    my $r = $opt{raw} ? raw_get($path, $org) : get_org($path, $org);
    push @answers, $r;

    is($r->{status}, 502, "$what: 502");
    like($r->{headers}{'content-type'}, qr{^application/json}, "$what: JSON");
    is(j($r)->{error}, 'sf_oauth_unknown_credential',
       "$what: error sf_oauth_unknown_credential");
    ok(length(j($r)->{error_description} // ''), "$what: an error_description");
    my $value = $opt{value} // $org;
    my $piece = length $value > 20 ? substr($value, 0, 20) : $value;
    ok(index($r->{content}, $piece) < 0, "$what: the body does not echo the value")
        or diag($r->{content});

    my @lines = grep { /\[error\]/ } split /\n/, new_log($offset);
    is(scalar @lines, 1, "$what: one [error] line") or diag(join "\n", @lines);
    like($lines[0] // '', $logged, "$what: it names the value");

    is_deeply(counts(), $before, "$what: nothing reached either org");

    return ($r, $lines[0] // '');
}

unknown_ok('bogus -> nosuch', '/services/data/v59.0/bogus', 'bogus',
           qr/sf_oauth: no credential named "nosuch"/, value => 'nosuch');
unknown_ok('bogus, proxy_pass $sf_oauth_instance_url',
           '/services/v/data/v59.0/bogus', 'bogus',
           qr/sf_oauth: no credential named "nosuch"/, value => 'nosuch');

# exact and case-sensitive: only "prod" itself is prod
{
    my $r = get_org('/services/data/v59.0/rawprod', 'raw:prod');
    is($r->{status}, 200, 'raw:prod names prod: 200');
    is(j($r)->{authorization}, 'Bearer ' . token_of('prod'), 'raw:prod: prod\'s token');
}
unknown_ok('upper -> PROD', '/services/data/v59.0/upper', 'upper',
           qr/sf_oauth: no credential named "PROD"/, value => 'PROD');
my $i = 0;
for my $v (qw(Prod SANDBOX prodx pro sandbox2 xsandbox)) {
    $i++;
    unknown_ok("raw:$v", "/services/data/v59.0/inexact$i", "raw:$v",
               qr/sf_oauth: no credential named "\Q$v\E"/, value => $v);
}

# a long value is cut to 64 characters in the log
{
    my $v = join '', map { chr(ord('a') + $_ % 26) } 0 .. 199;
    my (undef, $line) = unknown_ok(
        '200-character value', '/services/data/v59.0/long', "raw:$v",
        qr/sf_oauth: no credential named "\Q${\ substr($v, 0, 64)}\E"/,
        value => $v);
    ok(index($line, substr($v, 0, 65)) < 0,
       '200-character value: nothing after the 64th character in the log')
        or diag($line);
}

# bytes that are not printable are escaped in the log, as \xNN
for my $case (["\x01", 'x01'], ["\x7f", 'x7f']) {
    my ($byte, $esc) = @$case;
    my $v = "ab${byte}cd";
    my (undef, $line) = unknown_ok(
        sprintf('a value with \\x%02x', ord $byte),
        '/services/data/v59.0/ctl', "raw:$v",
        qr/sf_oauth: no credential named "ab\\${esc}cd"/i,
        value => $v, raw => 1);
    ok(index($line, $byte) < 0, sprintf('the byte \\x%02x itself is not in the log',
                                        ord $byte));
}

# one error line per request, under load too
{
    my $offset = length $t->error_log;
    my $before = counts();
    my @raw;
    my @status = $t->parallel(20, '/services/data/v59.0/bogus-crowd',
                              headers => { 'X-SF-Org' => 'bogus' },
                              answers => \@raw);
    push @answers, map { parse_raw($_) } @raw;
    is(scalar(grep { $_ == 502 } @status), 20, '20 unknown at once: 20 times 502');
    my $log = new_log($offset);
    is(scalar(() = $log =~ /\[error\][^\n]*sf_oauth: no credential named "nosuch"/g),
       20, '20 unknown at once: 20 error lines');
    is(scalar(() = $log =~ /\[error\]/g), 20, '20 unknown at once: no other error line');
    is_deeply(counts(), $before, '20 unknown at once: nothing reached either org');
}

# the status of an unknown credential's request, for the record
note('$sf_oauth_status of an unknown credential: '
     . get_org('/services/data/v59.0/note', 'bogus')->{headers}{'x-sf-oauth-status'});

# -- sf_oauth_info: each credential its own ----------------------------------

{
    my $info = $t->get('/sf_oauth_info')->{json};
    my %c = map { $_->{name} => $_ } @{ $info->{credentials} || [] };
    for my $org (qw(prod sandbox)) {
        is($c{$org}{instance_url}, $url{$org}, "sf_oauth_info: $org\'s instance_url");
        is($c{$org}{token_requests}, stats($org)->{token_requests},
           "sf_oauth_info: $org\'s token requests are $org\'s mock's");
    }
}

# -- the names are those of the configuration loaded: a reload changes them --

{
    my $before = counts();
    my $prod_only = "    sf_oauth_zone zone=sf:1m;\n" . $t->credential(name => 'prod');

    $t->write_conf(conf_with('sf_oauth $sf_cred;', $prod_only));
    $t->reload;

    my $r = get_org('/services/data/v59.0/reloaded', 'prod');
    is($r->{status}, 200, 'reload without sandbox: prod 200');
    is(j($r)->{authorization}, 'Bearer ' . token_of('prod'),
       'reload without sandbox: prod\'s token');
    unknown_ok('reload without sandbox: sandbox is unknown',
               '/services/data/v59.0/dropped', 'sandbox',
               qr/sf_oauth: no credential named "sandbox"/);

    $t->write_conf(conf_with('sf_oauth $sf_cred;'));
    $t->reload;

    $r = get_org('/services/data/v59.0/back', 'sandbox');
    is($r->{status}, 200, 'reload with sandbox again: sandbox 200');
    is(j($r)->{authorization}, 'Bearer ' . token_of('sandbox'),
       'reload with sandbox again: sandbox\'s token');
    is($r->{headers}{'x-instance'}, "[$url{sandbox}]",
       'reload with sandbox again: sandbox\'s instance_url');
    $r = get_org('/services/data/v59.0/back', 'prod');
    is(j($r)->{authorization}, 'Bearer ' . token_of('prod'),
       'reload with sandbox again: prod\'s token');
    is(stats('prod')->{token_requests}, $before->{prod}{token},
       'prod kept its token over both reloads');
}

# -- the access log ---------------------------------------------------------

$t->stop;

{
    my @log = split /\n/, $t->slurp('select.log');
    my %n;
    $n{$_}++ for @log;
    is($n{'/services/data/v59.0/empty-none 401 -'}, 3,
       'access log: an empty value logs $sf_oauth_status as "-" (3 requests)');
    is($n{'/services/data/v59.0/empty 200 -'}, 3,
       'access log: also with the client\'s token (3 requests)');
    is($n{'/services/data/v59.0/one 200 HIT'}, 2, 'access log: HIT, both orgs');
    is($n{'/services/data/v59.0/replay 200 RETRY'}, 2, 'access log: RETRY, both orgs');
    ok($n{'/services/data/v59.0/sobjects 200 WAIT'}, 'access log: WAIT');
}

$t->no_token_in(\@answers, [ map { @{ stats($_)->{issued_access_tokens} } }
                             qw(prod sandbox) ]);

$t->finish;

# -- names: the longest, and two that differ only in case; SOAP login() with
# -- no credential mapped ------------------------------------------------------

{
    my $n = SfTest->new;
    $n->start_mock;

    my $long = 'L' x 64;

    $n->write_conf("    sf_oauth_zone zone=sf:1m;\n"
        . $n->credential(name => 'prod') . $n->credential(name => 'PROD')
        . $n->credential(name => $long) . <<"EOF");
    map \$http_x_org \$cred { default ""; ~^(?<c>.+)\$ \$c; }
    server {
        listen 127.0.0.1:%%PORT%% reuseport default_server;
        location /services/ {
            sf_oauth \$cred;
            sf_oauth_soap_login on;
            proxy_pass http://127.0.0.1:%%MOCK%%;
        }
        location /static/ {
            sf_oauth $long;
            proxy_pass http://127.0.0.1:%%MOCK%%/services/;
        }
        location = /sf_oauth_info {
            sf_oauth_info;
        }
    }
EOF

    my ($rc, $out) = $n->test_conf;
    is($rc, 0, 'nginx -t: a 64-character name, and prod next to PROD')
        or diag($out);

    $n->start;

    for my $name ('prod', 'PROD', $long) {
        my $r = $n->get('/services/data/v59.0/sobjects',
                        headers => { 'X-Org' => $name });
        is($r->{status}, 200, 'the name "' . substr($name, 0, 8)
                              . '..." finds its credential');
    }

    my $info = $n->get('/sf_oauth_info')->{json};
    my %req = map { $_->{name} => $_->{token_requests} }
              @{ $info->{credentials} };
    is_deeply([ @req{'prod', 'PROD', $long} ], [1, 1, 1],
              'each of prod, PROD and the long name got its own token');

    is($n->get('/static/data/v59.0/sobjects')->{status}, 200,
       'sf_oauth with the 64-character name, static');

    my $r = $n->get('/services/data/v59.0/sobjects',
                    headers => { 'X-Org' => 'Prod' });
    is($r->{status}, 502, '"Prod" is neither prod nor PROD');

    my $env = '<?xml version="1.0" encoding="utf-8"?>'
        . '<soapenv:Envelope'
        . ' xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"'
        . ' xmlns:urn="urn:partner.soap.sforce.com"><soapenv:Body>'
        . '<urn:login><urn:username>legacy@example.com</urn:username>'
        . '<urn:password>hunter2SECRET</urn:password>'
        . '</urn:login></soapenv:Body></soapenv:Envelope>';

    for my $org ('prod', '') {
        my $before = scalar @{ $n->mock('stats')->{soap_logins} };
        $r = $n->http('POST', '/services/Soap/u/59.0', body => $env,
                      headers => { 'Content-Type' => 'text/xml; charset=utf-8',
                                   SOAPAction => '""',
                                   ($org ne '' ? ('X-Org' => $org) : ()) });
        is(scalar @{ $n->mock('stats')->{soap_logins} }, $before,
           "login() with X-Org \"$org\": never reaches Salesforce");

        if ($org eq '') {
            is($r->{status}, 403, 'login() with no credential mapped: 403');
            like($r->{content},
                 qr{<faultstring>sf_oauth: no credential is mapped},
                 'a SOAP fault that says why');
        } else {
            is($r->{status}, 200, 'login() with a credential: answered');
        }
    }

    unlike($n->error_log, qr/hunter2SECRET/, 'the password is in no log');

    $n->finish;
}

done_testing;
