#!/usr/bin/perl

# make bench's script, without running it (it takes about 11 minutes and
# both CPUs): bench/bench.pl compiles; every environment variable it reads
# is described at its top; every path of its A/B rounds is among the ids
# that PATHS takes there, and each has (a) and (b) URLs; the targets of
# issue 21 are those of its paths; HACKING.md says how to run the parts
# left to BENCH=all.  No nginx is started.

use strict;
use warnings;

use File::Basename qw(dirname);
use Cwd qw(abs_path);
use Test::More;

my $root = abs_path(dirname(__FILE__) . '/..');
my $script = "$root/bench/bench.pl";

sub slurp {
    my ($f) = @_;
    open my $fh, '<', $f or die "$f: $!";
    local $/;
    return <$fh>;
}

my $out = `$^X -c $script 2>&1`;
is($?, 0, 'bench/bench.pl compiles') or diag($out);

my $src = slurp($script);
my ($head) = $src =~ /\A(.*?)\n\n(?:use |\z)/s;
ok($head, 'bench/bench.pl starts with a comment');

my %env = map { $_ => 1 } $src =~ /\$ENV\{(\w+)\}/g;
ok(%env, 'it reads environment variables');
for my $v (sort keys %env) {
    like($head, qr/\b\Q$v\E\b/, "$v is described at the top");
}

# the paths of the rounds, and the ids PATHS takes
my @paths = $src =~ /\{ id => '(\w+)', name => (?:'[^']+'|"[^"]+"),(.*?)\},?\n(?=\s*(?:\{ id|\);))/gs;
my %path;
while (my ($id, $rest) = splice @paths, 0, 2) {
    $path{$id} = { rest => $rest };
}
is_deeply([ sort keys %path ],
          [ sort qw(aa rest soap soapmiss soap64 soaphead bulk cometd cred redis) ],
          'the rounds have the A/A control and every family of issue 21');
my ($doc_ids) = $head =~ /PATHS \(.*?path ids:\s*#?\s*([\w,\s#]+?)\)/s;
$doc_ids //= '';
$doc_ids =~ s/[\s#]//g;
is_deeply([ sort split /,/, $doc_ids ], [ sort keys %path ],
          'PATHS documents exactly the path ids');
for my $id (sort keys %path) {
    like($path{$id}{rest}, qr/a_url => "[^"]+", b_url => "[^"]+"/,
         "$id: (a) and (b) URLs");
}

# issue 21's targets
my %target = (soap => 0.95, soap64 => 0.95, soaphead => 0.95, bulk => 0.97,
              cometd => 0.97, cred => 0.97, redis => 0.97);
for my $id (sort keys %target) {
    my ($t) = ($path{$id}{rest} // '') =~ /target => ([\d.]+)/;
    is($t, $target{$id}, "$id: target $target{$id}");
}
unlike($path{aa}{rest} // '', qr/target =>/, 'the A/A control has no target');

my $hacking = slurp("$root/HACKING.md");
like($hacking, qr/BENCH=all make bench/, 'HACKING.md: BENCH=all');
like($head, qr/BENCH=all/, 'bench.pl: BENCH=all at the top');

done_testing();
