#!/usr/bin/perl

# nginx -t accepts a good configuration and rejects each bad one with a
# message that names the directive and the problem.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use Test::More;

my $t = SfTest->new;
my $dir = $t->dir;

sub check {
    my ($name, $http, $expect) = @_;

    $t->conf_check($name, $http . <<'EOF', $expect);
    server {
        listen 127.0.0.1:%%PORT%%;
        location / {
            sf_oauth crm;
            proxy_pass http://127.0.0.1:%%MOCK%%;
        }
    }
EOF
}

my $zone = "    sf_oauth_zone zone=sf:1m;\n";

check('good configuration', $zone . $t->credential, undef);

check('credential declared after its use and zone after credential',
      $t->credential . $zone, undef);

check('secret and refresh token from files', do {
    $t->write_file('secret', "$SfTest::CLIENT_SECRET\n");
    $t->write_file('refresh', "  $SfTest::REFRESH_TOKEN \n");
    $zone . $t->credential(client_secret => undef,
                           client_secret_file => "$dir/secret",
                           refresh_token => undef,
                           refresh_token_file => "$dir/refresh");
}, undef);

check('unknown credential in sf_oauth',
      $zone . $t->credential(name => 'other'),
      qr/unknown sf_oauth_credential "crm" in "sf_oauth" in \S+nginx\.conf:\d+/);

check('credential without zone', $zone . $t->credential(zone => undef),
      qr/sf_oauth_credential "crm" has no "zone"/);

check('credential without token_url',
      $zone . $t->credential(token_url => undef),
      qr/sf_oauth_credential "crm" has no "token_url"/);

check('credential without client_id',
      $zone . $t->credential(client_id => undef),
      qr/sf_oauth_credential "crm" has no "client_id"/);

check('credential without refresh token and no console',
      $zone . $t->credential(refresh_token => undef),
      qr/sf_oauth_credential "crm" in \S+nginx\.conf:\d+ has no refresh_token: set refresh_token or refresh_token_file, or add an sf_oauth_console location to connect it/);

check('unreadable client_secret_file',
      $zone . $t->credential(client_secret => undef,
                             client_secret_file => "$dir/no-such-file"),
      qr/cannot read client_secret_file "\Q$dir\E\/no-such-file" of sf_oauth_credential "crm".*No such file/);

check('unreadable refresh_token_file',
      $zone . $t->credential(refresh_token => undef,
                             refresh_token_file => "$dir/no-such-file"),
      qr/cannot read refresh_token_file "\Q$dir\E\/no-such-file"/);

check('empty refresh_token_file', do {
    $t->write_file('empty', '');
    $zone . $t->credential(refresh_token => undef,
                           refresh_token_file => "$dir/empty");
}, qr/refresh_token_file "\Q$dir\E\/empty" of sf_oauth_credential "crm" is empty/);

check('secret inline and from a file',
      $zone . $t->credential(client_secret_file => "$dir/secret"),
      qr/sf_oauth_credential "crm" has both "client_secret" and "client_secret_file": set a secret once/);

check('world-readable secret file', do {
    $t->write_file('open-secret', "$SfTest::CLIENT_SECRET\n", 0644);
    $zone . $t->credential(client_secret => undef,
                           client_secret_file => "$dir/open-secret");
}, qr/client_secret_file "\Q$dir\E\/open-secret" of sf_oauth_credential "crm" is readable by everyone: "chmod o-rwx" it, or accept the risk with "allow_world_readable on"/);

# a FIFO: refused at once (its open() would wait for a writer forever)
check('secret file that is a FIFO', do {
    system('mkfifo', '-m', '0600', "$dir/fifo-secret") == 0
        or die "mkfifo: $?";
    $zone . $t->credential(client_secret => undef,
                           client_secret_file => "$dir/fifo-secret");
}, qr/client_secret_file "\Q$dir\E\/fifo-secret" of sf_oauth_credential "crm" is not a regular file/);

check('world-readable secret file, allowed',
      $zone . $t->credential(client_secret => undef,
                             client_secret_file => "$dir/open-secret")
      =~ s/(client_secret_file)/allow_world_readable on;\n        $1/r,
      undef);

$ENV{SF_TEST_SECRET} = $SfTest::CLIENT_SECRET;
check('secret from the environment',
      $zone . $t->credential(client_secret => 'env:SF_TEST_SECRET'), undef);

check('secret from an unset environment variable',
      $zone . $t->credential(client_secret => 'env:SF_TEST_NOT_SET'),
      qr/"client_secret" of sf_oauth_credential "crm" is "env:SF_TEST_NOT_SET", but that environment variable is not set or empty/);

check('duplicate parameter',
      $zone . $t->credential =~ s/(client_id [^;]+;)/$1 $1/r,
      qr/"client_id" is duplicate in sf_oauth_credential "crm"/);

check('backoff and hold', $zone . $t->credential
      =~ s/(client_id [^;]+;)/$1 backoff 2s 30s; hold 10m;/r, undef);

check('bad backoff', $zone . $t->credential
      =~ s/(client_id [^;]+;)/$1 backoff 30s 2s;/r,
      qr/invalid "backoff 30s 2s" in sf_oauth_credential "crm": it takes the first and the longest delay/);

check('lifetime and refresh_ahead', $zone . $t->credential
      =~ s/(client_id [^;]+;)/$1 lifetime 2h; refresh_ahead 5m;/r, undef);

check('refresh_ahead not shorter than lifetime', $zone . $t->credential
      =~ s/(client_id [^;]+;)/$1 lifetime 5m; refresh_ahead 5m;/r,
      qr/"refresh_ahead" of sf_oauth_credential "crm" must be shorter than its "lifetime"/);

check('refresh_ahead without lifetime', $zone . $t->credential
      =~ s/(client_id [^;]+;)/$1 refresh_ahead 5m;/r,
      qr/"refresh_ahead" of sf_oauth_credential "crm" needs a "lifetime": the org's session timeout/);

check('introspect with refresh_ahead', $zone . $t->credential
      =~ s/(client_id [^;]+;)/$1 introspect on; refresh_ahead 1m;/r, undef);

check('introspect without a token_url ending in /token', $zone
      . $t->credential(token_url => 'https://login.salesforce.com/oauth')
      =~ s/(client_id [^;]+;)/$1 introspect on;/r,
      qr/"introspect on" of sf_oauth_credential "crm" needs a token_url ending in "\/token"/);

check('unreadable ca_file', $zone . $t->credential
      =~ s/(client_id [^;]+;)/$1 ca_file $dir\/no-ca.pem;/r,
      qr/cannot read ca_file "\Q$dir\E\/no-ca.pem" of sf_oauth_credential "crm"/);

{
    $t->write_conf($zone . $t->credential =~ s/(client_id [^;]+;)/$1 ssl_verify off;/r);
    my ($rc, $out) = $t->test_conf;
    is($rc, 0, 'ssl_verify off: accepted');
    like($out, qr/\[warn\].*sf_oauth_credential "crm" has "ssl_verify off": the token endpoint's certificate is not checked/,
         'ssl_verify off: warns');
}

check('token_url that is not http(s)',
      $zone . $t->credential(token_url => 'ftp://login.salesforce.com/x'),
      qr/invalid token_url "ftp:\/\/login\.salesforce\.com\/x" in sf_oauth_credential "crm": it must start with https:\/\/ or http:\/\//);

check('token_url without host',
      $zone . $t->credential(token_url => 'https:///services/oauth2/token'),
      qr/invalid token_url "https:\/\/\/services\/oauth2\/token"/);

check('token_url with a bad port',
      $zone . $t->credential(token_url => 'https://login.salesforce.com:99999/'),
      qr/invalid token_url .*invalid port/);

check('duplicate credential name',
      $zone . $t->credential . $t->credential,
      qr/duplicate sf_oauth_credential "crm", first defined in \S+:\d+/);

check('duplicate zone', $zone . $zone . $t->credential,
      qr/duplicate sf_oauth_zone "sf"/);

check('zone too small', "    sf_oauth_zone zone=sf:8k;\n" . $t->credential,
      qr/zone "zone=sf:8k" is too small: it needs at least 32k/);

check('zone too small for its credentials',
      "    sf_oauth_zone zone=sf:32k;\n"
      . join('', map { $t->credential(name => "c$_") } 1 .. 6)
      . $t->credential,
      qr/sf_oauth_zone "sf" of 32k is too small for its 7 credentials/);

check('credential with an unknown zone', $zone . $t->credential(zone => 'nope'),
      qr/sf_oauth_credential "crm" uses unknown zone "nope"/);

check('zone without size', "    sf_oauth_zone zone=sf;\n" . $t->credential,
      qr/invalid zone size "zone=sf": expected zone=NAME:SIZE/);

check('unknown directive in a credential',
      $zone . $t->credential(timeout => '5s') =~ s/timeout 5s/tiemout 5s/r,
      qr/unknown directive "tiemout" in sf_oauth_credential "crm"/);

check('bad timeout', $zone . $t->credential(timeout => 'soon'),
      qr/invalid value "soon" of "timeout" in sf_oauth_credential "crm"/);

check('two values for one parameter',
      $zone . $t->credential(client_id => 'a b'),
      qr/invalid number of arguments in "client_id" of sf_oauth_credential "crm": it takes 1/);

check('bad credential name',
      $zone . $t->credential(name => 'a/b') . $t->credential,
      qr/invalid sf_oauth_credential name "a\/b"/);

# zone names: the character set and length of credential names
my $zone64 = 'z' x 60 . '_-.9';

check('zone name of 64 characters',
      "    sf_oauth_zone zone=$zone64:1m;\n" . $t->credential(zone => $zone64),
      undef);

check('zone name of 65 characters',
      "    sf_oauth_zone zone=${zone64}x:1m;\n"
      . $t->credential(zone => "${zone64}x"),
      qr/invalid sf_oauth_zone name "$zone64\.\.\.": it must have 1 to 64 characters, not 65/);

# nginx's own limit on a parameter is 4096 bytes
check('zone name of 4000 characters',
      "    sf_oauth_zone zone=" . 'y' x 4000 . ":1m;\n"
      . $t->credential(zone => 'y' x 4000),
      qr/invalid sf_oauth_zone name "y{64}\.\.\.": it must have 1 to 64 characters, not 4000/);

check('zone name with a slash',
      "    sf_oauth_zone zone=a/b:1m;\n" . $t->credential(zone => 'a/b'),
      qr/invalid sf_oauth_zone name "a\/b": use letters, digits, "_", "-" and "\."/);

check('zone name with a quote',
      "    sf_oauth_zone zone=a\"b:1m;\n" . $t->credential(zone => "'a\"b'"),
      qr/invalid sf_oauth_zone name "a"b": use letters, digits/);

check('empty zone name', "    sf_oauth_zone zone=:1m;\n" . $t->credential,
      qr/"sf_oauth_zone" must have "zone=NAME:SIZE" parameter/);

check('sf_oauth off is accepted', $zone . $t->credential
      . "    server { listen 127.0.0.1:%%PORT%%; location /x { sf_oauth off; } }\n",
      undef);

done_testing;
