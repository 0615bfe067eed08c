#!/usr/bin/perl

# image_filter, Debian's dynamic module, in an sf_oauth location: its
# NGX_HTTP_IMAGE_BUFFERED (0x08) is a bit of r->connection->buffered, this
# module's hold bit one of r->buffered.  A replayed image still goes
# through the image filter, and a held 401 never reaches it.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use Test::More;

my $image = "$SfTest::MODULES_DIR/ngx_http_image_filter_module.so";

plan skip_all => "no $image (Debian's libnginx-mod-http-image-filter)"
    unless -f $image;

my $t = SfTest->new;
$t->start_mock;
$t->simple_conf(http_extra => <<'EOF2');
    server {
        listen 127.0.0.1:IMGPORT;

        location /size/ {
            sf_oauth crm;
            image_filter size;
            proxy_pass http://127.0.0.1:%%MOCK%%/services/;
        }

        location /small/ {
            sf_oauth crm;
            image_filter resize 10 5;
            proxy_pass http://127.0.0.1:%%MOCK%%/services/;
        }
    }
EOF2

my $port = SfTest::free_port();
my $conf = $t->slurp('nginx.conf');
$conf =~ s/IMGPORT/$port/;
$conf = "load_module $image;\n" . $conf;
open my $fh, '>', $t->dir . '/nginx.conf' or die;
print $fh $conf;
close $fh;

$t->start;

my $r = $t->http('GET', '/size/data/image.png', port => $port);
is($r->{status}, 200, 'image_filter size: 200');
like($r->{content}, qr/"width"\s*:\s*20.*"height"\s*:\s*10/s,
     'image_filter measured the upstream image');

$t->mock('revoke');
$r = $t->http('GET', '/size/data/image.png', port => $port);
is($r->{status}, 200, 'after a revoke: 200');
like($r->{content}, qr/"width"\s*:\s*20/, 'the replayed image went through the filter');

$t->mock('revoke');
$r = $t->http('GET', '/small/data/image.png', port => $port);
is($r->{status}, 200, 'resize after a revoke: 200');
is($r->{headers}{'content-type'}, 'image/png', 'resize: a PNG');
is(substr($r->{content}, 0, 8), "\x89PNG\r\n\x1a\n", 'resize: PNG bytes');
isnt(length $r->{content}, 0, 'resize: a body');

my @api = @{ $t->mock('stats')->{api_log} };
is($api[-2]{status}, 401, 'the first attempt got 401');
is($api[-1]{status}, 200, 'the replay got the image');

$t->finish;

done_testing;
