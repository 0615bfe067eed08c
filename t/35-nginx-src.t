#!/usr/bin/perl

# make NGINX_SRC=DIR with a plain nginx source tree, one without Debian's
# conf_flags: it is configured with --with-compat and the module, and the
# module it builds loads into an nginx of the same version built
# --with-compat.  Debian 12's nginx is one (nginx -V), and nginx-dev's
# /usr/share/nginx/src without conf_flags is its version's plain tree: the
# test builds the module from that in a copy of the repository and serves
# requests with it in the stock /usr/sbin/nginx.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use File::Temp qw(tempdir);
use Test::More;

my $root = $SfTest::ROOT;
my $tmp = tempdir('sf-nginx-src-XXXXXX', TMPDIR => 1,
                  CLEANUP => !$ENV{SF_TEST_KEEP});

plan skip_all => 'the plain tree is Debian 12\'s: not for TEST_NGINX_BINARY'
    if $ENV{TEST_NGINX_BINARY};
plan skip_all => 'the stock nginx is not built --with-compat'
    unless `$SfTest::NGINX -V 2>&1` =~ /--with-compat/;

# a copy of what the module is built from, with a build/ of its own
mkdir "$tmp/repo" or die;
system('cp', '-r', map("$root/$_", qw(config Makefile
        ngx_http_sf_oauth_module.c src)), "$tmp/repo") == 0 or die;

# a directory that is no nginx source tree: a clear error, nothing built
my $out = `make -s -C $tmp/repo NGINX_SRC=$tmp/nowhere 2>&1`;
isnt($?, 0, 'NGINX_SRC that is no source tree: make fails');
like($out, qr{NGINX_SRC=\Q$tmp\E/nowhere is not an nginx source tree},
     '... and says so') or diag($out);
ok(!-e "$tmp/repo/build/ngx_http_sf_oauth_module.so", '... nothing built');

# Debian 12's sources as a plain tree
system('cp', '-r', '/usr/share/nginx/src', "$tmp/plain") == 0 or die;
unlink "$tmp/plain/conf_flags" or die;

$out = `make -C $tmp/repo NGINX_SRC=$tmp/plain 2>&1`;
is($?, 0, 'make NGINX_SRC=DIR with a plain tree builds') or diag($out);
my $so = "$tmp/repo/build/ngx_http_sf_oauth_module.so";
ok(-s $so, '... the module');

my $configure = SfTest::slurp({ dir => "$tmp/repo/build/nginx/objs" },
                              'ngx_auto_config.h') // '';
like($configure, qr/NGX_CONFIGURE "[^"]*--with-compat[^"]*"/,
     '... configured --with-compat');
unlike($configure, qr/--prefix=\/usr\/share\/nginx/,
       "... and without Debian's conf_flags");

# the stock nginx loads it and serves through the mock with it
$SfTest::MODULE = $so;

my $t = SfTest->new;
$t->start_mock;
$t->simple_conf;
my ($rc, $test) = $t->test_conf;
is($rc, 0, 'nginx -t with it') or diag($test);
$t->start;

my $r = $t->get('/services/data/v59.0/sobjects');
is($r->{status}, 200, 'a request through the mock: 200');
is($r->{headers}{'x-sf-oauth-status'}, 'WAIT', '... after the token request');
$r = $t->get('/services/data/v59.0/sobjects');
is($r->{headers}{'x-sf-oauth-status'}, 'HIT', 'the next one: HIT');
is($t->token_requests, 1, '1 token request');

$t->finish;
done_testing();
