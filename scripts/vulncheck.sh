#!/usr/bin/env bash
# vulncheck.sh — govulncheck over every package (make vulncheck; make test
# runs it last). This project's machines reach the Go module proxy but not
# the vulnerability database's server, so the database is built here from the
# golang.org/x/vulndb module (its OSV files, with that module's own
# cmd/indexdb) and cached under ~/.cache/svcplane/vulndb/<version>.
#
# Environment:
#   VULNDB       golang.org/x/vulndb version (pinned below, so that CI
#                results change only when it is bumped; "latest" asks the
#                proxy for the newest)
#   GOVULNCHECK  golang.org/x/vuln version
# Standard-library findings depend on the Go that builds: the Makefile
# sets GOTOOLCHAIN for that reason.
set -euo pipefail
cd "$(dirname "$0")/.."
VULNDB=${VULNDB:-v0.0.0-20261105234957-e22db6528018}
GOVULNCHECK=${GOVULNCHECK:-v1.9.0}
if [ "$VULNDB" = latest ]; then
  VULNDB=$(go list -m -f '{{.Version}}' golang.org/x/vulndb@latest)
fi
cache=${XDG_CACHE_HOME:-$HOME/.cache}/svcplane/vulndb
db=$cache/$VULNDB
if [ ! -e "$db/index/db.json" ]; then
  echo "vulncheck: building the database from golang.org/x/vulndb@$VULNDB (once; about 2 minutes)"
  src=$(go mod download -json "golang.org/x/vulndb@$VULNDB" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [ -d "$src/data/osv" ] || { echo "vulncheck: golang.org/x/vulndb@$VULNDB has no data/osv" >&2; exit 1; }
  mkdir -p "$cache"
  tmp=$(mktemp -d "$cache/.build.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  go run "golang.org/x/vulndb/cmd/indexdb@$VULNDB" -vulns "$src/data/osv" -out "$tmp/db"
  mv "$tmp/db" "$db"
fi
echo "vulncheck: govulncheck $GOVULNCHECK, $(go version | cut -d' ' -f3), database golang.org/x/vulndb@$VULNDB ($(ls "$db/ID" | grep -c '\.json$') entries)"
go run "golang.org/x/vuln/cmd/govulncheck@$GOVULNCHECK" -db "file://$db" ./...
