#!/usr/bin/perl

# The token endpoint's certificate is verified by default, hostname
# included; ca_file sets the trust store; ssl_verify off turns the check off
# with a warning.

use strict;
use warnings;

use lib 't/lib';
use SfTest;
use Test::More;

my $t = SfTest->new(mock_args => []);
my $dir = $t->dir;

# a self-signed certificate for 127.0.0.1, and one for another name
for my $c (['ip', 'IP:127.0.0.1'], ['name', 'DNS:salesforce.invalid']) {
    my ($name, $san) = @$c;
    system("openssl req -x509 -newkey rsa:2048 -nodes -keyout $dir/$name.key "
           . "-out $dir/$name.pem -days 2 -subj /CN=mock "
           . "-addext subjectAltName=$san >/dev/null 2>&1") == 0
        or die 'openssl failed';
}

sub tls_case {
    my ($name, $cert, $extra, $expect) = @_;

    $t->{mock_args} = ['--tls-cert', "$dir/$cert.pem",
                       '--tls-key', "$dir/$cert.key"];
    $t->start_mock;

    my $url = 'https://127.0.0.1:' . $t->mock_port . '/services/oauth2/token';
    $t->write_conf("    sf_oauth_zone zone=sf:1m;\n"
        . $t->credential(token_url => $url) =~ s/(    \}\n)$/$extra$1/r
        . <<'EOF');
    server {
        listen 127.0.0.1:%%PORT%%;
        location /services/ {
            sf_oauth crm;
            proxy_pass https://127.0.0.1:%%MOCK%%;
        }
    }
EOF
    truncate "$dir/error.log", 0;
    $t->start;

    my $r = $t->get('/services/data/v59.0/');

    if ($expect) {
        is($r->{status}, 502, "$name: refused");
        like($r->{json}{error_description} // '', $expect, "$name: says why")
            or diag($r->{content});
    } else {
        is($r->{status}, 200, "$name: 200") or diag($r->{content});
    }

    $t->stop;
    $t->stop_mock;
}

tls_case('self-signed, default verification', 'ip', '',
         qr/token request failed: SSL certificate problem: self.signed certificate/);

tls_case('self-signed, trusted with ca_file', 'ip',
         "        ca_file $dir/ip.pem;\n", undef);

tls_case('trusted, but for another host name', 'name',
         "        ca_file $dir/name.pem;\n",
         qr/token request failed: .*(certificate|subject alt).*127\.0\.0\.1/i);

tls_case('ssl_verify off', 'ip', "        ssl_verify off;\n", undef);
like($t->error_log, qr/\[warn\].*sf_oauth: credential "crm": ssl_verify is off, the token endpoint's certificate is not checked/,
     'ssl_verify off: warns in the error log at start');
like($t->slurp('stderr.log'), qr/\[warn\].*"ssl_verify off"/,
     'ssl_verify off: warns when the configuration is read');

$t->finish;

done_testing;
