#!/usr/bin/perl

# The source layout: calls between the files of src/ (and the module's
# own file) go one way, never in a circle, and every exported function is
# named after the file that defines it.  No nginx is started.

use strict;
use warnings;

use File::Basename qw(basename dirname);
use Cwd qw(abs_path);
use Test::More;

my $root = abs_path(dirname(__FILE__) . '/..');
my @files = (glob("$root/src/*.c"), "$root/ngx_http_sf_oauth_module.c");

my (%text, %defines, %owner);

for my $f (@files) {
    open my $fh, '<', $f or die "$f: $!";
    local $/;
    my $s = <$fh>;
    close $fh;

    (my $unit = basename($f)) =~ s/^ngx_http_sf_oauth_|\.c$//g;

    # comments and strings name functions without calling them
    $s =~ s{/\*.*?\*/}{}gs;
    $s =~ s{"(?:[^"\\\n]|\\.)*"}{""}g;
    $text{$unit} = $s;

    # a definition: the type on one line, "name(" at the start of the next
    while ($s =~ /^([^\n]*)\n(ngx_http_sf_oauth_\w+)\(/mg) {
        my ($type, $name) = ($1, $2);
        next if $type =~ /^static\b/ || $type =~ /[;{}]\s*$/;
        next if $type =~ /^\s/;
        $defines{$unit}{$name} = 1;
        $owner{$name} = $unit;
    }
}

ok(scalar(keys %owner) > 30, 'exported functions found: ' . keys %owner);

# every exported function is named after its file
for my $name (sort keys %owner) {
    my $unit = $owner{$name};
    (my $rest = $name) =~ s/^ngx_http_sf_oauth_//;
    ok($rest eq $unit || index($rest, "${unit}_") == 0,
       "$name is named after $unit.c");
}

# who calls whom
my %calls;

for my $unit (keys %text) {
    for my $name (keys %owner) {
        next if $owner{$name} eq $unit;
        $calls{$unit}{$owner{$name}} = 1
            if $text{$unit} =~ /\b\Q$name\E\b/;
    }
}

ok(exists $calls{handler}{refresh}, 'the handler asks the refresh');
ok(exists $calls{refresh}{client}, 'the refresh asks the client');

# no circle: a depth-first search finds no path back to where it began
for my $start (sort keys %calls) {
    my @stack = map { [$_, [$start, $_]] } keys %{ $calls{$start} };
    my %seen;
    my $circle;

    while (my $top = pop @stack) {
        my ($unit, $path) = @$top;
        if ($unit eq $start) {
            $circle = join ' -> ', @$path;
            last;
        }
        next if $seen{$unit}++;
        push @stack, map { [$_, [@$path, $_]] } keys %{ $calls{$unit} || {} };
    }

    ok(!defined $circle, "no circle through $start.c")
        or diag("circle: $circle");
}

ok(!exists $calls{client}{$_}, "the client calls no $_.c")
    for qw(refresh handler ahead store);

done_testing;
