#!/usr/bin/perl

# slice in an sf_oauth location: every part after the first is fetched by
# a clone subrequest, which starts in the content phase of the same
# location.  Each part carries the token like the main request.
#
# The upstream here is a static location of the same nginx that, like
# Salesforce, answers 401 to a request without a Bearer token of the mock.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use Test::More;

my $t = SfTest->new;
$t->start_mock;

my $inner = SfTest::free_port();

$t->simple_conf(http_extra => <<'EOF');
    server {
        listen 127.0.0.1:INNER;

        location /sliced/ {
            sf_oauth crm;
            slice 100k;
            proxy_set_header Range $slice_range;
            proxy_pass http://127.0.0.1:INNER/files/;
        }

        location /files/ {
            if ($http_authorization !~ "^Bearer 00D") {
                return 401;
            }
            alias %%DIR%%/files/;
        }
    }
EOF

my $conf = $t->slurp('nginx.conf');
$conf =~ s/INNER/$inner/g;
open my $fh, '>', $t->dir . '/nginx.conf' or die;
print $fh $conf;
close $fh;

mkdir $t->dir . '/files';
open $fh, '>', $t->dir . '/files/big' or die;
print $fh 'x' x 350000;
close $fh;
chmod 0755, $t->dir . '/files';
chmod 0644, $t->dir . '/files/big';

$t->start;

my $r = $t->http('GET', '/sliced/big', port => $inner);
is($r->{status}, 200, 'a file of 4 slices: 200 (HTTP::Tiny says 599 when the body is cut short)');
is(length($r->{content}), 350000, 'all of it')
    or diag('got ' . length($r->{content}) . ' bytes');

$r = $t->http('GET', '/sliced/big', port => $inner,
              headers => { Authorization => 'Bearer client-own' });
is(length($r->{content}), 350000, 'all of it, client with its own header')
    or diag('got ' . length($r->{content}) . ' bytes');

unlike($t->error_log, qr/unexpected status code 401 in slice response/,
       'no slice got a 401');

$t->finish;

done_testing;
