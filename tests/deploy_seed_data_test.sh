#!/usr/bin/env bash
# deploy/docker/pnn-seed-data, the data-volume seeder of the image, compose
# (data-init) and Kubernetes (init containers): copies every data set once,
# keeps what is there, and is safe when several copies run at once.
#
# Usage: deploy_seed_data_test.sh REPO
set -euo pipefail
SEED="$1/deploy/docker/pnn-seed-data"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

# A source like the image's /usr/share/datasets: two data sets.
src="$work/src"
mkdir -p "$src/fashion-mnist" "$src/tiny"
head -c 200000 /dev/urandom >"$src/fashion-mnist/train-images-idx3-ubyte.gz"
echo labels >"$src/fashion-mnist/train-labels-idx1-ubyte.gz"
echo tiny >"$src/tiny/file"
export PNN_SEED_SOURCE="$src"

# 1. Empty volume: both copied, identical.
dest="$work/data1"
mkdir "$dest"
sh "$SEED" "$dest" >"$work/out1" || fail "first run exited $?"
diff -r "$src" "$dest" || fail "copy differs from the source"
grep -q "copied fashion-mnist" "$work/out1" || fail "no 'copied' message: $(cat "$work/out1")"

# 2. Second run: nothing changes, each data set reported as kept.
touch -d @0 "$dest/fashion-mnist/train-labels-idx1-ubyte.gz"
sh "$SEED" "$dest" >"$work/out2" || fail "second run exited $?"
[ "$(grep -c "exists, kept" "$work/out2")" -eq 2 ] || fail "second run: $(cat "$work/out2")"
[ "$(stat -c %Y "$dest/fashion-mnist/train-labels-idx1-ubyte.gz")" -eq 0 ] ||
  fail "an existing file was rewritten"

# 3. A data set a person put there is never overwritten.
dest="$work/data3"
mkdir -p "$dest/fashion-mnist"
echo mine >"$dest/fashion-mnist/README"
sh "$SEED" "$dest" >/dev/null || fail "run with existing data exited $?"
[ "$(ls "$dest/fashion-mnist")" = "README" ] || fail "existing data set was touched"
[ -f "$dest/tiny/file" ] || fail "the missing data set was not copied"

# 4. Eight seeders at once on one volume: one complete copy, no leftovers.
dest="$work/data4"
mkdir "$dest"
pids=()
for i in $(seq 1 8); do
  sh "$SEED" "$dest" >"$work/race$i.out" 2>&1 &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || fail "a concurrent seeder failed: $(cat "$work"/race*.out)"; done
diff -r "$src" "$dest" || fail "concurrent seeding left a different copy"
leftovers=$(find "$dest" -maxdepth 1 -name '.seeding-*' | wc -l)
[ "$leftovers" -eq 0 ] || fail "temporary directories left: $(ls -a "$dest")"
[ "$(cat "$work"/race*.out | grep -c "copied fashion-mnist")" -eq 1 ] ||
  fail "fashion-mnist copied more than once: $(cat "$work"/race*.out)"

# 5. A destination that is not a directory is an error.
if sh "$SEED" "$work/does-not-exist" 2>"$work/err5"; then
  fail "a missing destination was accepted"
fi
grep -q "not a writable directory" "$work/err5" || fail "message: $(cat "$work/err5")"

echo "deploy seed data test passed"
