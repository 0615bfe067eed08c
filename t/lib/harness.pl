#!/usr/bin/perl

# make test's runner: t/*.t (or the files given) with TAP::Harness, as
# prove would, in two lanes:
#
#   - every test that starts its own nginx, mock and Redis on ports of its
#     own (SfTest::free_port holds each for the test's life) runs beside
#     others, TEST_JOBS at a time (default 4);
#   - the tests that install packages or build nginx (@SERIAL) run after
#     them, one at a time, alone.
#
# The parallel lane starts the slowest files first (longest processing
# time first), so that the run does not end with one long file alone: by
# the wall times of the last run, which it keeps in build/test-times (or
# build/test-times-valgrind under SF_TEST_VALGRIND), and for a file not
# timed yet by the list of files known to be slow (@SLOW, slowest first).
#
# Then the ten slowest files, with their wall times, and a closing line
# "N passed, N failed" (test files).  The exit status is 0 only when every
# file passed.

use strict;
use warnings;

use TAP::Harness;

my @SERIAL = qw(t/08-make-run.t t/33-deb.t t/35-nginx-src.t);

# the slowest files (under valgrind t/32 is among them), slowest first:
# the order for files that have no time of their own yet
my @SLOW = qw(t/41-revoked-twice-combos.t
              t/47-reload-refresh.t t/38-fleet-waiters.t
              t/41-revoked-twice.t t/40-fleet-reload.t
              t/61-fleet-sentinel-load.t t/61-reload-load.t
              t/32-fleet-failures.t t/61-fleet-dns-load.t);

my $TIMES = 'build/test-times' . ($ENV{SF_TEST_VALGRIND} ? '-valgrind' : '');

my $jobs = $ENV{TEST_JOBS} || 4;
my @files = @ARGV ? @ARGV : sort glob 't/*.t';

# the wall time of each file in the last run that timed it
my %last;
if (open my $fh, '<', $TIMES) {
    while (<$fh>) {
        my ($s, $f) = split;
        $last{$f} = $s if defined $f && $s =~ /^[\d.]+$/;
    }
    close $fh;
}

# a file's expected time: its last one; else a known slow file comes
# before every untimed one, in @SLOW's order, and after it the others
my %slow_rank = map { $SLOW[$_] => @SLOW - $_ } 0 .. $#SLOW;

sub expected {
    my ($f) = @_;
    return $last{$f} if defined $last{$f};
    return $slow_rank{$f} ? 1e6 + $slow_rank{$f} : -1;
}

my %serial = map { $_ => 1 } @SERIAL;
my $n = 0;
my %pos = map { $_ => $n++ } @files;
my @par = sort { expected($b) <=> expected($a) || $pos{$a} <=> $pos{$b} }
          grep { !$serial{$_} } @files;
my @seq = grep { $serial{$_} } @files;

my (%took, %bad, %notok);

print "parallel lane, slowest first: @par[0 .. ($#par < 4 ? $#par : 4)]"
      . (@par > 5 ? ' ...' : '') . "\n" if @par;

my $harness = TAP::Harness->new({
    jobs => $jobs,
    timer => 1,
    verbosity => $ENV{TEST_VERBOSE} ? 1 : 0,
    rules => { seq => [ { par => [ @par ] }, { seq => [ @seq ] } ] },
    callbacks => {
        # every "not ok" line of a file, said again at the end: a CI log
        # is often read from its tail
        made_parser => sub {
            my ($parser, $job) = @_;
            my $file = $job->[0];
            $parser->callback(test => sub {
                my ($t) = @_;
                push @{ $notok{$file} }, $t->as_string
                    if !$t->is_ok || $t->todo_passed;
            });
        },
        after_test => sub {
            my ($job, $parser) = @_;
            $took{ $job->[0] } = $parser->end_time - $parser->start_time;
            $bad{ $job->[0] } = 1 if $parser->has_problems;
        },
    },
});

my $agg = $harness->runtests(@par, @seq);

# keep the times for the next run's order (every file timed so far)
$last{$_} = $took{$_} for keys %took;
if (-d 'build' && open my $fh, '>', "$TIMES.tmp") {
    printf $fh "%.1f %s\n", $last{$_}, $_ for sort keys %last;
    close $fh;
    rename "$TIMES.tmp", $TIMES;
}

my @slow = (sort { $took{$b} <=> $took{$a} } keys %took)[0 .. 9];

print "\nthe ten slowest files (wall time, $jobs at a time):\n";
printf "  %7.1f s  %s\n", $took{$_}, $_ for grep { defined } @slow;

if (%notok) {
    print "\nthe tests that failed (and TODOs that passed):\n";
    for my $f (sort keys %notok) {
        print "  $f\n";
        print "    $_\n" for @{ $notok{$f} };
    }
}

my $failed = grep { $bad{$_} || !defined $took{$_} } @files;
my $passed = @files - $failed;

print "\n$passed passed, $failed failed\n";

exit($agg->all_passed ? 0 : 1);
