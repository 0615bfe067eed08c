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
# Then the ten slowest files, with their wall times, and a closing line
# "N passed, N failed" (test files).  The exit status is 0 only when every
# file passed.

use strict;
use warnings;

use TAP::Harness;

my @SERIAL = qw(t/08-make-run.t t/33-deb.t t/35-nginx-src.t);

my $jobs = $ENV{TEST_JOBS} || 4;
my @files = @ARGV ? @ARGV : sort glob 't/*.t';

my %serial = map { $_ => 1 } @SERIAL;
my @par = grep { !$serial{$_} } @files;
my @seq = grep { $serial{$_} } @files;

my (%took, %bad);

my $harness = TAP::Harness->new({
    jobs => $jobs,
    timer => 1,
    verbosity => $ENV{TEST_VERBOSE} ? 1 : 0,
    rules => { seq => [ { par => [ @par ] }, { seq => [ @seq ] } ] },
    callbacks => {
        after_test => sub {
            my ($job, $parser) = @_;
            $took{ $job->[0] } = $parser->end_time - $parser->start_time;
            $bad{ $job->[0] } = 1 if $parser->has_problems;
        },
    },
});

my $agg = $harness->runtests(@files);

my @slow = (sort { $took{$b} <=> $took{$a} } keys %took)[0 .. 9];

print "\nthe ten slowest files (wall time, $jobs at a time):\n";
printf "  %7.1f s  %s\n", $took{$_}, $_ for grep { defined } @slow;

my $failed = grep { $bad{$_} || !defined $took{$_} } @files;
my $passed = @files - $failed;

print "\n$passed passed, $failed failed\n";

exit($agg->all_passed ? 0 : 1);
