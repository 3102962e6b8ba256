#!/bin/sh
# Checks every line of a policy-tests file with `authgate explain` (nothing is sent anywhere).
# Usage: run.sh CONFIG TESTS; $AUTHGATE names the binary (default: authgate on the PATH).
config=$1; tests=$2; bin=${AUTHGATE:-authgate}; failed=0
while IFS= read -r line; do
  case $line in '' | '#'*) continue ;; esac
  eval "set -- $line"; want=$1; shift   # the file's own quoting, as a shell would read it
  out=$("$bin" --config "$config" explain --format json "$@" 2>&1); code=$?
  status=$(printf '%s\n' "$out" | sed -n 's/^  "status": \([0-9]*\),$/\1/p')
  case $code in 0) got=ALLOW ;; 1) got=DENY ;; *) got="ERROR($out)" ;; esac
  case $want in *:*) got="$got:$status" ;; esac
  if [ "$got" = "$want" ]; then echo "ok    $line"; else echo "FAIL  $line  (got $got)"; failed=1; fi
done < "$tests"
exit $failed
