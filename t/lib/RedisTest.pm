package RedisTest;

# A redis-server of its own for a test, and the fleet around it: several
# nginx nodes (SfTest objects) that share one mock Salesforce and one Redis.
#
# The server runs in the foreground as a child of the test (never a
# daemon, never systemd), on a free port of 127.0.0.1, with no persistence
# ("--save '' --appendonly no"): a restart loses every key.  It is stopped
# by pid in stop, finish and DESTROY.
#
#     my $redis = RedisTest->new(dir => $t->dir);          # plain
#     RedisTest->new(dir => $d, password => 'pw');          # requirepass
#     RedisTest->new(dir => $d, user => 'fleet',            # an ACL user; the
#                    user_password => 'pw');               #   default user off
#     RedisTest->new(dir => $d, tls => 1);                  # TLS only
#     RedisTest->new(dir => $d, unix => 1);                 # + a unix socket
#     RedisTest->new(dir => $d, host => '127.0.0.2');       # another loopback
#     RedisTest->new(dir => $d, extra => [ARGS]);           # more arguments
#     $redis->start;               # waits until it answers PING
#     $redis->kill9;  $redis->restart;     # same port, same options
#     $redis->stop;                # TERM, and waits for it
#
#     $redis->server               # "127.0.0.1:PORT" for "server"
#     $redis->unix_server          # "unix:/path/redis.sock" (unix => 1)
#     $redis->conf_block(...)      # an sf_oauth_redis block (see there)
#     RedisTest::sentinel_group(dir => $d, sentinels => 2)
#                                  # a primary, a replica and sentinels
#                                  #   (RedisTest::Sentinel; see there)
#     $redis->key('record')        # "sf_oauth:sf:crm:record"
#     $redis->cli(ARGS...)         # redis-cli with the connection, TLS and
#                                  #   auth options; its output
#     $redis->get(K), set(K, V), del(K), publish(CH, MSG),
#     $redis->key_names(PATTERN)
#     $redis->subscribe(CH)        # a redis-cli SUBSCRIBE in the background;
#     $redis->messages             #   the messages it got so far
#
# TLS: new(tls => 1) makes a CA, a server certificate for 127.0.0.1 and
# localhost signed by it, and a second CA that signed nothing (ca_file,
# wrong_ca_file, in DIR/redisTAG/tls/).  Debian's redis-server 7 is built with
# TLS (--tls-port works); tls_supported tells.
#
# Fleet helpers: fleet(...) makes and starts the nodes, RedisTest::Load
# sends requests to nodes at a steady pace in the background.

use strict;
use warnings;
no warnings qw(exec);    # a child that cannot exec leaves by POSIX::_exit

use Config;
use File::Path qw(make_path);
use List::Util ();
use POSIX qw(:sys_wait_h);
use Scalar::Util ();
use Test::More;
use Time::HiRes qw(sleep time);

use SfTest;

our $REDIS_SERVER = $ENV{TEST_REDIS_SERVER} || 'redis-server';
our $REDIS_CLI = $ENV{TEST_REDIS_CLI} || 'redis-cli';

# the key= file every node of a fleet gets (all must decrypt each other's)
our $FLEET_KEY = ('c3' x 32) . "\n";

sub new {
    my ($class, %opt) = @_;

    my $dir = $opt{dir} or die 'RedisTest->new needs dir';

    my $self = bless {
        dir => "$dir/redis" . ($opt{tag} // ''),
        port => $opt{port} || SfTest::free_port(),
        password => $opt{password},
        user => $opt{user},
        user_password => $opt{user_password},
        tls => $opt{tls},
        tls_dir => $opt{tls_dir},
        unix => $opt{unix},
        zone => $opt{zone} // 'sf',
        credential => $opt{credential} // 'crm',
        prefix => $opt{prefix} // 'sf_oauth:',
        extra => $opt{extra} || [],
        host => $opt{host} // '127.0.0.1',
        subs => [],
    }, $class;

    make_path($self->{dir});
    chmod 0755, $self->{dir};
    $self->make_certs if $self->{tls} && !$self->{tls_dir};

    return $self;
}

sub port { $_[0]{port} }
sub dir { $_[0]{dir} }
sub server { ($_[0]{host} // '127.0.0.1') . ':' . $_[0]{port} }
sub socket_path { "$_[0]{dir}/redis.sock" }
sub unix_server { 'unix:' . $_[0]->socket_path }
sub tls_dir { $_[0]{tls_dir} // "$_[0]{dir}/tls" }
sub ca_file { $_[0]->tls_dir . '/ca.crt' }
sub wrong_ca_file { $_[0]->tls_dir . '/wrong-ca.crt' }
sub pid { $_[0]{pid} }

# Is this redis-server built with TLS (BUILD_TLS: linked with libssl)?
# Debian's 7.x is.
sub tls_supported {
    my ($bin) = grep { -x } map { "$_/$REDIS_SERVER" } split /:/, $ENV{PATH};
    $bin = $REDIS_SERVER if $REDIS_SERVER =~ m{/};
    return 0 unless $bin;
    return `ldd $bin 2>/dev/null` =~ /libssl/ ? 1 : 0;
}

sub make_certs {
    my ($self) = @_;

    my $d = "$self->{dir}/tls";
    make_path($d);
    chmod 0755, $d;

    my $run = sub {
        my $cmd = shift;
        my $out = `$cmd 2>&1`;
        die "$cmd: $out" if $?;
    };

    for my $ca (qw(ca wrong-ca)) {
        $run->("openssl req -x509 -newkey rsa:2048 -nodes -days 2"
               . " -keyout $d/$ca.key -out $d/$ca.crt -subj /CN=sf-oauth-test-$ca");
    }
    $run->("openssl req -newkey rsa:2048 -nodes -keyout $d/server.key"
           . " -out $d/server.csr -subj /CN=localhost");
    open my $fh, '>', "$d/ext" or die;
    print $fh "subjectAltName=IP:127.0.0.1,DNS:localhost\n";
    close $fh;
    $run->("openssl x509 -req -in $d/server.csr -CA $d/ca.crt -CAkey $d/ca.key"
           . " -CAcreateserial -out $d/server.crt -days 2 -extfile $d/ext");

    # the workers (nobody) read the CA file if the module reads it late
    chmod 0644, glob "$d/*.crt";
}

sub server_args {
    my ($self) = @_;

    my @a = ('--daemonize', 'no', '--save', '', '--appendonly', 'no',
             '--dir', $self->{dir}, '--bind', $self->{host},
             '--logfile', '');

    if ($self->{tls}) {
        my $d = $self->tls_dir;
        push @a, '--port', 0, '--tls-port', $self->{port},
                 '--tls-cert-file', "$d/server.crt",
                 '--tls-key-file', "$d/server.key",
                 '--tls-ca-cert-file', "$d/ca.crt",
                 '--tls-auth-clients', 'no';
    } else {
        push @a, '--port', $self->{port};
    }

    push @a, '--unixsocket', $self->socket_path, '--unixsocketperm', '777'
        if $self->{unix};
    push @a, '--requirepass', $self->{password} if defined $self->{password};
    push @a, @{ $self->{extra} };

    # an ACL user with every right; the default user is then off, unless
    # there is a requirepass too: nothing works without the user's AUTH
    if (defined $self->{user}) {
        push @a, '--user', $self->{user}, 'on', ">$self->{user_password}",
                 '~*', '&*', '+@all';
        push @a, '--user', 'default', 'off' unless defined $self->{password};
    }

    return @a;
}

# In a child: the kernel sends it SIG when the test process dies, however
# it dies (a test killed by a timeout runs no destructor): no redis-server
# or load loop is left behind.  prctl(PR_SET_PDEATHSIG) on Linux x86_64
# and aarch64; nothing elsewhere.
sub die_with_parent {
    my ($parent, $sig) = @_;

    my %nr = (x86_64 => 157, aarch64 => 167);
    my ($arch) = $Config{archname} =~ /^(x86_64|aarch64)/;
    syscall($nr{$arch}, 1, $sig // 15) if $arch;
    POSIX::_exit(0) if getppid() != $parent;
}

sub start {
    my ($self) = @_;

    die "redis-server already running\n" if $self->{pid};

    my $parent = $$;
    my $pid = fork() // die "fork: $!";

    if ($pid == 0) {
        die_with_parent($parent);
        open STDOUT, '>>', "$self->{dir}/redis.log";
        open STDERR, '>&', \*STDOUT;
        exec $REDIS_SERVER, $self->server_args;
        # no die, no exit: the child must not run the test's END blocks
        # and destructors (they would stop the parent's servers)
        print STDERR "exec $REDIS_SERVER: $!\n";
        POSIX::_exit(127);
    }

    $self->{pid} = $pid;

    for (1 .. 200) {
        my $pong = $self->cli('PING');
        return $self if defined $pong && $pong eq 'PONG';
        if (waitpid($pid, WNOHANG) == $pid) {
            delete $self->{pid};
            die "redis-server exited at start:\n" . $self->log;
        }
        sleep 0.05;
    }

    die "redis-server did not answer PING:\n" . $self->log;
}

sub running {
    my ($self) = @_;

    return $self->{pid} && waitpid($self->{pid}, WNOHANG) == 0;
}

sub stop {
    my ($self) = @_;

    my $pid = delete $self->{pid} or return $self;
    kill 'TERM', $pid;
    for (1 .. 200) {
        return $self if waitpid($pid, WNOHANG) == $pid;
        sleep 0.05;
    }
    kill 'KILL', $pid;
    waitpid($pid, 0);

    return $self;
}

# A crash: SIGKILL, nothing saved (nothing is anyway), the port free again.
sub kill9 {
    my ($self) = @_;

    my $pid = delete $self->{pid} or return $self;
    kill 'KILL', $pid;
    waitpid($pid, 0);

    return $self;
}

# Starts it again on the same port with the same options: empty.
sub restart {
    my ($self) = @_;

    $self->stop if $self->{pid};
    return $self->start;
}

sub log {
    my ($self) = @_;

    open my $fh, '<', "$self->{dir}/redis.log" or return '';
    local $/;
    return scalar(<$fh>) // '';
}

# -- redis-cli -----------------------------------------------------------------

sub cli_args {
    my ($self) = @_;

    my @a = ('-h', $self->{host} // '127.0.0.1', '-p', $self->{port});
    push @a, '--tls', '--cacert', $self->ca_file if $self->{tls};
    if (defined $self->{user}) {
        push @a, '--user', $self->{user}, '--pass', $self->{user_password};
    } elsif (defined $self->{password}) {
        push @a, '-a', $self->{password};
    }
    return (@a, '--no-auth-warning', '--raw');
}

# Runs redis-cli with ARGS as the command.  Returns the output (--raw)
# without the one newline redis-cli adds, or undef when redis-cli failed
# (no server).  An error reply comes back as its text ("ERR ...").
sub cli {
    my ($self, @args) = @_;

    return $self->cli_in(undef, @args);
}

# The same with BYTES as the command's last argument, binary-safe
# (redis-cli -x reads it from its standard input).
sub cli_in {
    my ($self, $stdin, @args) = @_;

    my $pid = open(my $out, '-|') // die "fork: $!";

    if ($pid == 0) {
        if (defined $stdin) {
            my $f = "$self->{dir}/stdin.$$";
            open my $fh, '>', $f or POSIX::_exit(126);
            binmode $fh;
            print $fh $stdin;
            close $fh;
            open STDIN, '<', $f or POSIX::_exit(126);
            unlink $f;
            unshift @args, '-x';
        } else {
            open STDIN, '<', '/dev/null';
        }
        open STDERR, '>', '/dev/null';
        exec $REDIS_CLI, $self->cli_args, @args;
        POSIX::_exit(127);
    }

    binmode $out;
    local $/;
    my $text = <$out> // '';
    close $out;
    return undef if $? != 0;

    $text =~ s/\n\z//;

    # redis-cli -x exits 0 on a connection error too, saying so
    return undef if $text =~ /^Could not connect to Redis/;

    return $text;
}

# A field of INFO: INFO's SECTION and the field NAME's value, as
# stats('stats', 'total_connections_received'); undef without it.  Of
# commandstats, the calls of a command: stats('commandstats', 'eval').
sub stats {
    my ($self, $section, $name) = @_;

    my $out = $self->cli('INFO', $section) // '';
    if ($section eq 'commandstats') {
        return $out =~ /^cmdstat_\Q$name\E:calls=(\d+)/m ? $1 : 0;
    }
    return $out =~ /^\Q$name\E:(\S+)/m ? $1 : undef;
}

# How many connections the server accepted since it started.
sub connections { $_[0]->stats('stats', 'total_connections_received') // 0 }

sub get { $_[0]->cli('GET', $_[1]) }
sub set { $_[0]->cli_in($_[2], 'SET', $_[1]) }
sub del { $_[0]->cli('DEL', $_[1]) }
sub publish { $_[0]->cli('PUBLISH', $_[1], $_[2]) }

sub key_names {
    my ($self, $pattern) = @_;

    my $out = $self->cli('KEYS', $pattern // '*') // '';
    return sort grep { length } split /\n/, $out;
}

# The name of a key of the module: <prefix><zone>:<credential>:<what>;
# prefix, zone and credential of new() unless given.
sub key {
    my ($self, $what, %opt) = @_;

    return ($opt{prefix} // $self->{prefix})
         . ($opt{zone} // $self->{zone}) . ':'
         . ($opt{credential} // $self->{credential}) . ":$what";
}

sub events_channel { $_[0]{prefix} . 'events' }

# A redis-cli SUBSCRIBE to CHANNEL (the events channel by default) in the
# background, its output in a file; messages() reads what came so far.
sub subscribe {
    my ($self, $channel) = @_;

    $channel //= $self->events_channel;
    my $n = @{ $self->{subs} };
    my $file = "$self->{dir}/sub$n.out";

    my $parent = $$;
    my $pid = fork() // die "fork: $!";
    if ($pid == 0) {
        RedisTest::die_with_parent($parent);
        open STDOUT, '>', $file;
        open STDERR, '>', '/dev/null';
        open STDIN, '<', '/dev/null';
        exec $REDIS_CLI, $self->cli_args, 'SUBSCRIBE', $channel;
        POSIX::_exit(127);
    }
    push @{ $self->{subs} }, { pid => $pid, file => $file };

    # redis-cli prints "subscribe CHANNEL 1" once subscribed
    for (1 .. 100) {
        last if -s $file;
        sleep 0.05;
    }

    return $self;
}

# The messages that the subscriptions got, in order (one "message" triple
# of redis-cli --raw: message, channel, payload).
sub messages {
    my ($self) = @_;

    my @m;
    for my $s (@{ $self->{subs} }) {
        open my $fh, '<', $s->{file} or next;
        my @lines = <$fh>;
        chomp @lines;
        for (my $i = 0; $i + 2 <= $#lines; $i++) {
            if ($lines[$i] eq 'message') {
                push @m, $lines[$i + 2];
                $i += 2;
            }
        }
    }
    return @m;
}

sub unsubscribe_all {
    my ($self) = @_;

    for my $s (@{ $self->{subs} }) {
        kill 'TERM', $s->{pid};
        waitpid($s->{pid}, 0);
    }
    $self->{subs} = [];
}

# -- configuration ---------------------------------------------------------------

# The sf_oauth_redis block for this server (server 127.0.0.1:PORT; with
# tls: tls on and ca_file; with a password or an ACL user: those), named
# name (default "fleet").  Other arguments are lines of the block, in the
# order given, and replace the defaults of the same name; undef drops a
# default line:
#
#     $redis->conf_block(redis_down => 'fail')
#     $redis->conf_block(ca_file => $redis->wrong_ca_file)
#     $redis->conf_block(password => undef, password_file => '/p')
sub conf_block {
    my ($self, @lines) = @_;

    my $name = 'fleet';
    my @given;
    while (@lines) {
        my ($k, $v) = splice @lines, 0, 2;
        if ($k eq 'name') {
            $name = $v;
            next;
        }
        push @given, [ $k, $v ];
    }
    my %given = map { $_->[0] => 1 } @given;

    my @default = ([ server => $self->server ]);
    push @default, [ tls => 'on' ], [ ca_file => $self->ca_file ]
        if $self->{tls};
    push @default, [ user => $self->{user} ] if defined $self->{user};
    push @default, [ password => $self->{user_password} // $self->{password} ]
        if defined $self->{user} || defined $self->{password};

    my $block = "    sf_oauth_redis $name {\n";
    for my $l ((grep { !$given{ $_->[0] } } @default), @given) {
        next unless defined $l->[1];
        $block .= "        $l->[0] $l->[1];\n";
    }
    return $block . "    }\n";
}

# -- the fleet -------------------------------------------------------------------

# Writes the fleet key (or CONTENT) into NODE's directory as NAME, mode
# 0600; returns its path.
sub write_key {
    my ($node, $name, $content) = @_;

    my $path = $node->dir . '/' . ($name // 'state.key');
    open my $fh, '>', $path or die "$path: $!";
    print $fh $content // $FLEET_KEY;
    close $fh;
    chmod 0600, $path;

    return $path;
}

# Makes the nodes of a fleet: SfTest objects, the first with the mock
# Salesforce (started here, mock_args given), the others with mock_of the
# first; each its own directory, port, zone and 2 workers, the same key
# file content, the configuration
#
#     sf_oauth_redis fleet { ...conf_block(redis => [...]) }
#     sf_oauth_zone zone=sf:1m key=DIR/state.key redis=fleet ZONE_EXTRA;
#     sf_oauth_credential crm { ...credential => {...} }
#
# and (unless start => 0) started.  Options: n (3), redis (the RedisTest),
# redis_conf (an arrayref for conf_block, or a sub NODE_INDEX -> arrayref),
# mock_args, credential (a hashref of credential() options), zone_extra,
# zone_name (the zone's name, "sf"), key (the key file's content), first (an SfTest to be node 1, its mock
# already started), start.  Returns the list of nodes.
sub fleet {
    my (%opt) = @_;

    my $n = $opt{n} // 3;
    my $redis = $opt{redis};
    my @nodes;

    my $first = $opt{first};
    if (!$first) {
        $first = SfTest->new(mock_args => $opt{mock_args} || []);
        $first->start_mock;
    }
    push @nodes, $first;
    push @nodes, SfTest->new(mock_of => $first) for 2 .. $n;

    for my $i (0 .. $#nodes) {
        configure_node($nodes[$i], %opt, index => $i);
    }

    if ($opt{start} // 1) {
        $_->start for @nodes;
    }

    return @nodes;
}

# Writes NODE's configuration as fleet() does (options of fleet, and index).
sub configure_node {
    my ($node, %opt) = @_;

    my $redis = $opt{redis};
    my $rc = $opt{redis_conf} || [];
    $rc = $rc->($opt{index} // 0) if ref $rc eq 'CODE';

    my $key = write_key($node, 'state.key', $opt{key});
    my $zname = $opt{zone_name} // 'sf';
    my $zone = "zone=$zname:1m key=$key redis=fleet"
             . ($opt{zone_extra} ? " $opt{zone_extra}" : '');

    $node->simple_conf(
        http_pre => $redis->conf_block(@$rc),
        zone_params => $zone,
        ($zname ne 'sf' ? (zone => $zname) : ()),
        %{ $opt{credential} || {} },
    );

    return $node;
}

# The "redis" object of a node's credential in sf_oauth_info (undef if
# there is none, or no answer).
sub node_redis {
    my ($node, $name) = @_;

    my $c = $node->cred_info($name) or return undef;
    return ref $c->{redis} eq 'HASH' ? $c->{redis} : undef;
}

# Waits until every worker of every node in NODES is connected to Redis,
# up to SECONDS (times SfTest::time_scale); true when they are.
# sf_oauth_info tells the view of the worker that answered it, and
# reuseport hands each connection to either worker: a node counts once it
# said "connected" 12 times in a row (a worker not connected yet is missed
# with a chance of 1 in 4096).  One worker may reconnect up to a second
# after the other (the reconnect backoff).
sub all_connected {
    my ($seconds, @nodes) = @_;

    my %streak;

    return wait_for($seconds, sub {
        for my $node (@nodes) {
            while (($streak{$node} // 0) < 12) {
                my $r = node_redis($node);
                if (!$r || !$r->{connected}) {
                    $streak{$node} = 0;
                    return 0;
                }
                $streak{$node}++;
            }
        }
        return 1;
    });
}

# SfTest::wait_for: polls COND every 50 ms for up to SECONDS (scaled).
sub wait_for { SfTest::wait_for(@_) }

# Waits until every worker of every node of NODES is connected to Redis
# at ADDR ("127.0.0.1:PORT" in sf_oauth_info's "primary"), as
# all_connected does; true when they are.
sub all_connected_to {
    my ($seconds, $addr, @nodes) = @_;

    my %streak;

    return wait_for($seconds, sub {
        for my $node (@nodes) {
            while (($streak{$node} // 0) < 12) {
                my $r = node_redis($node);
                if (!$r || !$r->{connected} || ($r->{primary} // '') ne $addr) {
                    $streak{$node} = 0;
                    return 0;
                }
                $streak{$node}++;
            }
        }
        return 1;
    });
}

# -- Sentinel ----------------------------------------------------------------------

# A primary, a replica of it (--replicaof) and N sentinels (1 to 3,
# RedisTest::Sentinel) monitoring it as MASTER ("mymaster"), each on a
# free port with its files in DIR; the sentinels with short
# down-after-milliseconds and failover-timeout, so that a SENTINEL FAILOVER
# ends in a second or two.  Waits until the replica is in sync and every
# sentinel knows it (a failover needs a good replica).  Options:
# sentinels (2), replicas (1 to 3: 1), quorum (1), down_after (the
# sentinels' down-after-milliseconds, 1000), master, sentinel_password
# (the sentinels' requirepass),
# tls (every server and sentinel on TLS only, with the primary's CA).
# Returns a hashref: primary, replica (the first), replicas, sentinels
# (arrayrefs), master.
sub sentinel_group {
    my (%opt) = @_;

    my $dir = $opt{dir} or die 'sentinel_group needs dir';
    my $master = $opt{master} // 'mymaster';

    my $tls = $opt{tls};
    my $primary = RedisTest->new(dir => $dir, tag => 'a', tls => $tls,
                                 extra => $tls ? [ '--tls-replication', 'yes' ]
                                               : []);
    $primary->start;
    my @shared = $tls ? (tls => 1, tls_dir => $primary->tls_dir) : ();
    my @replicas = map {
        RedisTest->new(dir => $dir, tag => $_, @shared,
                       extra => [ '--replicaof', '127.0.0.1', $primary->port,
                                  $tls ? ('--tls-replication', 'yes') : () ])
            ->start
    } ('b', 'c', 'd')[0 .. ($opt{replicas} // 1) - 1];
    my $replica = $replicas[0];

    SfTest::wait_event(10, 'the replicas in sync', sub {
        !grep {
            ($_->stats('replication', 'master_link_status') // '') ne 'up'
        } @replicas
    });

    my @sentinels = map {
        RedisTest::Sentinel->new(dir => $dir, tag => $_, master => $master,
                                 primary => $primary, @shared,
                                 quorum => $opt{quorum},
                                 down_after => $opt{down_after},
                                 password => $opt{sentinel_password})->start
    } 1 .. ($opt{sentinels} // 2);

    my $group = { primary => $primary, replica => $replica,
                  replicas => \@replicas, sentinels => \@sentinels,
                  master => $master };
    sentinels_know($group, 20);

    return $group;
}

# Waits until every sentinel of GROUP lists every replica of GROUP, up to
# SECONDS (scaled), or dies saying so.
sub sentinels_know {
    my ($group, $seconds) = @_;

    my $m = $group->{master};
    SfTest::wait_event($seconds, 'every sentinel knows the replicas', sub {
        for my $s (@{ $group->{sentinels} }) {
            my $out = $s->cli('SENTINEL', 'replicas', $m) // '';
            return 0 if grep { $out !~ /\b\Q${\ $_->port }\E\b/ }
                        @{ $group->{replicas} };
        }
        return 1;
    });
}

# "sentinel 127.0.0.1:P1 127.0.0.1:P2;" for an sf_oauth_redis block
sub sentinel_addrs {
    my ($group) = @_;

    return join ' ', map { '127.0.0.1:' . $_->port } @{ $group->{sentinels} };
}

# SENTINEL FAILOVER on the first sentinel, then waits until every sentinel
# names another server, and that server says ROLE master, as
# sentinel_follow does, asking again on a miss.  Returns the new primary
# (a RedisTest), and the group's primary and replicas are swapped.
sub sentinel_failover {
    my ($group) = @_;

    return sentinel_follow($group, sub { sentinel_ask($group) }, undef,
                           again => sub { sentinel_ask($group) });
}

# SENTINEL FAILOVER asked of the first sentinel of GROUP: what it said, OK
# or the refusals that a later try may not meet (INPROG: one runs,
# NOGOODSLAVE: no replica looks well yet); dies on anything else.
sub sentinel_ask {
    my ($group) = @_;

    my $r = $group->{sentinels}[0]->cli('SENTINEL', 'FAILOVER',
                                        $group->{master}) // '';
    die "SENTINEL FAILOVER: $r\n"
        unless $r eq 'OK' || $r =~ /INPROG|NOGOODSLAVE/;
    return $r;
}

# A failover of GROUP: runs TRIGGER (SENTINEL FAILOVER, or the primary
# killed), waits until every sentinel names one of the replicas, and that
# one says ROLE master; then the group's primary is that one, its replicas
# the others (the old primary among them, even if it is down).  Returns
# the new primary.
#
# The wait: SECONDS (20, scaled); or, with again => CODE, up to 5 tries of
# 20 s each (Sentinel runs natively: not scaled), CODE run after each miss
# (it asks for the failover again: not TRIGGER, which may do more).  Once
# under make test-valgrind no sentinel named the replica in 200 s, and
# nothing said why: Sentinel aborts a failover whose replica it does not
# see promoted within the failover-timeout (2 s here:
# -failover-abort-slave-timeout, or -failover-abort-no-good-slave when
# the replica looks unwell).  Each miss shows the sentinels' failover lines.
sub sentinel_follow {
    my ($group, $trigger, $seconds, %opt) = @_;

    my $old = $group->{primary};
    my $m = $group->{master};
    my @replicas = @{ $group->{replicas} || [ $group->{replica} ] };
    my %by_port = map { $_->port => $_ } @replicas;
    my $new;

    my $named = sub {
        my %named;
        for my $s (@{ $group->{sentinels} }) {
            my $out = $s->cli('SENTINEL', 'get-master-addr-by-name', $m)
                      // '';
            my ($port) = $out =~ /(\d+)\s*\z/ or return 0;
            $named{$port} = 1;
        }
        return 0 unless keys %named == 1;
        $new = $by_port{ (keys %named)[0] } or return 0;
        return 1;
    };

    $trigger->();

    if (my $again = $opt{again}) {
        my $done;

        for my $try (1 .. 5) {
            my $end = Time::HiRes::time() + 20;
            until (($done = $named->()) || Time::HiRes::time() > $end) {
                Time::HiRes::sleep(0.1);
            }
            last if $done;

            my $said = $try < 5 ? 'asked again: ' . $again->() : 'the last';
            Test::More::diag("failover, try $try: no sentinel named a new "
                             . "primary in 20 s ($said). The sentinels' "
                             . "failover lines:\n"
                             . join '', map {
                                 my @l = grep { /failover|switch|abort|odown/ }
                                         split /^/, $_->log;
                                 @l[-List::Util::min(12, scalar @l) .. -1];
                             } @{ $group->{sentinels} });
        }
        die "gave up waiting: the sentinels name a new primary did not "
            . "happen in 5 tries\n" unless $done;

    } else {
        SfTest::wait_event($seconds // 20, 'the sentinels name a new primary',
                           $named);
    }

    SfTest::wait_event(10, 'the new primary says ROLE master', sub {
        ($new->cli('ROLE') // '') =~ /^master/
    });

    $group->{primary} = $new;
    $group->{replicas} = [ $old, grep { $_ != $new } @replicas ];
    $group->{replica} = $group->{replicas}[0];

    return $new;
}

sub sentinel_finish {
    my ($group) = @_;

    my %seen;
    $_->stop for @{ $group->{sentinels} };
    $_->stop for grep { !$seen{$_}++ } @{ $group->{replicas} || [] },
                                       $group->{replica}, $group->{primary};
}


package RedisTest::Sentinel;

# A redis-server --sentinel of the test's, in the foreground, on a free
# port, with its own sentinel.conf in DIR/sentinelTAG (sentinel rewrites
# it): never the system's redis-sentinel service.  cli() as RedisTest's.

use strict;
use warnings;

use File::Path qw(make_path);
use List::Util ();
use POSIX qw(:sys_wait_h);
use Time::HiRes qw(sleep);

our @ISA = ('RedisTest');

sub new {
    my ($class, %opt) = @_;

    my $self = bless {
        dir => "$opt{dir}/sentinel" . ($opt{tag} // ''),
        port => SfTest::free_port(),
        password => $opt{password},
        tls => $opt{tls},
        tls_dir => $opt{tls_dir},
        extra => [],
        subs => [],
    }, $class;

    make_path($self->{dir});

    my $p = $opt{primary};
    open my $fh, '>', "$self->{dir}/sentinel.conf" or die "$self->{dir}: $!";
    print $fh "port $self->{port}\n", "bind 127.0.0.1\n",
              "daemonize no\n", "dir $self->{dir}\n",
              "sentinel monitor $opt{master} 127.0.0.1 ${\ $p->port } "
                  . ($opt{quorum} // 1) . "\n",
              "sentinel down-after-milliseconds $opt{master} "
                  . ($opt{down_after} // 1000) . "\n",
              "sentinel failover-timeout $opt{master} 2000\n",
              "sentinel parallel-syncs $opt{master} 1\n";
    print $fh "requirepass $opt{password}\n" if defined $opt{password};
    if ($self->{tls}) {
        my $d = $self->tls_dir;
        print $fh "port 0\n", "tls-port $self->{port}\n",
                  "tls-cert-file $d/server.crt\n",
                  "tls-key-file $d/server.key\n",
                  "tls-ca-cert-file $d/ca.crt\n",
                  "tls-auth-clients no\n", "tls-replication yes\n";
    }
    close $fh;

    return $self;
}

sub server_args {
    my ($self) = @_;

    return ("$self->{dir}/sentinel.conf", '--sentinel');
}

package RedisTest;

# The token requests that each node made so far, by port.
sub token_counts {
    my (@nodes) = @_;

    return { map { $_->port => ((($_->cred_info || {})->{token_requests})
                                // 0) } @nodes };
}

# Waits until every node that made a token request since "before" (from
# token_counts) gave the load "n" more 2xx answers: its requests held for
# that token request were replayed and answered.
sub refresher_served {
    my ($load, $before, $n, $what, @nodes) = @_;

    my %from = map { $_->port => $load->ok_from($_->port) }
               grep { ((($_->cred_info || {})->{token_requests}) // 0)
                      > ($before->{ $_->port } // 0) } @nodes;

    return SfTest::wait_event(30, $what, sub {
        !grep { $load->ok_from($_) < $from{$_} + $n } keys %from
    });
}

# Waits until the nodes of NODES agree with Redis, up to SECONDS (times
# SfTest::time_scale), or dies saying so: on every node no token waits to
# be written back to Redis ("unsynced" false), and every node knows the
# same fleet generation, 1 or more (the fleet's record).  Those are the
# node's, in its zone: any worker's answer tells them.
sub all_synced {
    my ($seconds, @nodes) = @_;

    my @seen;
    return SfTest::wait_event($seconds, 'every node in step with Redis ('
                              . 'unsynced false, one fleet generation)', sub {
        @seen = map { node_redis($_) } @nodes;
        return 0 if grep { !$_ || $_->{unsynced} } @seen;
        my %gen = map { $_->{fleet_generation} => 1 } @seen;
        return keys %gen == 1 && (keys %gen)[0] >= 1;
    });
}

# A GET of PATH from NODE in a child, waited for up to 90 s (scaled): a
# sub that waits for the child and gives {status, auth} (auth: the
# Authorization the mock's echo saw, '' if none).
my $bg = 0;

sub bg_get {
    my ($node, $path) = @_;

    my $file = $node->dir . "/bg.$$." . ++$bg;
    my $kid = fork() // die "fork: $!";
    if ($kid == 0) {
        # never dies: the child must not run the test's destructors
        eval {
            my $r = $node->get($path,
                               timeout => 90 * SfTest::time_scale());
            my $j = ref $r->{json} eq 'HASH' ? $r->{json} : {};
            open my $fh, '>', $file or die;
            print $fh ($r->{status} // 0), ' ', $j->{authorization} // '';
            close $fh;
        };
        POSIX::_exit(0);
    }

    return sub {
        waitpid($kid, 0);
        open my $fh, '<', $file or return { status => 0, auth => '' };
        my ($status, $auth) = split / /, scalar(<$fh>) // '', 2;
        return { status => $status || 0, auth => $auth // '' };
    };
}

# "2 x 200, 1 x 502": how many times each value of the list came.
sub tally {
    my %n;
    $n{$_}++ for @_;
    return join ', ', map { "$n{$_} x $_" } sort keys %n;
}

# Checks, from the stats of the fleet's mock (FIRST, the node that started
# it), that no rotated-out refresh token was presented: no "reuse" in the
# mock's log of refresh grants, and the live refresh token is the last one
# it issued (the mock revoked nothing); and that every token request got
# a token, but UNANSWERED (0) that the mock held.
sub no_reuse {
    my ($first, $what, $unanswered) = @_;

    my $s = $first->stats;
    my @reuse = grep { $_->[1] ne 'ok' } @{ $s->{refresh_log} || [] };
    is(scalar @reuse, 0, "$what: every refresh grant presented the live "
                         . 'refresh token')
        or diag(explain $s->{refresh_log});
    is_deeply($s->{valid_refresh_tokens}, [ $s->{issued_refresh_tokens}[-1] ],
              "$what: no reuse of a rotated-out refresh token (the mock "
              . 'revoked nothing)');
    is($s->{token_requests} - $s->{token_ok}, $unanswered // 0,
       "$what: every token request succeeded"
       . ($unanswered ? " but the $unanswered held" : ''));
}

# The end of a fleet test: finish (stop, and check the error log of) each
# node of NODES, the last first, then, with REDIS, stop it and check that
# it was running until the end.
sub finish_all {
    my ($redis, @nodes) = @_;

    $_->finish for reverse @nodes;
    ok($redis->finish, 'redis-server was running until the end') if $redis;
}

# The pid in a lease owner string "hostname:pid:random" (undef if none).
sub lease_pid {
    my ($owner) = @_;

    return undef unless defined $owner && length $owner;
    my @f = split /:/, $owner;
    return @f >= 3 && $f[-2] =~ /^\d+$/ ? $f[-2] : undef;
}

# The node (of NODES) one of whose processes has PID.
sub node_of_pid {
    my ($pid, @nodes) = @_;

    for my $node (@nodes) {
        return $node if grep { $_ == $pid } $node->worker_pids,
                                             $node->{nginx_pid} // ();
    }
    return undef;
}

sub DESTROY {
    my ($self) = @_;

    local $?;
    $self->unsubscribe_all;
    $self->stop;
}

sub finish {
    my ($self) = @_;

    $self->unsubscribe_all;
    my $was = $self->running;
    $self->stop;
    return $was;
}

# -- steady load in the background -------------------------------------------------

package RedisTest::Load;

# Requests to each node, one every INTERVAL seconds per node (each node
# its own child process, so a slow answer of one does not hold the
# others), until stop.  stop returns the results: hashrefs of t (time
# sent), node (index), status (0: no answer), oauth (X-SF-OAuth-Status),
# took (seconds).  A request that gets no answer within TIMEOUT seconds
# (timeout =>; by default 30 times SfTest::time_scale, longer than a
# credential's timeout that a test scales so: a request may wait that
# long for a token) is a status 0.
#
#     my $load = RedisTest::Load->start([$n1, $n2, $n3], interval => 0.05);
#     ...
#     my @r = $load->stop;

use HTTP::Tiny;
use POSIX ();
use Time::HiRes qw(sleep time);

sub start {
    my ($class, $nodes, %opt) = @_;

    my $interval = $opt{interval} // 0.05;
    my $path = $opt{path} // '/services/data/v59.0/load';
    my $dir = $nodes->[0]->dir;
    my $self = bless { kids => [] }, $class;

    for my $i (0 .. $#$nodes) {
        my $port = $nodes->[$i]->port;
        my $file = "$dir/load.$i.$$." . int(time * 1000);
        my $parent = $$;
        my $pid = fork() // die "fork: $!";

        if ($pid == 0) {
            RedisTest::die_with_parent($parent);
            my $stop = 0;
            $SIG{TERM} = sub { $stop = 1 };
            open my $fh, '>', $file or POSIX::_exit(1);
            my $old = select $fh;
            $| = 1;
            select $old;
            my $ua = HTTP::Tiny->new(timeout => $opt{timeout}
                                                // 30 * SfTest::time_scale(),
                                     keep_alive => 0);
            while (!$stop) {
                my $t0 = time;
                my $r = $ua->get("http://127.0.0.1:$port$path");
                my $status = $r->{status} == 599 ? 0 : $r->{status};
                printf $fh "%.3f %d %s %.3f\n", $t0, $status,
                       $r->{headers}{'x-sf-oauth-status'} // '-',
                       time - $t0;
                my $left = $interval - (time - $t0);
                sleep $left if $left > 0 && !$stop;
            }
            close $fh;
            POSIX::_exit(0);
        }

        push @{ $self->{kids} }, { pid => $pid, file => $file, node => $i };
    }

    return $self;
}

# The results so far, as stop gives them, the load going on.
sub results {
    my ($self) = @_;

    my @r;
    for my $k (@{ $self->{kids} || [] }) {
        push @r, read_results($k);
    }

    return sort { $a->{t} <=> $b->{t} } @r;
}

# Waits until every node answered 200 to a request sent after T (a
# time()), up to SECONDS (scaled), or dies saying so; with ANY, an answer
# of any status (not 0: none) will do.
sub wait_all_ok {
    my ($self, $seconds, $t, $what, $any) = @_;

    my $n = @{ $self->{kids} || [] };
    $what //= ($any ? 'an answer' : 'a 200') . ' from every node';
    return SfTest::wait_event($seconds, $what, sub {
        my %ok = map { $_->{node} => 1 }
                 grep { $_->{t} > $t
                        && ($any ? $_->{status} : $_->{status} == 200) }
                 $self->results;
        return keys %ok == $n;
    });
}

sub read_results {
    my ($k) = @_;

    my @r;
    open my $fh, '<', $k->{file} or return ();
    while (<$fh>) {
        # a line being written has no newline yet
        last unless /\n\z/;
        my ($t, $status, $oauth, $took) = split;
        push @r, { t => $t, node => $k->{node}, status => $status,
                   oauth => $oauth, took => $took };
    }
    close $fh;

    return @r;
}

sub stop {
    my ($self) = @_;

    my @r;
    for my $k (@{ delete $self->{kids} || [] }) {
        kill 'TERM', $k->{pid};
        waitpid($k->{pid}, 0);
        open my $fh, '<', $k->{file} or next;
        while (<$fh>) {
            my ($t, $status, $oauth, $took) = split;
            push @r, { t => $t, node => $k->{node}, status => $status,
                       oauth => $oauth, took => $took };
        }
        close $fh;
        unlink $k->{file};
    }

    return sort { $a->{t} <=> $b->{t} } @r;
}

sub DESTROY {
    my ($self) = @_;

    local $?;
    for my $k (@{ $self->{kids} || [] }) {
        kill 'TERM', $k->{pid};
        waitpid($k->{pid}, 0);
    }
}

# -- many keepalive connections in the background ----------------------------------

package RedisTest::Conns;

# CONNS keepalive connections to the nodes (t/lib/conns_load.py, an
# asyncio loop of its own), spread over them, each sending a request,
# reading the whole answer and resting INTERVAL seconds, until stop.
# stats (any time) and stop (the last) return its counts: a hashref of
# open (connections open now), status ({ "200" => n, ... }), errors
# (connections reset, closed before an answer, or an answer slower than
# TIMEOUT), error_kinds, last (the last 20 bad ones).
#
#     my $c = RedisTest::Conns->start([@nodes], conns => 500, interval => 1);
#     $c->wait_open(500, 10);
#     my $s = $c->stop;   # $s->{status}{200}

use strict;
use warnings;
no warnings qw(exec);

use JSON::PP ();
use POSIX ();
use Time::HiRes qw(sleep time);

sub start {
    my ($class, $nodes, %opt) = @_;

    my $file = $nodes->[0]->dir . "/conns.$$." . int(time * 1000);
    my @args = ('python3', 't/lib/conns_load.py',
                '--ports', join(',', map { $_->port } @$nodes),
                '--conns', $opt{conns} // 500,
                '--interval', $opt{interval} // 1,
                '--timeout', $opt{timeout} // 30,
                '--path', $opt{path} // '/services/data/v59.0/load',
                '--out', $file);
    my $parent = $$;
    my $pid = fork() // die "fork: $!";
    if ($pid == 0) {
        RedisTest::die_with_parent($parent);
        open STDOUT, '>>', "$file.log";
        open STDERR, '>&', \*STDOUT;
        exec @args;
        POSIX::_exit(127);
    }

    return bless { pid => $pid, file => $file }, $class;
}

sub stats {
    my ($self) = @_;

    open my $fh, '<', $self->{file} or return undef;
    local $/;
    my $json = <$fh>;
    close $fh;
    return eval { JSON::PP::decode_json($json) };
}

# Waits until N connections are open and every one answered once (the
# 200s count N or more), up to SECONDS (scaled), or dies saying so.
sub wait_open {
    my ($self, $n, $seconds) = @_;

    SfTest::wait_event($seconds, "$n connections open and answered", sub {
        my $s = $self->stats or return 0;
        return $s->{open} >= $n && ($s->{status}{200} // 0) >= $n;
    });
}

# The number of 200s so far (0 before the first count).
sub ok_count {
    my ($self) = @_;

    my $s = $self->stats or return 0;
    return $s->{status}{200} // 0;
}

# The number of 2xx answers so far from the node on "port".
sub ok_from {
    my ($self, $port) = @_;

    my $s = $self->stats or return 0;
    return $s->{ok_by_port}{$port} // 0;
}

# SIGTERM; waits for the answers in flight; the final counts.
sub stop {
    my ($self) = @_;

    my $pid = delete $self->{pid} or return $self->stats;
    kill 'TERM', $pid;
    waitpid($pid, 0);
    my $s = $self->stats;
    unlink $self->{file}, "$self->{file}.log"
        if $s && $s->{done};
    return $s;
}

# "1234 x 200" or "1200 x 200, 3 x 502, 2 errors (reset)": every status
# counted, and the errors.
sub tally {
    my ($s) = @_;

    return 'no counts' unless $s;
    my $t = join ', ', map { "$s->{status}{$_} x $_" }
                       sort keys %{ $s->{status} || {} };
    $t .= ", $s->{errors} errors (" . join(', ', map {
        "$_: $s->{error_kinds}{$_}" } sort keys %{ $s->{error_kinds} }) . ')'
        if $s->{errors};
    return $t;
}

sub DESTROY {
    my ($self) = @_;

    local $?;
    if (my $pid = delete $self->{pid}) {
        kill 'TERM', $pid;
        waitpid($pid, 0);
    }
}


1;
