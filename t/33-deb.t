#!/usr/bin/perl

# The Debian package: `make deb` builds it, lintian passes it, and it
# installs into this machine's stock nginx.  With Debian's own
# /etc/nginx/nginx.conf and a site using the module, `nginx -t` passes; the
# stock /usr/sbin/nginx, started with a configuration of the test's own that
# includes /etc/nginx/modules-enabled/*.conf as Debian's nginx.conf does,
# serves a request through the mock with the package's .so.  `apt-get
# remove` then `purge` leave nothing behind, and the machine is as the test
# found it: the same files and links under /etc/nginx and the module
# directories, the same nginx packages.
#
# It needs root (dpkg), and refuses to run when the package is on the
# machine already.  It never starts, stops or reloads the system's nginx
# service: the nginx it starts has its own pid file and logs.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use File::Basename qw(basename);
use File::Find;
use JSON::PP;
use POSIX qw(:sys_wait_h);
use Test::More;
use Time::HiRes qw(sleep);

my $PKG = 'libnginx-mod-http-sf-oauth';
my $SO = '/usr/lib/nginx/modules/ngx_http_sf_oauth_module.so';
my $AVAILABLE = '/usr/share/nginx/modules-available/mod-http-sf-oauth.conf';
my $ENABLED = '/etc/nginx/modules-enabled/50-mod-http-sf-oauth.conf';
my $DOC = "/usr/share/doc/$PKG";
my $NGINX = '/usr/sbin/nginx';
my $ROOT = $SfTest::ROOT;

plan skip_all => 't/33-deb.t installs a .deb with dpkg: run it as root'
    unless $> == 0;

for my $tool (qw(dpkg-buildpackage dh lintian apt-get dpkg-deb)) {
    plan skip_all => "no $tool: `make test` (or `make deps`) installs the "
                     . 'Debian packaging tools'
        unless grep { -x "$_/$tool" } split /:/, $ENV{PATH};
}
plan skip_all => 'no dh-sequence-nginx (nginx-dev)'
    unless -f '/usr/share/perl5/Debian/Debhelper/Sequence/nginx.pm';
plan skip_all => "no $NGINX (Debian's nginx)" unless -x $NGINX;

# What dpkg knows of a package: its status line, or '' for nothing.
sub pkg_status {
    my ($pkg) = @_;

    my $s = `dpkg-query -W -f='\${Status}' $pkg 2>/dev/null`;
    return $? == 0 ? $s : '';
}

{
    my $s = pkg_status($PKG);
    plan skip_all => "$PKG is on this machine already ($s): the test would "
                     . "replace it; remove or purge it first"
        if $s ne '' && $s !~ /not-installed/;

    for my $f ($SO, $AVAILABLE, $ENABLED, "$ENABLED.removed", $DOC) {
        plan skip_all => "$f exists but $PKG is not installed: "
                         . 'the test would remove it'
            if -e $f || -l $f;
    }
}

# The machine's state that the package touches: every file and link under
# /etc/nginx and the module directories (type, size, link target), and
# each nginx package with its version and status.
sub snapshot {
    my %s;

    for my $top ('/etc/nginx', '/usr/share/nginx', '/usr/lib/nginx',
                 $DOC)
    {
        next unless -e $top;
        find({ no_chdir => 1, wanted => sub {
            my $p = $File::Find::name;
            $s{$p} = -l $p ? 'link ' . readlink($p)
                   : -d $p ? 'dir'
                   : 'file ' . (-s $p // 0);
        } }, $top);
    }

    for my $line (`dpkg-query -W -f='\${Package} \${Version} \${Status}\\n' '*nginx*' 2>/dev/null`) {
        chomp $line;
        $s{"dpkg $1"} = $2 if $line =~ /^(\S+) (.*)$/;
    }

    return \%s;
}

sub diff_snapshots {
    my ($a, $b) = @_;

    my @d;
    for my $k (sort keys %{ { %$a, %$b } }) {
        my ($x, $y) = ($a->{$k} // '(none)', $b->{$k} // '(none)');
        push @d, "$k: $x -> $y" if $x ne $y;
    }
    return @d;
}

# Runs a command, its output into a string: (exit code, output).
sub run {
    my (@cmd) = @_;

    my $pid = open(my $fh, '-|') // die "fork: $!";
    if ($pid == 0) {
        open STDERR, '>&', \*STDOUT;
        exec @cmd;
        die "exec $cmd[0]: $!";
    }
    local $/;
    my $out = <$fh> // '';
    close $fh;
    return ($? >> 8, $out);
}

my ($debian_t_rc, $debian_t_out) = run($NGINX, '-t', '-q');
plan skip_all => "nginx -t fails with /etc/nginx/nginx.conf before the "
                 . "test: $debian_t_out"
    if $debian_t_rc != 0;

my $before = snapshot();

# -- make deb --------------------------------------------------------------

my ($rc, $out) = run('make', '-s', '-C', $ROOT, 'deb');
is($rc, 0, 'make deb') or diag($out);

# debian/changelog's version, as make deb reads it; the .deb's name has
# no epoch, its control file does
my ($version) = `sed -n '1s/^[^(]*(\\([^)]*\\)).*/\\1/p' $ROOT/debian/changelog`
                =~ /(\S+)/;
(my $file_version = $version) =~ s/^\d+://;
my $arch = `dpkg --print-architecture`;
chomp $arch;
my $deb = "$ROOT/build/deb/${PKG}_${file_version}_$arch.deb";

if (!ok(-f $deb, "make deb made build/deb/${PKG}_${file_version}_$arch.deb")) {
    diag($out);
    done_testing;
    exit;
}

# dpkg-buildpackage ran in build/deb/src, not in the tree
is(join(' ', grep { -e } map { "$ROOT/$_" } 'debian/.debhelper',
        'debian/files', "debian/$PKG", 'debian/debhelper-build-stamp'),
   '', 'the build left nothing in debian/');

# -- what the .deb holds ---------------------------------------------------

my %field = map { /^(\S+): (.*)$/ ? ($1 => $2) : () }
            split /\n/, `dpkg-deb -f $deb`;

my ($abi) = `grep '^nginx:abi=' /usr/share/nginx/src/debian/libnginx-mod.abisubstvars`
            =~ /=(\S+)/;
my @deps = map { s/\s*\(.*//r } split /,\s*/, $field{Depends} // '';

is($field{Package}, $PKG, 'Package');
is($field{Version}, $version, "Version is debian/changelog's");
ok((grep { $_ eq $abi } @deps), "Depends on $abi")
    or diag("Depends: $field{Depends}");
for my $lib (qw(libc6 libcjson1 libcurl4 libssl3 libxml2 zlib1g)) {
    ok((grep { $_ eq $lib } @deps), "Depends on $lib (shlibs)")
        or diag("Depends: $field{Depends}");
}
if (`objdump -p $ROOT/build/deb/src/debian/$PKG$SO 2>/dev/null`
    =~ /NEEDED\s+libhiredis/)
{
    ok((grep { /^libhiredis/ } @deps), 'Depends on libhiredis (shlibs)')
        or diag("Depends: $field{Depends}");
}
is($field{Recommends}, 'nginx', 'Recommends nginx');

my %files = map { s{^\./}{/}r => 1 }
            map { (split ' ', $_, 6)[5] =~ s/ -> .*//r }
            split /\n/, `dpkg-deb -c $deb`;
for my $f ($SO, $AVAILABLE, "$DOC/README.md.gz", "$DOC/conf.example",
           "$DOC/copyright", "$DOC/changelog.gz",
           "$DOC/docs/reference.md.gz", "$DOC/docs/operations.md.gz",
           "$DOC/docs/design.md.gz")
{
    ok($files{$f}, "the .deb holds $f");
}
ok(!(grep { m{^/etc/} } keys %files),
   'the .deb holds nothing under /etc (postinst makes the link)');

# -- lintian ---------------------------------------------------------------

# overridden tags do not show; each override in debian/*.lintian-overrides
# has its reason above it
($rc, $out) = run('lintian', $deb);
my @bad = grep { /^[EW]: / } split /\n/, $out;
is(scalar(@bad), 0, 'lintian: no error, no warning') or diag($out);

# -- install ---------------------------------------------------------------

my $installed;    # the package went on: END takes it off if the test dies

END {
    # an early end: purge what the test installed, drop its site
    unlink "/etc/nginx/conf.d/zz-sf-oauth-t33-$$.conf";
    if ($installed && pkg_status($PKG) ne '') {
        local $?;
        system('apt-get', 'purge', '-y', '-q', $PKG);
    }
}

$ENV{DEBIAN_FRONTEND} = 'noninteractive';
my @apt = ('apt-get', '-y', '-q', '-o', 'DPkg::Lock::Timeout=300');

$installed = 1;
($rc, $out) = run(@apt, 'install', $deb);
is($rc, 0, "apt-get install $deb") or diag($out);
like(pkg_status($PKG), qr/install ok installed/, 'dpkg: installed');

ok(-f $SO, "$SO");
is(slurp($AVAILABLE), "load_module modules/ngx_http_sf_oauth_module.so;\n",
   "$AVAILABLE loads the module");
is(readlink($ENABLED), $AVAILABLE, "$ENABLED links to it");
ok(-f "$DOC/README.md.gz" && -f "$DOC/conf.example"
   && -f "$DOC/docs/reference.md.gz", "the docs in $DOC");

# every document of docs/, compressed or not (dh_compress leaves the
# small ones), and not HACKING.md, which is for developers
for my $md (map { basename($_) } glob("$ROOT/docs/*.md")) {
    ok(-f "$DOC/docs/$md.gz" || -f "$DOC/docs/$md", "$DOC/docs/$md");
}
ok(!-e "$DOC/HACKING.md.gz" && !-e "$DOC/HACKING.md",
   'HACKING.md is not installed');

sub slurp {
    my ($f) = @_;

    open my $fh, '<', $f or return undef;
    local $/;
    return scalar <$fh>;
}

# -- nginx -t with Debian's nginx.conf and a site --------------------------

my $t = SfTest->new;
$t->start_mock;

my $dir = $t->dir;
my $port = $t->port;

for (['crm.secret', $SfTest::CLIENT_SECRET],
     ['crm.refresh', $SfTest::REFRESH_TOKEN])
{
    open my $fh, '>', "$dir/$_->[0]" or die "$dir/$_->[0]: $!";
    print $fh "$_->[1]\n";
    close $fh;
    chmod 0600, "$dir/$_->[0]";
}

# the site, as README's "Install on Debian 12" puts it in conf.d
my $mock = $t->mock_url;
my $site = <<"EOF";
sf_oauth_zone zone=sf_t33:1m;

sf_oauth_credential crm_t33 {
    zone                sf_t33;
    token_url           $mock/services/oauth2/token;
    client_id           $SfTest::CLIENT_ID;
    client_secret_file  $dir/crm.secret;
    refresh_token_file  $dir/crm.refresh;
}

server {
    listen 127.0.0.1:$port;

    location /services/ {
        sf_oauth crm_t33;
        add_header X-SF-OAuth-Status \$sf_oauth_status always;
        proxy_pass $mock;
    }

    location = /sf_oauth_info {
        allow 127.0.0.1;
        deny all;
        sf_oauth_info;
    }
}
EOF

my $site_file = "/etc/nginx/conf.d/zz-sf-oauth-t33-$$.conf";
open my $sf, '>', $site_file or die "$site_file: $!";
print $sf $site;
close $sf;

($rc, $out) = run($NGINX, '-t');
unlink $site_file;
is($rc, 0, 'nginx -t: /etc/nginx/nginx.conf with the module and a site')
    or diag($out);
like($out, qr/syntax is ok/, 'nginx -t: syntax is ok');

# -- the stock nginx serves a request through the mock ---------------------

# Debian's main context: the modules as nginx.conf includes them, then the
# same site; paths of the test's own for the pid, logs and temp files.  No
# -p: the default prefix (/usr/share/nginx) is where "modules/" resolves.
open my $cf, '>', "$dir/nginx.conf" or die "$dir/nginx.conf: $!";
print $cf <<"EOF";
include /etc/nginx/modules-enabled/*.conf;

worker_processes 2;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log info;

events {
    worker_connections 1024;
}

http {
    access_log $dir/access.log;

    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;

$site
}
EOF
close $cf;

my $pid = fork() // die "fork: $!";
if ($pid == 0) {
    open STDOUT, '>>', "$dir/stderr.log";
    open STDERR, '>&', \*STDOUT;
    exec $NGINX, '-c', "$dir/nginx.conf";
    die "exec $NGINX: $!";
}
$t->{nginx_pid} = $pid;    # SfTest stops it, by pid

eval { SfTest::wait_port($port, 'nginx') };
is($@, '', 'the stock nginx starts with the package\'s module')
    or diag($t->slurp('stderr.log') . $t->error_log);

for (1 .. 100) {
    last if $t->worker_pids >= 2;
    sleep 0.05;
}

my @maps = map { slurp("/proc/$_/maps") // '' } $t->worker_pids;
ok(@maps && !(grep { index($_, $SO) < 0 } @maps),
   "each worker maps $SO");

my $r = $t->get('/services/data/v59.0/sobjects');
is($r->{status}, 200, 'a request through the module: 200')
    or diag($r->{content});
like($r->{json}{authorization} // '', qr/^Bearer 00D/,
     'the mock got it with a token');
is($r->{headers}{'x-sf-oauth-status'}, 'WAIT', 'the first one waited');

$r = $t->get('/services/data/v59.0/sobjects');
is($r->{headers}{'x-sf-oauth-status'}, 'HIT', 'the next one: HIT');
is($t->token_requests, 1, 'one token request');

$r = $t->get('/sf_oauth_info');
is($r->{json}{credentials}[0]{state}, 'valid', 'sf_oauth_info: valid');

$t->finish;

# -- remove, purge ---------------------------------------------------------

($rc, $out) = run(@apt, 'remove', $PKG);
is($rc, 0, "apt-get remove $PKG") or diag($out);
ok(!-e $SO, "remove: no $SO");
ok(!-e $AVAILABLE, "remove: no $AVAILABLE");
ok(!-e $ENABLED && !-l $ENABLED, "remove: no $ENABLED");
ok(!-e $DOC, "remove: no $DOC");
is(join(' ', glob('/etc/nginx/modules-enabled/*sf-oauth*.conf')), '',
   'remove: nothing nginx.conf includes');

# Debian's modules keep a dangling "<link>.removed" until purge, so that a
# reinstall brings the admin's choice back (enabled or not)
is(readlink("$ENABLED.removed"), $AVAILABLE,
   "remove: $ENABLED.removed, dangling until purge");
($rc, $out) = run($NGINX, '-t', '-q');
is($rc, 0, 'nginx -t after remove') or diag($out);

($rc, $out) = run(@apt, 'purge', $PKG);
is($rc, 0, "apt-get purge $PKG") or diag($out);
is(pkg_status($PKG), '', 'purge: dpkg knows no more of the package');
ok(!-e "$ENABLED.removed" && !-l "$ENABLED.removed",
   "purge: no $ENABLED.removed");
is(join(' ', glob("/var/lib/dpkg/info/$PKG.*")), '',
   'purge: no maintainer scripts left');
$installed = 0;

my @diff = diff_snapshots($before, snapshot());
is(scalar(@diff), 0, 'the machine as the test found it: /etc/nginx, '
                     . 'the module directories, the nginx packages')
    or diag(join "\n", @diff);

($rc, $out) = run($NGINX, '-t', '-q');
is($rc, 0, 'nginx -t with /etc/nginx/nginx.conf, as before') or diag($out);

done_testing;
