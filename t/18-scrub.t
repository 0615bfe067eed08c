#!/usr/bin/perl

# What the module prints of what it does not control.  sf_oauth_info
# escapes every string it prints and is sized from them, so a zone name at
# its maximum length comes out as valid JSON.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use JSON::PP;
use Test::More;

my $t = SfTest->new;
$t->start_mock;

# -- a zone name at its maximum length in sf_oauth_info ----------------------

my $zone64 = 'z' x 60 . '_-.9';

$t->write_conf("    sf_oauth_zone zone=$zone64:1m;\n"
               . $t->credential(zone => $zone64)
               . $t->credential(name => 'c2', zone => $zone64)
               . <<'EOF');
    server {
        listen 127.0.0.1:%%PORT%%;
        location /services/ {
            sf_oauth crm;
            proxy_pass http://127.0.0.1:%%MOCK%%;
        }
        location = /sf_oauth_info {
            sf_oauth_info;
        }
    }
EOF
$t->start;

is($t->get('/services/data/')->{status}, 200, 'zone name of 64: a request works');

my $r = $t->get('/sf_oauth_info');
is($r->{status}, 200, 'zone name of 64: sf_oauth_info answers');
my $info = eval { decode_json($r->{content}) };
ok($info, 'zone name of 64: sf_oauth_info is valid JSON') or diag($r->{content});
is_deeply([map { $_->{zone} } @{ $info->{credentials} || [] }],
          [$zone64, $zone64], 'zone name of 64: named in full');

$t->stop;

$t->finish;

done_testing;
