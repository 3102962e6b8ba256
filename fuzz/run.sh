#!/usr/bin/env bash
# Runs every fuzz target (or the ones named as arguments) for a bounded time each and exits
# non-zero when any of them finds a crash, a timeout or an out-of-memory input.
#
#   fuzz/run.sh                       # every target, 60 s each
#   FUZZ_SECONDS=600 fuzz/run.sh token_verify
#
# Works on a stable toolchain: cargo-fuzz wants nightly only for its `-Zsanitizer=...` flags
# (AddressSanitizer, its default), so the targets are built without a sanitizer (`-s none`:
# safe Rust needs none, and the crate forbids `unsafe`); libFuzzer itself comes from the
# libfuzzer-sys crate. Should a cargo-fuzz version still pass an unstable flag, the build is
# retried with RUSTC_BOOTSTRAP=1. `-a` keeps debug assertions and overflow checks on in the
# optimized build, so an arithmetic overflow is a crash, not a silent wrap.
#
# Inputs that crash are written to fuzz/artifacts/<target>/ (ignored by git); reproduce one with
#   cargo fuzz run -s none -a <target> fuzz/artifacts/<target>/<file>     (from fuzz/)
# and keep minimized ones under fuzz/regressions/<target>/ (this script replays those first).
set -euo pipefail
cd "$(dirname "$0")"

seconds="${FUZZ_SECONDS:-60}"
all=(path_normalize token_verify config_parse login_body)
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then targets=("${all[@]}"); fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install --locked cargo-fuzz
fi

flags=(-s none -a)

build() {
  if [ ${#targets[@]} -eq ${#all[@]} ]; then
    cargo fuzz build "${flags[@]}"
  else
    for t in "${targets[@]}"; do cargo fuzz build "${flags[@]}" "$t" || return 1; done
  fi
}
echo "== building ${targets[*]}"
if ! build; then
  echo "== build failed on this toolchain; retrying with RUSTC_BOOTSTRAP=1"
  export RUSTC_BOOTSTRAP=1
  build
fi

mkdir -p target/logs
failed=()
for t in "${targets[@]}"; do
  # Inputs that once failed are replayed first: they fail here until the bug is fixed, and
  # catch it if it comes back.
  if compgen -G "regressions/$t/*" >/dev/null; then
    echo "== $t: replaying regressions/$t"
    if ! cargo fuzz run "${flags[@]}" "$t" regressions/"$t"/* -- -runs=1 >"target/logs/$t.regressions.log" 2>&1; then
      echo "!! $t: a regression input still fails (target/logs/$t.regressions.log):"
      grep -m1 -A1 'panicked at' "target/logs/$t.regressions.log" | sed 's/^/   /' || true
      failed+=("$t(regression)")
    fi
  fi

  mkdir -p "corpus/$t"
  args=(-max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048)
  if [ -f "dicts/$t.dict" ]; then args+=(-dict="dicts/$t.dict"); fi
  seeds=()
  if [ -d "seeds/$t" ]; then seeds=("seeds/$t"); fi
  echo "== $t: fuzzing for ${seconds}s (log: fuzz/target/logs/$t.log)"
  if cargo fuzz run "${flags[@]}" "$t" "corpus/$t" "${seeds[@]}" -- "${args[@]}" >"target/logs/$t.log" 2>&1; then
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)' \
      "target/logs/$t.log" | sed "s/^/   $t /" || true
    echo "   $t corpus: $(find "corpus/$t" -type f | wc -l) inputs"
  else
    echo "!! $t: crash, timeout or out-of-memory input found (target/logs/$t.log):"
    if ! grep -m1 -A1 -E 'panicked at|ERROR: libFuzzer' "target/logs/$t.log" | sed 's/^/   /'; then
      tail -n 30 "target/logs/$t.log"
    fi
    grep -m1 -A2 'Reproduce with' "target/logs/$t.log" | sed 's/^/   /' || true
    failed+=("$t")
  fi
done

if [ ${#failed[@]} -ne 0 ]; then
  echo "FAILED: ${failed[*]} (inputs in fuzz/artifacts/)"
  exit 1
fi
echo "OK: ${targets[*]} ran ${seconds}s each without a crash"
