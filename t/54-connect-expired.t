#!/usr/bin/perl

# A flow whose state has expired (10 minutes after the Connect POST) is
# refused at the callback with a page, makes no code exchange and stores
# nothing.  nginx runs under libfaketime (Debian's faketime), whose offset
# the test moves past the state's lifetime; nginx's timers keep the real
# monotonic clock (DONT_FAKE_MONOTONIC).

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use Test::More;

my $lib = '/usr/lib/' . `dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null`;
chomp $lib;
$lib .= '/faketime/libfaketime.so.1';

plan skip_all => "no $lib (make deps installs faketime)" unless -e $lib;

my $t = SfTest->new;
$t->start_mock;

my $dir = $t->dir;
my $clock = "$dir/faketime";

$t->write_file('faketime', "+0\n", 0644);

$t->write_conf("    sf_oauth_zone zone=sf:1m;\n"
               . $t->credential(refresh_token => undef) . <<'EOF2');
    server {
        listen 127.0.0.1:%%PORT%% reuseport default_server;

        location = /sf_oauth_info {
            sf_oauth_info;
        }

        location /sf_oauth/ {
            sf_oauth_console;
        }
    }
EOF2

# nginx keeps only the variables named by "env" in its workers'
# environment, and libfaketime reads its file's name there each time
$t->edit_conf(sub {
    s/(daemon off;)/$1\nenv FAKETIME_TIMESTAMP_FILE;\nenv FAKETIME_NO_CACHE;\nenv DONT_FAKE_MONOTONIC;/
});

{
    # nginx alone runs on the fake clock: its workers are forked from the
    # master, and keep the library and the file's name
    local $ENV{LD_PRELOAD} = $lib;
    local $ENV{FAKETIME_TIMESTAMP_FILE} = $clock;
    local $ENV{FAKETIME_NO_CACHE} = 1;
    local $ENV{DONT_FAKE_MONOTONIC} = 1;
    $t->start;
}

sub exchanges { $t->stats->{grants}{authorization_code} // 0 }
sub generation { ($t->cred_info('crm') || {})->{generation} // -1 }

# a flow in time connects: the fake clock changes nothing else
my $f = $t->connect_flow(credential => 'crm');
is($f->{status}, 200, 'a flow within 10 minutes connects')
    or diag(explain [ map { "$_->{name}: $_->{status}" } @{ $f->{steps} } ]);
my $gen = generation();
ok($gen >= 1, "connected: generation $gen");

# a flow whose state is 11 minutes old at its callback
$f = $t->connect_flow(credential => 'crm', stop_before => 'callback');
ok($f->{callback_url}, 'the second flow reached the callback');
my $ex = exchanges();

$t->write_file('faketime', "+11m\n", 0644);

my $s = SfTest::flow_step($f, 'late', 'GET', $f->{callback_url});
is($s->{status}, 400, 'an expired state: 400');
like($s->{content} // '', qr/unknown or was used|expired/,
     'an expired state: its page says so');
is(exchanges(), $ex, 'an expired state: no code exchange');
is(generation(), $gen, 'an expired state: nothing stored');

$t->write_file('faketime', "+0\n", 0644);

$t->finish;
done_testing;
