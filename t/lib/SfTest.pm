package SfTest;

# The test harness: a temp directory with an nginx.conf, a real nginx
# (/usr/sbin/nginx, 2 workers, the built module via load_module) and the
# mock Salesforce (t/lib/mock_sf.py), on free ports of 127.0.0.1.
#
# More mocks (other orgs) start with start_extra_mock.
#
# Several nginx nodes can share one mock Salesforce (a fleet): the first
# starts it, the others are made with new(mock_of => $first) and start no
# mock of their own (see new).
#
# When an SfTest object goes away it stops nginx and the mocks by pid;
# finish also checks that error.log has no [alert], [crit] or [emerg] line.
#
# Set SF_TEST_KEEP=1 to keep the temp directory for a look afterwards,
# and SF_TEST_LOG_LEVEL=debug for error.log at that level (unless the
# test asks for a level of its own).
#
# Another nginx: TEST_NGINX_BINARY, TEST_NGINX_MODULE (this module built for
# it) and TEST_NGINX_MODULES_DIR (its image_filter), as make
# test-other-nginx sets them.

use strict;
use warnings;

use Cwd qw(abs_path);
use File::Basename qw(dirname);
use File::Temp qw(tempdir);
use HTTP::Tiny;
use IO::Compress::Gzip qw(gzip $GzipError);
use IO::Select;
use IO::Socket::INET;
use List::Util ();
use Digest::SHA ();
use JSON::PP;
use MIME::Base64 ();
use POSIX qw(:sys_wait_h);
use Scalar::Util ();
use Test::More;
use Time::HiRes qw(sleep time);

our $ROOT = abs_path(dirname(__FILE__) . '/../..');
our $NGINX = $ENV{TEST_NGINX_BINARY} || '/usr/sbin/nginx';
our $MODULE = $ENV{TEST_NGINX_MODULE}
    || "$ROOT/build/ngx_http_sf_oauth_module.so";

# nginx's own dynamic modules (image_filter): Debian's, or with another
# nginx (TEST_NGINX_BINARY) those built with it, as `make test-other-nginx`
# sets; the module built for that nginx is TEST_NGINX_MODULE.
our $MODULES_DIR = $ENV{TEST_NGINX_MODULES_DIR} || '/usr/lib/nginx/modules';

our $CLIENT_ID = '3MVG9mock.client.id';
our $CLIENT_SECRET = 'mock-client-secret-0123456789';
our $REFRESH_TOKEN = '5Aep861mockRefreshToken0123456789';

sub new {
    my ($class, %opt) = @_;

    my $dir = tempdir('sf_oauth_test_XXXXXX', TMPDIR => 1,
                      CLEANUP => !$ENV{SF_TEST_KEEP});

    # the workers run as nobody: they must reach their temp paths
    chmod 0755, $dir;

    my $self = bless {
        dir => $dir,
        port => free_port(),
        mock_port => free_port(),
        workers => $opt{workers} || 2,
        log_level => $opt{log_level} || $ENV{SF_TEST_LOG_LEVEL} || 'info',
        mock_args => $opt{mock_args} || [],
    }, $class;

    # another node's mock: this one starts none, stops none, and its
    # %%MOCK%%, %%MOCKn%%, mock(), token_requests... are that node's mock's
    if (my $of = $opt{mock_of}) {
        $self->{mock_port} = $of->mock_port;
        $self->{mock_of} = $of;
        Scalar::Util::weaken($self->{mock_of});
    }

    diag("test dir $dir") if $ENV{SF_TEST_KEEP};

    return $self;
}

sub dir { $_[0]{dir} }
sub port { $_[0]{port} }
sub mock_port { $_[0]{mock_port} }
sub mock_url { 'http://127.0.0.1:' . $_[0]{mock_port} }

# A port nobody listens on, held for the whole life of this test process,
# as nginx-tests' port() does: a UDP socket bound on the same number is the
# lock, so that a test running beside this one (prove -j) cannot be given
# it, and the TCP port itself is free for nginx, the mock or Redis to bind.
# (As root, two nginx masters that both listen with reuseport would share
# one TCP port silently.)  The numbers are drawn below the kernel's
# ephemeral range (32768 and up), where no outgoing connection's own port
# can take them.
my %lock;

sub free_port {
    for (1 .. 1000) {
        my $port = 10000 + int(rand(22000));
        next if $lock{$port};

        my $udp = IO::Socket::INET->new(LocalAddr => '127.0.0.1',
                                        LocalPort => $port, Proto => 'udp')
            or next;
        my $tcp = IO::Socket::INET->new(LocalAddr => '127.0.0.1',
                                        LocalPort => $port, Proto => 'tcp',
                                        ReuseAddr => 1, Listen => 1)
            or next;
        close $tcp;

        $lock{$port} = $udp;
        return $port;
    }
    die 'no free port in 1000 tries';
}

# A free port for a UDP server of the test's (the DNS server of
# t/58-fleet-resolve.t): free_port's, its UDP socket closed for the server
# to bind; the port stays out of free_port's hands.
sub free_udp_port {
    my $port = free_port();
    close $lock{$port};
    $lock{$port} = 1;
    return $port;
}

sub wait_port {
    my ($port, $what, $tries, $pid) = @_;

    # TRIES of 50 ms, and 30 s at least: a python helper may take seconds
    # to start on a loaded machine (four Chromiums beside it); one that
    # exits (PID) fails at once
    my $end = time + List::Util::max(30, ($tries || 100) * 0.05);

    while (time < $end) {
        die "$what exited before it listened on port $port\n"
            if $pid && waitpid($pid, WNOHANG) == $pid;

        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                      PeerPort => $port, Proto => 'tcp');

        # a connect to a free local port can land on itself (TCP
        # simultaneous open with the same source port): not a listener
        if ($s && $s->sockport != $port) {
            close $s;
            return 1;
        }

        close $s if $s;
        sleep 0.05;
    }

    die "$what did not listen on port $port";
}

# -- the mock Salesforce -------------------------------------------------

sub start_mock {
    my ($self, @args) = @_;

    die "this node shares the mock of another (mock_of): it starts none\n"
        if $self->{mock_of};

    $self->{mock_pid} = spawn_mock($self->{mock_port}, "$self->{dir}/mock.log",
                                   @{ $self->{mock_args} }, @args);
    wait_port($self->{mock_port}, 'the mock Salesforce');

    return $self;
}

# Forks python3 t/lib/mock_sf.py on the port with the test credentials;
# its output goes to the log file.  Returns the pid.
sub spawn_mock {
    my ($port, $log, @args) = @_;

    my $pid = fork() // die "fork: $!";

    if ($pid == 0) {
        open STDOUT, '>>', $log;
        open STDERR, '>&', \*STDOUT;
        exec 'python3', "$ROOT/t/lib/mock_sf.py",
             '--port', $port,
             '--client-id', $CLIENT_ID,
             '--client-secret', $CLIENT_SECRET,
             '--refresh-token', $REFRESH_TOKEN,
             @args;
        die "exec python3: $!";
    }

    return $pid;
}

# Starts the mock Pub/Sub API (t/lib/mock_pubsub.py, with Debian's
# /usr/bin/python3 and its python3-grpcio), whose calls check their
# accesstoken against this node's mock Salesforce; stopped with the other
# helpers.  Returns its gRPC port, its control port and its pid.
sub start_mock_pubsub {
    my ($self) = @_;

    my $port = free_port();
    my $cport = free_port();

    my $pid = fork() // die "fork: $!";
    if ($pid == 0) {
        open STDOUT, '>>', "$self->{dir}/pubsub.log";
        open STDERR, '>&', \*STDOUT;
        exec '/usr/bin/python3', "$ROOT/t/lib/mock_pubsub.py",
             '--port', $port, '--control-port', $cport,
             '--sf-url', $self->mock_url;
        die "exec: $!";
    }
    push @{ $self->{helper_pids} }, $pid;

    wait_port($port, 'the mock Pub/Sub', 400, $pid);
    wait_port($cport, "the mock Pub/Sub's control port", 400, $pid);

    return ($port, $cport, $pid);
}

# One call to a mock's /__mock/ hooks: GET for stats, POST for the others.
sub mock_hook {
    my ($url, $hook, $query) = @_;

    $url .= "/__mock/$hook" . ($query ? "?$query" : '');
    my $method = $hook eq 'stats' ? 'GET' : 'POST';
    my $res = HTTP::Tiny->new(timeout => 10)->request($method, $url);

    die "mock $hook: $res->{status} $res->{content}" unless $res->{success};

    return decode_json($res->{content});
}

sub mock {
    my ($self, $hook, $query) = @_;

    return mock_hook($self->mock_url, $hook, $query);
}

sub mode { $_[0]->mock('mode', "mode=$_[1]") }
sub token_requests { $_[0]->mock('stats')->{token_requests} }

# The mock's /__mock/stats, and the access tokens it issued, in order.
sub stats { $_[0]->mock('stats') }
sub tokens { @{ $_[0]->stats->{issued_access_tokens} || [] } }

# -- more mocks: a second org, a third... -----------------------------------

# Starts one more mock Salesforce on a free port, with the same client id,
# secret and refresh token as the first but tokens of its own (a token of
# one mock is 401 at another), and only the mock_sf.py arguments given
# here (not the mock_args of new()).  Returns an SfTest::Mock: ->port,
# ->url, ->mock(HOOK, QUERY), ->mode(M), ->token_requests, like those of
# the first mock.  The first extra mock is %%MOCK2%% in write_conf, the
# next %%MOCK3%%, and so on; its output goes to mock2.log, mock3.log...
# finish and DESTROY stop every one; finish also checks that each was
# still running.
#
#     my $m2 = $t->start_extra_mock('--token-delay', '0.5');
#     $t->credential(name => 'sandbox',
#                    token_url => $m2->url . '/services/oauth2/token');
#     is($m2->token_requests, 1, ...);
sub start_extra_mock {
    my ($self, @args) = @_;

    my $n = 2 + @{ $self->{extra_mocks} ||= [] };
    my $port = free_port();
    my %m = (
        n => $n,
        port => $port,
        pid => spawn_mock($port, "$self->{dir}/mock$n.log", @args),
    );

    # a plain hash here: global destruction may empty the object of a
    # test's variable before DESTROY runs, and DESTROY needs the pid
    push @{ $self->{extra_mocks} }, \%m;
    wait_port($port, "extra mock Salesforce $n");

    return bless { %m }, 'SfTest::Mock';
}

sub extra_mocks { @{ $_[0]{extra_mocks} || [] } }

# Starts t/lib/fake_console.py, a stand-in for the module's console (the
# same contract: the page's Connect forms, connect, callback, confirm) on a
# free port, against this test's mock, with the credentials NAMES (and
# fake_console.py's options among them, such as --form-action-self); for the
# tests of the flow client and the browser alone.  Returns its console
# URL (http://127.0.0.1:PORT/sf_oauth/).  finish and DESTROY stop it.
sub start_fake_console {
    my ($self, @names) = @_;

    # options of fake_console.py (--form-action-self) among the names
    my @opt = grep { /^--/ } @names;
    @names = grep { !/^--/ } @names;

    my $port = free_port();
    my $pid = fork() // die "fork: $!";
    if ($pid == 0) {
        open STDOUT, '>>', "$self->{dir}/fake_console.log";
        open STDERR, '>&', \*STDOUT;
        exec 'python3', "$ROOT/t/lib/fake_console.py", '--port', $port,
             '--mock', $self->mock_url, '--client-id', $CLIENT_ID,
             '--client-secret', $CLIENT_SECRET,
             (map { ('--credential', $_) } @names), @opt;
        die "exec python3: $!";
    }
    push @{ $self->{helper_pids} }, $pid;
    wait_port($port, 'the fake console', 200, $pid);
    return "http://127.0.0.1:$port/sf_oauth/";
}

# Stops what start_fake_console started.
sub stop_helpers {
    my ($self) = @_;

    for my $pid (@{ delete $self->{helper_pids} || [] }) {
        kill 'TERM', $pid;
        waitpid($pid, 0);
    }
}

# -- nginx ---------------------------------------------------------------

# The standard credential block against the mock; %opt overrides lines.
# "crm" has $REFRESH_TOKEN, any other credential "$REFRESH_TOKEN-NAME",
# which the mock takes too: nginx -t refuses two credentials with one
# refresh token.
sub credential {
    my ($self, %opt) = @_;

    my $name = delete $opt{name} // 'crm';
    my %line = (
        zone => 'sf',
        token_url => $self->mock_url . '/services/oauth2/token',
        client_id => $CLIENT_ID,
        client_secret => $CLIENT_SECRET,
        refresh_token => $name eq 'crm' ? $REFRESH_TOKEN
                                        : "$REFRESH_TOKEN-$name",
        %opt,
    );

    my $block = "    sf_oauth_credential $name {\n";
    for my $k (qw(zone token_url client_id client_secret client_secret_file
                  refresh_token refresh_token_file timeout backoff))
    {
        next unless defined $line{$k};
        $block .= "        $k $line{$k};\n";
    }
    return $block . "    }\n";
}

# Writes nginx.conf: the main boilerplate around the given http{} content.
# %%PORT%%, %%MOCK%% and %%DIR%% are replaced.
sub write_conf {
    my ($self, $http) = @_;

    my $d = $self->{dir};
    my $conf = <<"EOF";
load_module $MODULE;

worker_processes $self->{workers};
daemon off;
pid $d/nginx.pid;
error_log $d/error.log $self->{log_level};

events {
    worker_connections 4096;
}

http {
    access_log $d/access.log;

    client_body_temp_path $d/body;
    proxy_temp_path $d/proxy;
    fastcgi_temp_path $d/fastcgi;
    uwsgi_temp_path $d/uwsgi;
    scgi_temp_path $d/scgi;

$http
}
EOF

    $conf =~ s/%%PORT%%/$self->{port}/g;
    $conf =~ s/%%MOCK%%/$self->{mock_port}/g;
    $conf =~ s/%%MOCK$_->{n}%%/$_->{port}/g for $self->extra_mocks;
    if (my $of = $self->{mock_of}) {
        $conf =~ s/%%MOCK$_->{n}%%/$_->{port}/g for $of->extra_mocks;
    }
    $conf =~ s/%%DIR%%/$d/g;

    open my $fh, '>', "$d/nginx.conf" or die "$d/nginx.conf: $!";
    print $fh $conf;
    close $fh;

    return $self;
}

# A typical configuration: the zone, one credential and a proxied location.
# Options: location_extra, http_extra (after the credential), http_pre
# (before the zone: an sf_oauth_redis block), zone_params (the parameters
# of sf_oauth_zone, "zone=sf:1m" by default); the others are credential()'s
# (zone among them: the credential's zone).
sub simple_conf {
    my ($self, %opt) = @_;

    my $extra = delete $opt{location_extra} // '';
    my $http_extra = delete $opt{http_extra} // '';
    my $http_pre = delete $opt{http_pre} // '';
    my $zone = delete $opt{zone_params} // 'zone=sf:1m';

    return $self->write_conf(
        $http_pre
        . "    sf_oauth_zone $zone;\n"
        . $self->credential(%opt)
        . $http_extra
        . <<'EOF' . $extra . <<'EOF2');
    server {
        # reuseport spreads connections over both workers
        listen 127.0.0.1:%%PORT%% reuseport default_server;

        location /services/ {
            sf_oauth crm;
            add_header X-SF-OAuth-Status $sf_oauth_status always;
            proxy_pass http://127.0.0.1:%%MOCK%%;
EOF
        }

        location = /sf_oauth_info {
            sf_oauth_info;
        }

        location /plain/ {
            add_header X-SF-OAuth-Status "[$sf_oauth_status]" always;
            proxy_pass http://127.0.0.1:%%MOCK%%/services/;
        }
    }
EOF2
}

# nginx -t on the written configuration: (exit code, output)
sub test_conf {
    my ($self) = @_;

    # bounded: a configuration read that blocks (a FIFO) fails the test
    my $limit = int(60 * time_scale());
    my $out = `timeout $limit $NGINX -t -p $self->{dir}/ -c $self->{dir}/nginx.conf 2>&1`;
    return ($? >> 8, $out);
}

# Runs EDIT (a sub) on the written nginx.conf, the text in $_, and writes
# the result back:  $t->edit_conf(sub { s/(client_id [^;]+;)/$1\n$x/ });
sub edit_conf {
    my ($self, $edit) = @_;

    local $_ = $self->slurp('nginx.conf');
    $edit->();

    open my $fh, '>', "$self->{dir}/nginx.conf"
        or die "$self->{dir}/nginx.conf: $!";
    print $fh $_;
    close $fh;

    return $self;
}

# Writes CONTENT into the file NAME of the test directory, mode MODE (0600
# by default).
sub write_file {
    my ($self, $name, $content, $mode) = @_;

    my $path = "$self->{dir}/$name";
    open my $fh, '>', $path or die "$path: $!";
    print $fh $content;
    close $fh;
    chmod $mode // 0600, $path;

    return $path;
}

# Writes HTTP as the configuration and runs nginx -t on it: with EXPECT
# undef, a test that nginx -t accepts it; else that it refuses it, and one
# test for each regexp of EXPECT (one, or an arrayref) that the output
# matches; and for each string of ABSENT (an arrayref), that the output
# does not hold it (a secret).
sub conf_check {
    my ($self, $name, $http, $expect, $absent) = @_;

    $self->write_conf($http);
    my ($rc, $out) = $self->test_conf;

    if (!defined $expect) {
        is($rc, 0, "$name: accepted") or diag($out);
        return;
    }

    isnt($rc, 0, "$name: refused");
    my @re = ref $expect eq 'ARRAY' ? @$expect : ($expect);
    like($out, $_, "$name: says why" . (@re > 1 ? " ($_)" : ''))
        or diag($out)
        for @re;
    unlike($out, qr/\Q$_\E/, "$name: no secret in the message")
        for @{ $absent || [] };
}

sub start {
    my ($self) = @_;

    my $pid = fork() // die "fork: $!";

    if ($pid == 0) {
        open STDOUT, '>>', "$self->{dir}/stderr.log";
        open STDERR, '>&', \*STDOUT;
        my @valgrind = $ENV{SF_TEST_VALGRIND}
            ? ('valgrind', '-q', '--error-limit=no', '--num-callers=30',
               "--log-file=$self->{dir}/valgrind.%p.log",
               "--suppressions=$ROOT/t/valgrind.supp")
            : ();
        exec @valgrind, $NGINX, '-p', "$self->{dir}/",
             '-c', "$self->{dir}/nginx.conf";
        die "exec $NGINX: $!";
    }

    $self->{nginx_pid} = $pid;

    # under valgrind, with other tests beside it (make test-valgrind runs
    # three at a time), nginx may take a while to load: up to 2 minutes,
    # unless it exits first
    eval { wait_port($self->{port}, 'nginx',
                     $ENV{SF_TEST_VALGRIND} ? 2400 : 200, $pid) };
    if ($@) {
        my $err = $self->slurp('stderr.log') . $self->slurp('error.log');
        die "nginx did not start: $@$err";
    }

    # both workers up: each writes a line when it starts
    for (1 .. 100) {
        last if $self->worker_pids >= $self->{workers};
        sleep 0.05;
    }

    return $self;
}

sub worker_pids {
    my ($self) = @_;

    my $master = $self->{nginx_pid} or return ();
    my @pids = `pgrep -P $master`;
    chomp @pids;
    return @pids;
}

# SIGKILL for the whole node, master and workers at once (a machine that
# dies); the master is reaped.  Returns the pids killed.  finish and
# DESTROY then have nothing to stop.
sub kill_node {
    my ($self) = @_;

    my $master = delete $self->{nginx_pid} or return ();
    my @pids = ($master, `pgrep -P $master`);
    chomp @pids;
    kill 'KILL', @pids;
    waitpid($master, 0);

    # the workers, children of the master, go to init: wait until gone
    for (1 .. 100) {
        last unless grep { kill 0, $_ } @pids[1 .. $#pids];
        sleep 0.05;
    }

    return @pids;
}

sub reload {
    my ($self, %o) = @_;

    my @old = $self->worker_pids;
    my %was = map { $_ => 1 } @old;
    kill 'HUP', $self->{nginx_pid};

    # new workers in, old workers gone (with OLD_MAY_STAY, only the former:
    # an old worker whose token request runs stays until it ends)
    for (1 .. 200) {
        my %now = map { $_ => 1 } $self->worker_pids;
        my $new = grep { !$was{$_} } keys %now;
        last if $o{old_may_stay} && $new >= $self->{workers};
        last if !grep { $now{$_} } @old and keys %now >= $self->{workers};
        sleep 0.05;
    }

    return $self;
}

# Stops nginx, empties error.log and starts it again (a fresh master: the
# zone is new, the state file is read again).
sub restart {
    my ($self) = @_;

    $self->stop;
    truncate "$self->{dir}/error.log", 0;
    return $self->start;
}

sub stop {
    my ($self) = @_;

    if (my $pid = $self->{nginx_pid}) {
        kill 'QUIT', $pid;
        my $gone = 0;
        for (1 .. 200) {
            if (waitpid($pid, WNOHANG) == $pid) {
                $gone = 1;
                last;
            }
            sleep 0.05;
        }
        if (!$gone) {
            kill 'KILL', $self->worker_pids, $pid;
            waitpid($pid, 0);
            fail('nginx stopped on QUIT within 10 s');
        }
        delete $self->{nginx_pid};
    }

    return $self;
}

sub stop_mock {
    my ($self) = @_;

    if (my $pid = delete $self->{mock_pid}) {
        kill 'TERM', $pid;
        waitpid($pid, 0);
    }
}

# Stops the extra mocks; with $check, a test for each: it was still
# running (a mock that died during the test fails here).
sub stop_extra_mocks {
    my ($self, $check) = @_;

    for my $m (@{ delete $self->{extra_mocks} || [] }) {
        my $running = waitpid($m->{pid}, WNOHANG) == 0;
        if ($running) {
            kill 'TERM', $m->{pid};
            waitpid($m->{pid}, 0);
        }
        ok($running, "extra mock $m->{n} was running until the end")
            or diag($self->slurp("mock$m->{n}.log")) if $check;
    }
}

# Stops everything and checks the error log; call before done_testing.
sub finish {
    my ($self) = @_;

    $self->stop;
    $self->stop_mock;
    $self->stop_extra_mocks(1);
    $self->stop_helpers;

    # a test may expect some lines, such as a worker it killed
    my $allow = $self->{allow_alerts};

    my @bad = grep { /\[(alert|crit|emerg)\]/ && !($allow && /$allow/) }
              split /\n/, $self->error_log;

    ok(!@bad, 'error.log has no alert, crit or emerg')
        or diag(join "\n", @bad[0 .. ($#bad < 9 ? $#bad : 9)]);

    if ($ENV{SF_TEST_VALGRIND}) {
        my $report = join '', map { $self->slurp($_) }
                     map { s{.*/}{}r } glob "$self->{dir}/valgrind.*.log";
        is($report, '', 'valgrind reports nothing') or diag($report);
    }
}

sub DESTROY {
    my ($self) = @_;

    local $?;

    $self->stop;
    $self->stop_mock;
    $self->stop_extra_mocks;
    $self->stop_helpers;
}

sub slurp {
    my ($self, $file) = @_;

    open my $fh, '<', "$self->{dir}/$file" or return '';
    local $/;
    return scalar(<$fh>) // '';
}

sub error_log { $_[0]->slurp('error.log') }

# A test that `promtool check metrics` accepts TEXT (a Prometheus
# exposition), named WHAT; promtool's complaints as a diag when not.
sub promtool_check {
    my ($self, $text, $what) = @_;

    my $file = $self->write_file('metrics.txt', $text, 0644);
    my $out = `promtool check metrics < $file 2>&1`;
    Test::More::is($? >> 8, 0, "promtool check metrics accepts the output: "
                               . $what) or Test::More::diag($out);
}

# Where error.log ends now; error_log_since(MARK) is what came after it.
sub log_mark { -s "$_[0]{dir}/error.log" || 0 }

sub error_log_since {
    my ($self, $mark) = @_;

    return substr($self->error_log, $mark // 0);
}

# The lines of error.log (after MARK, if given) that match the regexp.
sub log_lines {
    my ($self, $re, $mark) = @_;

    return grep { /$re/ } split /\n/, $self->error_log_since($mark);
}

# The request body temp files (client_body_temp_path) left now.
sub temp_files {
    my ($self) = @_;

    opendir my $d, "$self->{dir}/body" or return ();
    return grep { !/^\./ } readdir $d;
}

# How much slower everything is: 10 under SF_TEST_VALGRIND, else 1.  Tests
# multiply their waits by it.
sub time_scale { $ENV{SF_TEST_VALGRIND} ? 10 : 1 }

# -- waiting for an event --------------------------------------------------

# Polls COND (a sub) every 50 ms until it is true or SECONDS (times
# time_scale) passed; returns its last value.
sub wait_for {
    my ($seconds, $cond) = @_;

    my $end = time + $seconds * time_scale();
    my $v;
    while (1) {
        $v = $cond->();
        return $v if $v || time >= $end;
        sleep 0.05;
    }
}

# The same for an event that a test needs before it goes on: returns
# COND's true value, or dies saying that WHAT did not happen (and after
# how long), which ends the test file there.
#
#     SfTest::wait_event(10, 'the refresh began', sub { ... });
sub wait_event {
    my ($seconds, $what, $cond) = @_;

    my $v = wait_for($seconds, $cond);
    return $v if $v;

    die sprintf("gave up waiting after %.1f s: %s did not happen\n",
                $seconds * time_scale(), $what);
}

# The same with COND given the credential NAME (the first if undef) of
# sf_oauth_info, as wait_info does; returns the credential.
sub wait_info_event {
    my ($self, $name, $what, $cond, $seconds) = @_;

    my $c;
    wait_event($seconds // 10, $what, sub {
        $c = $self->cred_info($name);
        return $c && $cond->($c);
    });
    return $c;
}

# Waits until error.log after MARK matches RE, for up to SECONDS (not
# scaled: the caller scales), polling every 10 ms; true when it does.
sub wait_log {
    my ($self, $re, $mark, $seconds) = @_;

    my $end = time + $seconds;
    while (time < $end) {
        return 1 if $self->error_log_since($mark) =~ $re;
        sleep 0.01;
    }
    return 0;
}

# Waits until the credential NAME (the first if undef) in sf_oauth_info
# passes COND (a sub given the credential's hash), for up to SECONDS
# (times time_scale); returns the credential then, or undef.
sub wait_info {
    my ($self, $name, $cond, $seconds) = @_;

    my $c;
    return wait_for($seconds // 10, sub {
        $c = $self->cred_info($name);
        return $c && $cond->($c) ? $c : undef;
    });
}

# One credential of sf_oauth_info (the first, or the one named), or undef
# when sf_oauth_info does not answer 200 JSON.
sub cred_info {
    my ($self, $name) = @_;

    my $r = $self->get('/sf_oauth_info', timeout => 10);
    return undef unless $r->{status} == 200 && $r->{json};
    my @c = @{ $r->{json}{credentials} || [] };
    return $c[0] unless defined $name;
    my ($c) = grep { $_->{name} eq $name } @c;
    return $c;
}

# Checks that no answer (hashrefs as http() gives them: content, headers)
# and neither the error log nor the access log holds any of the tokens.
sub no_token_in {
    my ($self, $responses, $tokens) = @_;

    my $leaks = 0;
    for my $r (@$responses) {
        my $all = ($r->{content} // '')
            . join("\n", map { "$_: " . ($r->{headers}{$_} // '') }
                         keys %{ $r->{headers} || {} });
        for my $tok (@$tokens) {
            $leaks++ if index($all, $tok) >= 0;
        }
    }
    is($leaks, 0, 'no answer through nginx holds a token ('
                  . scalar(@$responses) . ' answers)');

    my $logs = $self->error_log . $self->slurp('access.log');
    ok(!grep({ index($logs, $_) >= 0 } @$tokens), 'no log holds a token');
}

# -- clients -------------------------------------------------------------

# A SOAP call: POST BODY to PATH with Content-Type text/xml and an empty
# SOAPAction; options: headers (a hashref, more headers or others in
# their place), timeout, port, as http() takes them.
sub soap {
    my ($self, $path, $body, %opt) = @_;

    return $self->http('POST', $path, body => $body,
                       timeout => $opt{timeout}, port => $opt{port},
                       headers => { 'Content-Type' => 'text/xml; charset=UTF-8',
                                    SOAPAction => '""',
                                    %{ $opt{headers} || {} } });
}

# DATA gzip-compressed, with the minimal gzip header.
sub gz {
    my ($data) = @_;

    my $out;
    gzip(\$data => \$out, Minimal => 1) or die $GzipError;
    return $out;
}

# Runs openssl with ARGS (joined by spaces, as a shell command); dies with
# its output when it fails.
sub openssl {
    my $cmd = join ' ', 'openssl', @_;
    my $out = `$cmd 2>&1`;
    die "$cmd: $out" if $?;
}

# A slow client's chunked request: HEAD (the request line and headers, each
# ending in CRLF, without Transfer-Encoding), then BODY in chunks of SLICE
# bytes, each written on its own after a pause of 50 ms.  Returns the whole
# raw answer (the connection is closed).
sub chunked {
    my ($self, $head, $body, $slice, %opt) = @_;

    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $opt{port} || $self->{port})
        or die "connect: $!";

    print $s $head, "Connection: close\r\nTransfer-Encoding: chunked\r\n\r\n";

    for my $part (unpack("(a$slice)*", $body)) {
        printf $s "%x\r\n%s\r\n", length $part, $part;
        $s->flush;
        sleep 0.05;
    }

    print $s "0\r\n\r\n";

    return join '', <$s>;
}

# One HTTP/1.1 request to nginx: a hashref with status, headers (lower-case
# names) and content, as HTTP::Tiny gives them.  The client waits up to
# TIMEOUT seconds (timeout =>), 30 times time_scale by default: a request
# may wait for a token request that long under valgrind.
sub http {
    my ($self, $method, $path, %opt) = @_;

    my $ua = HTTP::Tiny->new(timeout => $opt{timeout} || 30 * time_scale(),
                             keep_alive => 0);
    my %args = (headers => $opt{headers} || {});
    $args{content} = $opt{body} if defined $opt{body};

    my $port = $opt{port} || $self->{port};
    my $res = $ua->request($method, "http://127.0.0.1:$port$path", \%args);
    $res->{json} = eval { decode_json($res->{content}) }
        if ($res->{headers}{'content-type'} // '') =~ /json/;

    return $res;
}

sub get { my $self = shift; $self->http('GET', @_) }

# Sends n requests at once over n connections, then reads every answer.
# Returns the list of status codes (0 for no answer).  Options: timeout
# (seconds for all the answers, 30 times time_scale by default); headers,
# a hashref of request headers, or a sub that gets the request's index
# (0 .. n-1) and returns one; answers, an arrayref that gets each whole
# raw answer, in order; ports, an arrayref of ports (several nodes):
# request i goes to ports->[i % @ports] instead of this node's port.
sub parallel {
    my ($self, $n, $path, %opt) = @_;

    my $timeout = $opt{timeout} || 30 * time_scale();
    my (@socks, %buf, %idx);

    for my $i (0 .. $n - 1) {
        my $port = $opt{ports} ? $opt{ports}[$i % @{ $opt{ports} }]
                               : $self->{port};
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                      PeerPort => $port,
                                      Proto => 'tcp')
            or die "connect: $!";
        my $h = ref $opt{headers} eq 'CODE' ? $opt{headers}->($i)
                                             : $opt{headers} || {};
        print $s "GET $path HTTP/1.1\r\nHost: localhost\r\n"
                 . join('', map { "$_: $h->{$_}\r\n" } sort keys %$h)
                 . "Connection: close\r\n\r\n";
        push @socks, $s;
        $idx{fileno $s} = $i;
        $buf{$i} = '';
    }

    my $sel = IO::Select->new(@socks);
    my $end = time + $timeout;

    while ($sel->count && time < $end) {
        for my $s ($sel->can_read(0.5)) {
            my $n = sysread($s, my $chunk, 65536);
            if (!$n) {
                $sel->remove($s);
                close $s;
                next;
            }
            $buf{ $idx{fileno $s} } .= $chunk;
        }
    }

    @{ $opt{answers} } = map { $buf{$_} } 0 .. $n - 1 if $opt{answers};

    return map { $buf{$_} =~ m{^HTTP/1\.\d (\d+)} ? $1 : 0 } 0 .. $n - 1;
}

# -- the web server flow, as a browser goes through it -------------------

# The users of the mock's login page (t/lib/mock_sf.py's USERS): name ->
# password, org id, user id.
our %USERS = (
    'admin@acme' => { password => 'acme-password',
                      org_id => '00D5g000004TmoK',
                      user_id => '005000000000001' },
    'other@globex' => { password => 'globex-password',
                        org_id => '00D5g000009GlbX',
                        user_id => '005000000000002' },
);

# A PKCE pair: (verifier, challenge), the challenge being
# base64url(SHA-256(verifier)) with no padding.  VERIFIER may be given.
sub pkce {
    my ($verifier) = @_;

    $verifier //= MIME::Base64::encode_base64url(
        join('', map { chr int rand 256 } 1 .. 48));
    return ($verifier, MIME::Base64::encode_base64url(
                Digest::SHA::sha256($verifier)));
}

# application/x-www-form-urlencoded, or a query: PAIRS is a list of
# [name, value] or a hashref (sorted by name).
sub form_encode {
    my ($pairs) = @_;

    my @p = ref $pairs eq 'HASH'
        ? map { [$_, $pairs->{$_}] } sort keys %$pairs
        : @$pairs;
    my $enc = sub {
        my ($s) = @_;
        utf8::encode($s) if utf8::is_utf8($s);
        $s =~ s/([^A-Za-z0-9\-._~])/sprintf('%%%02X', ord $1)/ge;
        return $s;
    };
    return join '&', map { $enc->($_->[0]) . '=' . $enc->($_->[1] // '') }
                     @p;
}

# The query of URL (or a form body) as a hashref (the first value of each
# name); '+' is a space.
sub parse_query {
    my ($url) = @_;

    my $q = $url =~ /\?/ ? ($url =~ s/^[^?]*\?//r) : $url;
    $q =~ s/#.*//s;
    my %h;
    for my $pair (split /&/, $q) {
        my ($k, $v) = split /=/, $pair, 2;
        next unless defined $k && length $k;
        for ($k, $v) {
            next unless defined;
            tr/+/ /;
            s/%([0-9A-Fa-f]{2})/chr hex $1/ge;
        }
        $h{$k} //= $v // '';
    }
    return \%h;
}

# URL resolved against BASE (an absolute URL): enough for the Location
# headers and form actions of the console and the mock.
sub resolve_url {
    my ($base, $url) = @_;

    return $url if $url =~ m{^[a-z][a-z0-9+.-]*://}i;
    my ($origin) = $base =~ m{^([a-z]+://[^/?#]+)}i;
    return $origin . $url if $url =~ m{^/};
    (my $dir = $base) =~ s{[?#].*}{}s;
    $dir =~ s{[^/]*$}{};
    return $dir . $url;
}

# The origin (scheme://host:port) of URL.
sub url_origin { ($_[0] =~ m{^([a-z]+://[^/?#]+)}i)[0] }

# The forms of an HTML page: a list of hashrefs with method (lower case),
# action (as written), id, name, and inputs: a list of hashrefs (tag,
# type, name, value, id) of its <input>s and <button>s in order.  Enough
# for the pages the module and the mock write (attributes quoted).
sub html_forms {
    my ($page) = @_;

    my @forms;
    while ($page =~ m{<form\b([^>]*)>(.*?)</form\s*>}gsi) {
        my ($attrs, $inner) = ($1, $2);
        my %f = (%{ html_attrs($attrs) }, inputs => []);
        $f{method} = lc($f{method} // 'get');
        while ($inner =~ m{<(input|button)\b([^>]*)>}gsi) {
            my $tag = lc $1;
            my $a = html_attrs($2);
            $a->{tag} = $tag;
            $a->{type} = lc($a->{type} // ($tag eq 'button' ? 'submit'
                                                            : 'text'));
            push @{ $f{inputs} }, $a;
        }
        push @forms, \%f;
    }
    return @forms;
}

# The attributes of a start tag's text: name (lower case) -> value, the
# entities &amp; &lt; &gt; &quot; &#39; &#x27; decoded.
sub html_attrs {
    my ($text) = @_;

    my %a;
    while ($text =~ m{([A-Za-z_:][-A-Za-z0-9_:.]*)
                      (?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>"']+)))?}gx)
    {
        my ($k, $v) = (lc $1, $2 // $3 // $4 // '');
        $v =~ s/&quot;/"/g;
        $v =~ s/&#0*39;|&#x0*27;|&apos;/'/gi;
        $v =~ s/&lt;/</g;
        $v =~ s/&gt;/>/g;
        $v =~ s/&amp;/&/g;
        $a{$k} = $v;
    }
    return \%a;
}

# The hidden inputs of FORM as [name, value] pairs, in order.
sub form_hidden {
    my ($form) = @_;

    return map { [$_->{name}, $_->{value} // ''] }
           grep { $_->{type} eq 'hidden' && defined $_->{name} }
           @{ $form->{inputs} };
}

# A browser: HTTP::Tiny that follows no redirect itself and keeps cookies
# in JAR (an SfTest::CookieJar).
sub browser_ua {
    my ($jar) = @_;

    return HTTP::Tiny->new(
        timeout => 30 * time_scale(), max_redirect => 0, keep_alive => 0,
        cookie_jar => $jar,
        agent => 'Mozilla/5.0 (X11; Linux x86_64) SfTest/1.0');
}

# One step of a flow: the request (METHOD URL, headers, form body) made by
# UA, its answer pushed onto FLOW's steps as a hashref: name, method, url,
# request_headers, status, headers (lower-case names), content; returned.
sub flow_step {
    my ($flow, $name, $method, $url, %opt) = @_;

    my %hdr = (Accept => 'text/html,application/xhtml+xml',
               %{ $opt{headers} || {} });
    my %args = (headers => \%hdr);
    if (defined $opt{form}) {
        $args{content} = form_encode($opt{form});
        $hdr{'Content-Type'} = 'application/x-www-form-urlencoded';
    }
    my $res = $flow->{ua}->request($method, $url, \%args);
    my $step = { name => $name, method => $method, url => $url,
                 request_headers => \%hdr, request_body => $args{content},
                 status => $res->{status}, headers => $res->{headers},
                 content => $res->{content} };
    push @{ $flow->{steps} }, $step;
    return $step;
}

# The step NAME of FLOW (a flow of authorize_flow or connect_flow), or
# undef.
sub step {
    my ($flow, $name) = @_;

    my ($s) = grep { $_->{name} eq $name } @{ $flow->{steps} || [] };
    return $s;
}

# The mock Salesforce's pages from an authorize URL to the redirect that
# carries the code: GET URL (the login page), the login form submitted
# with USER's name and password, the consent form with Allow (or Deny).
# Options: url (the authorize URL), user ('admin@acme' by default),
# password (the user's by default), deny (press Deny), and flow (a flow
# hashref to go on with: its ua and steps).  Steps: "authorize", "login",
# "consent".  Returns the flow: steps, ua, jar, and when the pages went as
# a browser expects: redirect (the consent's Location, absolute), code,
# state, error, error_description (of its query); error_step and
# flow_error (what went wrong) otherwise.
sub authorize_flow {
    my ($self, %opt) = @_;

    my $flow = $opt{flow} || do {
        my $jar = SfTest::CookieJar->new;
        { steps => [], jar => $jar, ua => browser_ua($jar) };
    };
    my $user = $opt{user} // 'admin@acme';
    my $password = $opt{password} // ($USERS{$user} || {})->{password};

    my $fail = sub {
        my ($step, $why) = @_;
        $flow->{error_step} = $step->{name};
        $flow->{flow_error} = "$step->{name}: $why (status $step->{status})";
        return $flow;
    };

    my $s = flow_step($flow, 'authorize', 'GET', $opt{url});
    return $fail->($s, 'no login page') if $s->{status} != 200;
    my ($login) = grep { ($_->{id} // '') eq 'login' }
                  html_forms($s->{content});
    return $fail->($s, 'no login form') unless $login;

    $s = flow_step($flow, 'login', uc $login->{method},
                   resolve_url($s->{url}, $login->{action}),
                   form => [form_hidden($login), ['username', $user],
                            ['pw', $password // '']]);
    my ($consent) = grep { ($_->{id} // '') eq 'consent' }
                    html_forms($s->{content});
    return $fail->($s, 'no consent form') unless $consent;

    my ($button) = grep { ($_->{id} // '') eq ($opt{deny} ? 'oadeny'
                                                          : 'oaapprove') }
                   @{ $consent->{inputs} };
    return $fail->($s, 'no Allow or Deny button') unless $button;
    $s = flow_step($flow, 'consent', uc $consent->{method},
                   resolve_url($s->{url}, $consent->{action}),
                   form => [form_hidden($consent),
                            [$button->{name}, $button->{value}]]);
    return $fail->($s, 'no redirect') unless $s->{status} == 302
                                            && $s->{headers}{location};

    $flow->{redirect} = resolve_url($s->{url}, $s->{headers}{location});
    my $q = parse_query($flow->{redirect});
    $flow->{$_} = $q->{$_} for grep { exists $q->{$_} }
                              qw(code state error error_description);
    return $flow;
}

# The whole connect flow as a browser goes through it: the console page,
# its Connect form of CREDENTIAL posted with a browser's same-origin
# headers, the 303 to the authorize URL followed, the mock's login and
# consent pages, the redirect to the callback followed with the cookies.
#
#     my $f = $t->connect_flow(credential => 'crm');
#     is($f->{status}, 200, ...);              # the callback's page
#     my $cb = SfTest::step($f, 'callback');  # its status, headers, content
#
# Options:
#   console      the console's URL (http://127.0.0.1:PORT/sf_oauth/)
#   credential   the credential whose Connect form is posted ('crm')
#   user, password, deny
#                the mock's login (authorize_flow)
#   origin       the Origin of the connect POST: the console's origin by
#                default ("null" is what Chromium sends with
#                Referrer-Policy: no-referrer); undef: none
#   cross_site   the connect POST comes from another site: Origin
#                http://evil.example, Sec-Fetch-Site: cross-site
#   form         a hashref of fields that replace (or, undef, drop) the
#                Connect form's own (the form token: form => {form =>
#                'forged'})
#   drop_cookie  the cookies are gone before the callback (another browser)
#   state        the callback's state is this one instead
#   replay       the callback URL is requested once more after it
#                ("replay")
#   confirm      when the callback's page has a confirm form (a reconnect
#                to another org or user), post it ("confirm")
#   stop_before  'callback': stop before it (the flow has callback_url)
# Steps: "console", "connect", then authorize_flow's, "callback",
# "replay", "confirm".  Returns the flow: steps, jar, ua, status (of the
# last step), authorize_url, authorize_query (its query as a hashref),
# state, code, error, callback_url, cookies (names set by the connect),
# forms (the callback page's forms) and flow_error, error_step when a step
# did not go as a browser expects (no form, no redirect...).
sub connect_flow {
    my ($self, %opt) = @_;

    my $console = $opt{console} // "http://127.0.0.1:$self->{port}/sf_oauth/";
    my $cred = $opt{credential} // 'crm';
    my $jar = SfTest::CookieJar->new;
    my $flow = { steps => [], jar => $jar, ua => browser_ua($jar) };

    my $fail = sub {
        my ($step, $why) = @_;
        $flow->{error_step} = $step->{name};
        $flow->{flow_error} = "$step->{name}: $why (status $step->{status})";
        $flow->{status} = $step->{status};
        return $flow;
    };

    my $s = flow_step($flow, 'console', 'GET', $console);
    return $fail->($s, 'no console page') if $s->{status} != 200;
    my ($connect) = grep {
        $_->{method} eq 'post' && ($_->{action} // '') =~ /connect$/
            && grep({ ($_->{name} // '') eq 'credential'
                      && ($_->{value} // '') eq $cred } @{ $_->{inputs} })
    } html_forms($s->{content});
    return $fail->($s, "no Connect form for \"$cred\"") unless $connect;

    my @fields = form_hidden($connect);
    for my $k (sort keys %{ $opt{form} || {} }) {
        @fields = grep { $_->[0] ne $k } @fields;
        push @fields, [$k, $opt{form}{$k}] if defined $opt{form}{$k};
    }
    my %hdr = ('Sec-Fetch-Site' => 'same-origin',
               'Sec-Fetch-Mode' => 'navigate',
               'Sec-Fetch-Dest' => 'document',
               'Sec-Fetch-User' => '?1');
    $hdr{Origin} = exists $opt{origin} ? $opt{origin} : url_origin($console);
    delete $hdr{Origin} unless defined $hdr{Origin};
    if ($opt{cross_site}) {
        $hdr{Origin} = 'http://evil.example';
        $hdr{'Sec-Fetch-Site'} = 'cross-site';
    }
    my $cookies_before = { map { $_->{name} => 1 } $jar->cookies };
    $s = flow_step($flow, 'connect', 'POST',
                   resolve_url($console, $connect->{action}),
                   headers => \%hdr, form => \@fields);
    $flow->{cookies} = [ grep { !$cookies_before->{$_} }
                         map { $_->{name} } $jar->cookies ];
    return $fail->($s, 'no 303 to the authorize URL')
        unless $s->{status} == 303 && $s->{headers}{location};
    $flow->{authorize_url} = resolve_url($s->{url}, $s->{headers}{location});
    $flow->{authorize_query} = parse_query($flow->{authorize_url});
    $flow->{state} = $flow->{authorize_query}{state};

    $self->authorize_flow(url => $flow->{authorize_url}, flow => $flow,
                          user => $opt{user}, password => $opt{password},
                          deny => $opt{deny});
    if ($flow->{flow_error}) {
        $flow->{status} = $flow->{steps}[-1]{status};
        return $flow;
    }

    my $cb = $flow->{redirect};
    if (defined $opt{state}) {
        my $enc = form_encode([['x', $opt{state}]]) =~ s/^x=//r;
        $cb =~ s/([?&]state=)[^&#]*/$1$enc/;
    }
    $flow->{callback_url} = $cb;
    return $flow if ($opt{stop_before} // '') eq 'callback';

    $jar->clear if $opt{drop_cookie};
    $s = flow_step($flow, 'callback', 'GET', $cb,
                   headers => { 'Sec-Fetch-Site' => 'cross-site',
                                'Sec-Fetch-Mode' => 'navigate',
                                'Sec-Fetch-Dest' => 'document' });
    $flow->{forms} = [ html_forms($s->{content} // '') ];
    $flow->{status} = $s->{status};

    if ($opt{replay}) {
        $s = flow_step($flow, 'replay', 'GET', $cb);
        $flow->{status} = $s->{status};
    }

    if ($opt{confirm}) {
        my ($confirm) = grep { $_->{method} eq 'post'
                               && ($_->{action} // '') =~ /confirm$/ }
                        @{ $flow->{forms} };
        return $fail->($flow->{steps}[-1], 'no confirm form')
            unless $confirm;
        $s = flow_step($flow, 'confirm', 'POST',
                       resolve_url($cb, $confirm->{action}),
                       headers => { %hdr, Origin => url_origin($console),
                                    'Sec-Fetch-Site' => 'same-origin' },
                       form => [form_hidden($confirm)]);
        $flow->{status} = $s->{status};
    }

    return $flow;
}

# The code exchange at the mock's token endpoint, as the module makes it:
# grant_type=authorization_code with FORM's fields (code, redirect_uri,
# code_verifier; client_id and client_secret are the test's unless given,
# undef drops one).  Returns http()'s hashref (status, json...).
sub code_exchange {
    my ($self, %form) = @_;

    my %f = (grant_type => 'authorization_code', client_id => $CLIENT_ID,
             client_secret => $CLIENT_SECRET, %form);
    delete @f{ grep { !defined $f{$_} } keys %f };
    my $res = HTTP::Tiny->new(timeout => 30 * time_scale())->request(
        'POST', $self->mock_url . '/services/oauth2/token',
        { headers => { 'Content-Type' =>
                           'application/x-www-form-urlencoded' },
          content => form_encode(\%f) });
    $res->{json} = eval { decode_json($res->{content}) };
    return $res;
}

# The packages that t/lib/console_browser.py needs and that are missing
# (chromium, chromium-driver, python3-selenium): none when it can run.
# Debian's python3 runs it (/usr/bin/python3: another python3 first in the
# PATH, a pyenv one, has no python3-selenium).
sub browser_missing {
    my @missing = map { $_->[1] } grep { !-x $_->[0] }
                  (['/usr/bin/chromium', 'chromium'],
                   ['/usr/bin/chromedriver', 'chromium-driver']);
    push @missing, 'python3-selenium'
        if system('/usr/bin/python3 -c "import selenium" >/dev/null 2>&1')
           != 0;
    return @missing;
}

# Runs t/lib/console_browser.py (headless Chromium) with ARGS; returns its
# JSON answer as a hashref (ok, error, steps, final_url, title, text,
# screenshot...), or { ok => 0, error => ... } when it printed none.  Its
# stderr goes to browser.log in the test directory.
sub browser {
    my ($self, @args) = @_;

    my $limit = int(240 * time_scale());
    my $pid = open(my $fh, '-|') // die "fork: $!";
    if (!$pid) {
        open STDERR, '>>', "$self->{dir}/browser.log";
        exec 'timeout', $limit, '/usr/bin/python3',
             "$ROOT/t/lib/console_browser.py", @args;
        die "exec: $!";
    }
    local $/;
    my $out = <$fh> // '';
    close $fh;
    my ($json) = $out =~ /^(\{.*\})\s*\z/ms;
    my $r = eval { decode_json($json // '') };
    return $r || { ok => 0, error => "no JSON from console_browser.py: $out"
                                     . $self->slurp('browser.log') };
}

package SfTest::CookieJar;

# A small cookie jar for HTTP::Tiny's cookie_jar (add, cookie_header), as
# a browser keeps cookies: by host (no Domain attribute: host-only, as the
# module sets them; ports are not told apart, as browsers do not), path
# prefix, Max-Age and Expires (a past one deletes), Secure (https only).
# HttpOnly and SameSite are kept in the cookie's hash for the tests.

sub new { bless { cookies => [] }, shift }

sub add {
    my ($self, $url, $header) = @_;

    my ($scheme, $host, $path) = $url =~ m{^(\w+)://([^/:?#]+)[^/?#]*([^?#]*)}
        or return;
    my ($pair, @attrs) = split /;\s*/, $header;
    my ($name, $value) = $pair =~ /^\s*([^=]+?)\s*=\s*(.*?)\s*$/ or return;
    my %c = (name => $name, value => $value, host => lc $host,
             path => ($path =~ m{^(/.*)/} ? $1 : '/') || '/');
    my $delete;
    for (@attrs) {
        my ($k, $v) = /^\s*([^=]+?)\s*(?:=\s*(.*?))?\s*$/ or next;
        $k = lc $k;
        if ($k eq 'path' && defined $v && $v =~ m{^/}) { $c{path} = $v }
        elsif ($k eq 'max-age') { $delete = 1 if ($v // 0) <= 0 }
        elsif ($k eq 'expires') {
            # enough for a date in the past: nginx's "Thu, 01 Jan 1970..."
            $delete = 1 if ($v // '') =~ /19[0-9]{2}|200[0-9]/;
        }
        elsif ($k eq 'secure') { $c{secure} = 1 }
        elsif ($k eq 'httponly') { $c{httponly} = 1 }
        elsif ($k eq 'samesite') { $c{samesite} = $v }
        elsif ($k eq 'domain') { $c{domain} = $v }
    }
    $c{raw} = $header;
    @{ $self->{cookies} } = grep {
        !($_->{name} eq $c{name} && $_->{host} eq $c{host}
          && $_->{path} eq $c{path})
    } @{ $self->{cookies} };
    push @{ $self->{cookies} }, \%c unless $delete;
    return;
}

sub cookie_header {
    my ($self, $url) = @_;

    my ($scheme, $host, $path) = $url =~ m{^(\w+)://([^/:?#]+)[^/?#]*([^?#]*)}
        or return '';
    $path ||= '/';
    return join '; ', map { "$_->{name}=$_->{value}" } grep {
        $_->{host} eq lc $host
            && (!$_->{secure} || lc $scheme eq 'https')
            && ($path eq $_->{path} || index($path, $_->{path}) == 0
                && ($_->{path} =~ m{/$}
                    || substr($path, length $_->{path}, 1) eq '/'))
    } @{ $self->{cookies} };
}

# The cookies kept: hashrefs (name, value, host, path, secure, httponly,
# samesite, raw: the Set-Cookie header).
sub cookies { @{ $_[0]{cookies} } }

# Every cookie forgotten.
sub clear { $_[0]{cookies} = [] }

package SfTest::Mock;

# An extra mock Salesforce of SfTest::start_extra_mock.

sub port { $_[0]{port} }
sub url { 'http://127.0.0.1:' . $_[0]{port} }
sub mock { my ($self, @hook) = @_; SfTest::mock_hook($self->url, @hook) }
sub mode { $_[0]->mock('mode', "mode=$_[1]") }
sub token_requests { $_[0]->mock('stats')->{token_requests} }
sub stats { $_[0]->mock('stats') }

1;
