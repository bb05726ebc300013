#!/usr/bin/env bash
# deploy/docker/pnn-grafana-password (compose's grafana-init): no default
# password ever; PNN_GRAFANA_PASSWORD wins; otherwise one random password,
# generated once, printed once, kept across runs; readable by Grafana's user.
#
# Usage: deploy_grafana_password_test.sh REPO
set -euo pipefail
SCRIPT="$1/deploy/docker/pnn-grafana-password"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
unset PNN_GRAFANA_PASSWORD

# 1. First run: a 24-character password, printed, world-readable.
file="$work/secrets/admin-password"
mkdir "$work/secrets"
sh "$SCRIPT" "$file" >"$work/out1" || fail "first run exited $?"
password=$(cat "$file")
[ "${#password}" -eq 24 ] || fail "password '$password' is not 24 characters"
[ "$password" != admin ] || fail "the password is the old default"
grep -q "generated Grafana's admin password: $password" "$work/out1" ||
  fail "the generated password is not printed: $(cat "$work/out1")"
[ "$(stat -c %a "$file")" = 444 ] || fail "mode $(stat -c %a "$file"), want 444"

# 2. Second run: the same password, not printed again.
sh "$SCRIPT" "$file" >"$work/out2" || fail "second run exited $?"
[ "$(cat "$file")" = "$password" ] || fail "the password changed on a rerun"
grep -q "keeping" "$work/out2" || fail "second run: $(cat "$work/out2")"
if grep -q "$password" "$work/out2"; then fail "rerun printed the password"; fi

# 3. Another volume: another password (random, not a constant).
mkdir "$work/other"
sh "$SCRIPT" "$work/other/admin-password" >/dev/null
[ "$(cat "$work/other/admin-password")" != "$password" ] ||
  fail "two volumes got the same password"

# 4. PNN_GRAFANA_PASSWORD replaces it, and is not echoed.
PNN_GRAFANA_PASSWORD='s3cret with space' sh "$SCRIPT" "$file" >"$work/out4"
[ "$(cat "$file")" = 's3cret with space' ] || fail "PNN_GRAFANA_PASSWORD not written"
if grep -q s3cret "$work/out4"; then fail "the chosen password was printed"; fi

# 5. A directory it cannot write: a clear error, no file.
if sh "$SCRIPT" "$work/missing/admin-password" 2>"$work/err5"; then
  fail "a missing directory was accepted"
fi
grep -q "not a writable directory" "$work/err5" || fail "error: $(cat "$work/err5")"
[ -z "$(ls "$work/secrets" | grep tmp || true)" ] || fail "temporary file left"
echo "ok: pnn-grafana-password"
