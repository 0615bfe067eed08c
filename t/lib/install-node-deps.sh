#!/bin/sh
# Installs the Node.js packages that the tests use (jsforce, a real Bulk
# API 1.0 client for t/27-bulk.t) into build/node/node_modules, outside git.
# Needs node and npm; does nothing when the pinned version is there.
#
#   t/lib/install-node-deps.sh [ROOT]     ROOT: the repository (default: ..)
set -eu

root=${1:-$(cd "$(dirname "$0")/../.." && pwd)}
dir="$root/build/node"
version=3.10.16

if [ -f "$dir/node_modules/jsforce/package.json" ] &&
   grep -q "\"version\": \"$version\"" "$dir/node_modules/jsforce/package.json"
then
    exit 0
fi

command -v npm >/dev/null || { echo "$0: npm is missing" >&2; exit 1; }
mkdir -p "$dir"
cd "$dir"
[ -f package.json ] || echo '{"private": true}' > package.json
npm install --no-audit --no-fund --no-save --loglevel=error \
    "jsforce@$version"
