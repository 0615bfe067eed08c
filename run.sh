#!/usr/bin/env bash
# `make run`: nginx with the module and conf.example in the foreground.
#
# Without SF_CLIENT_ID it starts the bundled mock Salesforce and points the
# module at it.  With SF_CLIENT_ID, SF_CLIENT_SECRET and SF_REFRESH_TOKEN
# (and optionally SF_TOKEN_URL) it talks to a real org.
#
# PORT (default 8080) is where nginx listens, MOCK_PORT (default 8091) the
# mock's port.

set -euo pipefail

top=$(cd "$(dirname "$0")" && pwd)
run="$top/build/run"
port=${PORT:-8080}
mock_port=${MOCK_PORT:-8091}
mock_pid=

mkdir -p "$run"
chmod 755 "$top/build" "$run"

cleanup() {
    [ -n "${nginx_pid:-}" ] && kill -QUIT "$nginx_pid" 2>/dev/null || true
    [ -n "$mock_pid" ] && kill "$mock_pid" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 0' INT TERM

if [ -z "${SF_CLIENT_ID:-}" ]; then
    echo "make run: no SF_CLIENT_ID, using the mock Salesforce on port $mock_port"
    python3 "$top/t/lib/mock_sf.py" --port "$mock_port" &
    mock_pid=$!
    for _ in $(seq 50); do
        (: > "/dev/tcp/127.0.0.1/$mock_port") 2>/dev/null && break
        sleep 0.1
    done
    SF_TOKEN_URL="http://127.0.0.1:$mock_port/services/oauth2/token"
    SF_CLIENT_ID=3MVG9mock.client.id
    SF_CLIENT_SECRET=mock-client-secret-0123456789
    SF_REFRESH_TOKEN=5Aep861mockRefreshToken0123456789
else
    : "${SF_CLIENT_SECRET:?set SF_CLIENT_SECRET too}"
    : "${SF_REFRESH_TOKEN:?set SF_REFRESH_TOKEN too}"
    SF_TOKEN_URL=${SF_TOKEN_URL:-https://login.salesforce.com/services/oauth2/token}
    echo "make run: using the org behind $SF_TOKEN_URL"
fi

resolver=$(awk '/^nameserver/ { print $2; exit }' /etc/resolv.conf 2>/dev/null)
resolver=${resolver:-127.0.0.1}
case $resolver in *:*) resolver="[$resolver]" ;; esac

# the values go into nginx.conf between double quotes
for v in SF_TOKEN_URL SF_CLIENT_ID SF_CLIENT_SECRET SF_REFRESH_TOKEN; do
    case ${!v} in *'"'*|*'\'*|*'$'*|*[[:space:]]*)
        echo "make run: $v must not hold quotes, backslashes, \$ or spaces" >&2
        exit 1 ;;
    esac
done

esc() { printf '%s' "$1" | sed 's/[&|]/\\&/g'; }

umask 077
[ -s "$run/sf.key" ] || openssl rand -hex 32 > "$run/sf.key"
sed -e "s|@MODULE@|$top/build/ngx_http_sf_oauth_module.so|" \
    -e "s|@RUNDIR@|$run|g" \
    -e "s|@PORT@|$port|" \
    -e "s|@RESOLVER@|$resolver|" \
    -e "s|@SF_TOKEN_URL@|$(esc "$SF_TOKEN_URL")|" \
    -e "s|@SF_CLIENT_ID@|$(esc "$SF_CLIENT_ID")|" \
    -e "s|@SF_CLIENT_SECRET@|$(esc "$SF_CLIENT_SECRET")|" \
    -e "s|@SF_REFRESH_TOKEN@|$(esc "$SF_REFRESH_TOKEN")|" \
    "$top/conf.example" > "$run/nginx.conf"
umask 022

/usr/sbin/nginx -t -q -p "$run/" -c "$run/nginx.conf"

cat <<MSG
make run: nginx listens on 127.0.0.1:$port (logs in $run), Ctrl-C stops it.
Try:
    curl -i http://127.0.0.1:$port/services/data/v59.0/sobjects
    curl http://127.0.0.1:$port/sf_oauth_info
MSG

/usr/sbin/nginx -p "$run/" -c "$run/nginx.conf" -g 'daemon off;' &
nginx_pid=$!
wait "$nginx_pid"
