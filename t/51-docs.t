#!/usr/bin/perl

# The docs say what the code has: every directive of the module's command
# tables (the http ones, and the parameters of the sf_oauth_credential and
# sf_oauth_redis blocks) has a heading and a Syntax / Default / Context
# block in docs/reference.md, with the contexts its table allows; every
# variable, sf_oauth_info field and metric that the module defines is
# there; every relative link of README.md, HACKING.md and docs/*.md points
# at a file that exists and, with an #anchor, at a heading of that file.
# No nginx is started.

use strict;
use warnings;

use File::Basename qw(basename dirname);
use File::Spec;
use Cwd qw(abs_path);
use Test::More;

my $root = abs_path(dirname(__FILE__) . '/..');

sub slurp {
    my ($f) = @_;

    open my $fh, '<', $f or die "$f: $!";
    local $/;
    my $s = <$fh>;
    close $fh;
    return $s;
}

my @c_files = ("$root/ngx_http_sf_oauth_module.c", glob("$root/src/*.c"));
ok(-f "$root/docs/reference.md", 'docs/reference.md exists');
my $reference = -f "$root/docs/reference.md"
                ? slurp("$root/docs/reference.md") : '';

# markdown without its fenced code blocks: a "# comment" in a shell or
# nginx example is no heading, a [x](y) in one no link
sub prose {
    my ($md) = @_;

    $md =~ s/^[ ]{0,3}(```|~~~).*?^[ ]{0,3}\1[^\n]*$//msg;
    return $md;
}

# -- the directives ---------------------------------------------------------

# the context of a block's parameters is the block; the module's own
# directives say theirs in their flags
my %block = (
    'ngx_http_sf_oauth_credential.c' => 'sf_oauth_credential',
    'ngx_http_sf_oauth_redis_conf.c' => 'sf_oauth_redis',
);
my @contexts = ([ NGX_HTTP_MAIN_CONF => 'http' ],
                [ NGX_HTTP_SRV_CONF  => 'server' ],
                [ NGX_HTTP_LOC_CONF  => 'location' ]);

my @directives;    # [ name, context, table ]

for my $f (@c_files) {
    my $s = slurp($f);
    my $file = basename($f);

    while ($s =~ /ngx_command_t\s+(\w+)\[\]\s*=\s*\{(.*?)ngx_null_command/sg) {
        my ($table, $body) = ($1, $2);
        my $n = 0;

        while ($body =~ /\{\s*ngx_string\("(\w+)"\),\s*([^,]+),/g) {
            my ($name, $flags) = ($1, $2);
            my $context = $block{$file};

            if (!defined $context) {
                $context = join ', ', map { $_->[1] }
                                      grep { $flags =~ /\b$_->[0]\b/ }
                                      @contexts;
            }

            ok($context ne '', "$file: $table: $name has a context")
                or next;
            push @directives, [ $name, $context, "$file: $table" ];
            $n++;
        }

        ok($n > 0, "$file: $table: its directives are read");
    }
}

# every block the module defines has its parameters' table here
for my $file (sort keys %block) {
    ok((grep { $_->[2] =~ /^\Q$file\E:/ } @directives),
       "the parameters of $block{$file} are read from $file");
}
ok((grep { $_->[0] eq 'sf_oauth' } @directives),
   'the module\'s own directives are read');

# each block: a heading that names it, then, past blank lines, the three
# lines (Syntax may run on, indented further)
my %documented;    # "name\tcontext" => number of blocks

{
    my $md = prose($reference);

    while ($md =~ /^\#{2,6}[ ]+`?(\w+)`?[ ]*\n
                   (?:[ ]*\n)*
                   [ ]{4}Syntax:[ ]+(\w+)[^\n]*\n
                   (?:[ ]{5,}[^\n]*\n)*
                   [ ]{4}Default:[ ]+\S[^\n]*\n
                   [ ]{4}Context:[ ]+([^\n]*?)[ ]*\n/mgx)
    {
        my ($heading, $syntax, $context) = ($1, $2, $3);

        is($syntax, $heading,
           "docs/reference.md: the Syntax under \"$heading\" is its own");
        $documented{"$syntax\t$context"}++;
    }
}

for my $d (@directives) {
    my ($name, $context, $table) = @$d;

    is($documented{"$name\t$context"}, 1,
       "docs/reference.md documents $name once, with Syntax, Default and "
       . "Context: $context ($table)");
}

# -- the variables ----------------------------------------------------------

my @variables;

for my $f (@c_files) {
    my $s = slurp($f);

    while ($s =~ /ngx_http_variable_t\s+\w+\[\]\s*=\s*\{
                  (.*?)ngx_http_null_variable/sgx)
    {
        my $body = $1;
        push @variables, $body =~ /\{\s*ngx_string\("(\w+)"\)/g;
    }
}

ok((grep { $_ eq 'sf_oauth_token' } @variables), 'the variables are read');

{
    my ($section) = $reference =~ /^## Variables\n(.*?)(?=^## )/ms;

    ok(defined $section, 'docs/reference.md has a section "Variables"');
    $section //= '';

    for my $v (@variables) {
        like($section, qr/^\| `\$\Q$v\E` \|/m,
             "docs/reference.md: the variables' table has \$$v");
    }
}

# -- sf_oauth_info's fields -------------------------------------------------

my %fields;

{
    my $s = slurp("$root/src/ngx_http_sf_oauth_status.c");

    $fields{$_} = 1 for $s =~ /\\"(\w+)\\":/g;
}

ok(keys %fields > 20, 'the fields of sf_oauth_info are read');

{
    my ($section) = $reference =~ /^## sf_oauth_info fields\n(.*?)(?=^## )/ms;

    ok(defined $section, 'docs/reference.md has "sf_oauth_info fields"');
    $section //= '';

    for my $field (sort keys %fields) {
        like($section, qr/`\Q$field\E`|"\Q$field\E":/,
             "docs/reference.md: sf_oauth_info fields: $field");
    }
}

# -- the metrics ------------------------------------------------------------

my @metrics;

{
    my $s = slurp("$root/src/ngx_http_sf_oauth_metrics.c");

    # name, type, its own label or NULL, the scopes that show it
    @metrics = $s =~ /\{\s*"(sf_oauth_\w+)",\s*"(counter|gauge|histogram)",
                      \s*(?:"(\w+)"|NULL),\s*NGX_HTTP_SF_OAUTH_S_(\w+),/gx;
}

ok(@metrics >= 4 * 10, 'the metrics table is read');

{
    my ($section) = $reference =~ /^## Metrics\n(.*?)(?=^## |\z)/ms;

    ok(defined $section, 'docs/reference.md has a section "Metrics"');
    $section //= '';

    my %scopes = (BOTH => 'default, `zone`', CREDENTIAL => 'default',
                  ZONE => '`zone`');

    while (my ($name, $type, $label, $scope) = splice @metrics, 0, 4) {
        my ($labels, $in) = $section
            =~ /^\| `\Q$name\E` \| \Q$type\E \| ([^|]*) \| ([^|]*) \|/m;
        ok(defined $labels,
           "docs/reference.md: the metrics' table has $name, a $type");
        $labels //= '';
        my @want = ($scope eq 'ZONE' ? () : 'credential', 'zone',
                    defined $label ? $label : (),
                    $type eq 'histogram' ? 'le' : ());
        is(join(',', $labels =~ /`(\w+)`/g), join(',', @want),
           "docs/reference.md: $name has the labels @want");
        is($in // '', $scopes{$scope} // $scope,
           "docs/reference.md: $name is in the scopes "
           . ($scopes{$scope} // $scope));
    }
}

# -- the links --------------------------------------------------------------

# a heading's anchor as GitHub makes it: lower case, no punctuation but
# "-" and "_", a "-" for each space; the second of a name gets "-1"
my %anchors;

sub anchors {
    my ($file) = @_;

    return $anchors{$file} if $anchors{$file};

    my (%seen, %a);

    for my $line (split /\n/, prose(slurp($file))) {
        next unless $line =~ /^[ ]{0,3}\#{1,6}[ ]+(.*?)[ ]*\#*[ ]*$/;

        my $text = $1;
        $text =~ s/\[([^\]]*)\]\([^)]*\)/$1/g;
        $text = lc $text;
        $text =~ s/[^\w\- ]//g;
        $text =~ s/ /-/g;

        my $n = $seen{$text}++;
        $a{$n ? "$text-$n" : $text} = 1;
    }

    return $anchors{$file} = \%a;
}

my @docs = grep { ok(-f $_, File::Spec->abs2rel($_, $root) . ' exists') }
           ("$root/README.md", "$root/HACKING.md", glob("$root/docs/*.md"));
my $links = 0;

ok(-f "$root/docs/$_", "docs/$_ exists")
    for qw(reference.md operations.md design.md guide-several-orgs.md
           guide-server-to-server.md guide-fleet.md guide-soap-bulk.md);

for my $doc (@docs) {
    my $md = prose(slurp($doc));
    my $name = File::Spec->abs2rel($doc, $root);

    $md =~ s/`[^`\n]*`//g;

    while ($md =~ /\]\(([^)\s]+)\)/g) {
        my $target = $1;

        next if $target =~ m{^[a-z][a-z0-9+.-]*:}i;    # http:, mailto:

        my ($path, $anchor) = $target =~ /^([^#]*)(?:#(.*))?$/;
        my $file = $path eq '' ? $doc
                   : File::Spec->rel2abs($path, dirname($doc));

        $links++;

        ok(-e $file, "$name: the link to $target: the file exists")
            or next;

        next unless defined $anchor;

        ok($file =~ /\.md$/ && anchors($file)->{$anchor},
           "$name: the link to $target: the heading exists");
    }
}

ok($links > 50, "the documents' links are read ($links)");

# the README stays the short way in: at most 300 lines (issue 19)
{
    my $n = () = slurp("$root/README.md") =~ /\n/g;
    cmp_ok($n, '<=', 300, "README.md has at most 300 lines ($n)");
}

done_testing();
