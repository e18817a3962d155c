#!/usr/bin/env bash
# Soak (issue 11): does the gateway's memory plateau under a flood of distinct valid
# tokens, and stop growing once the load stops?
#
#   bash benches/soak.sh                       # defaults below
#   REQUESTS=200000 TOKENS=50000 AFTER=20 bash benches/soak.sh   # a quick look
#
# Starts, all on 127.0.0.1 (ports chosen by the OS, nothing else contacted):
#   - benches/soak_helper (examples/soak_helper.rs): mints TOKENS distinct ES256 access
#     tokens and their JWKS, then serves the JWKS and an upstream answering `200 ok`;
#   - the real gateway (`cargo build --release`, or SCOPEGATE_BIN) trusting that JWKS,
#     one route requiring the token's audience and scope, default token cache;
#   - wrk (-t1, CONNECTIONS connections) in rounds of ROUND seconds with
#     benches/soak/rotate.lua, each request carrying the next token round robin, until
#     REQUESTS requests have been sent (or MAX_LOAD seconds have passed);
# samples the gateway's VmRSS and its request count (scopegate_requests_total) every
# second during the load and for AFTER seconds after it, writes the curve to OUT (CSV:
# seconds,requests,rss_kb,phase), and prints a table and a verdict. Every process it
# started is stopped on exit, Ctrl-C and failures included. Exits 1 if any answer was
# not 200 (wrk's non-2xx count or socket errors) or a check before the load failed.
#
# Knobs: REQUESTS (1000000), TOKENS (200000), CONNECTIONS (32), ROUND (15 s), MAX_LOAD
# (900 s), AFTER (90 s), OUT (benches/soak/last-run.csv), SCOPEGATE_BIN, KEEP_WORK=1.
set -euo pipefail

REQUESTS=${REQUESTS:-1000000}
TOKENS=${TOKENS:-200000}
CONNECTIONS=${CONNECTIONS:-32}
ROUND=${ROUND:-15}
MAX_LOAD=${MAX_LOAD:-900}
AFTER=${AFTER:-90}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/benches/soak/last-run.csv}
ISSUER=https://soak.scopegate.test/
AUDIENCE=https://api.soak.scopegate.test
SCOPE=read:soak

command -v wrk >/dev/null || { echo "soak: wrk is needed (apt-get install -y wrk)" >&2; exit 2; }
command -v curl >/dev/null || { echo "soak: curl is needed" >&2; exit 2; }

cd "$ROOT"
if [[ -z ${SCOPEGATE_BIN:-} ]]; then
  cargo build --release --quiet
  SCOPEGATE_BIN=$ROOT/target/release/scopegate
fi
cargo build --example soak_helper --quiet
HELPER=$ROOT/target/debug/examples/soak_helper

WORK=$(mktemp -d -t scopegate-soak.XXXXXX)
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [[ ${KEEP_WORK:-0} == 1 ]]; then echo "soak: work dir kept: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "soak: minting $TOKENS tokens" >&2
"$HELPER" mint "$WORK" "$ISSUER" "$AUDIENCE" "$SCOPE" "$TOKENS"

"$HELPER" serve "$WORK" >"$WORK/helper.out" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do grep -q '^listening' "$WORK/helper.out" && break; sleep 0.1; done
UPSTREAM=$(sed -n 's/^listening //p' "$WORK/helper.out")
[[ $UPSTREAM == 127.0.0.1:* ]] || { echo "soak: the helper did not start: $(cat "$WORK/helper.out")" >&2; exit 1; }

cat >"$WORK/gateway.yaml" <<EOF
server:
  listen: 127.0.0.1:0
  admin_listen: 127.0.0.1:0
log: { format: json, level: warn }
trust:
  issuers:
    - issuer: $ISSUER
      jwks_uri: http://$UPSTREAM/jwks.json
      audiences: [$AUDIENCE]
      algorithms: [ES256]
routes:
  - name: soak
    match: { path: /api/* }
    upstream: http://$UPSTREAM
    audience: $AUDIENCE
    scopes: [$SCOPE]
EOF
# The "serving" line (with the bound addresses) is logged at info; the rest at warn.
env -u RUST_LOG RUST_LOG=warn,scopegate=info "$SCOPEGATE_BIN" run -c "$WORK/gateway.yaml" 2>"$WORK/gateway.log" &
GATEWAY=$!
PIDS+=("$GATEWAY")
for _ in $(seq 300); do grep -q 'scopegate serving' "$WORK/gateway.log" && break; sleep 0.1; done
serving=$(grep -m1 'scopegate serving' "$WORK/gateway.log" || true)
LISTEN=$(grep -o '"listen":"127\.0\.0\.1:[0-9]*"' <<<"$serving" | cut -d'"' -f4)
ADMIN=$(grep -o '"admin_listen":"127\.0\.0\.1:[0-9]*"' <<<"$serving" | cut -d'"' -f4)
[[ -n $LISTEN && -n $ADMIN ]] || { echo "soak: the gateway did not start:" >&2; cat "$WORK/gateway.log" >&2; exit 1; }
for _ in $(seq 100); do
  [[ $(curl -s -o /dev/null -w '%{http_code}' "http://$ADMIN/readyz") == 200 ]] && break
  sleep 0.1
done

# Checks before the load: the first and the last token pass, a bad one does not.
status() { curl -s -o /dev/null -w '%{http_code}' -H "authorization: Bearer $1" "http://$LISTEN/api/soak"; }
first=$(head -1 "$WORK/tokens.txt"); last=$(tail -1 "$WORK/tokens.txt")
[[ $(status "$first") == 200 && $(status "$last") == 200 ]] || { echo "soak: a minted token was refused" >&2; exit 1; }
[[ $(status "${first%?}A") == 401 ]] || { echo "soak: a bad signature was not refused" >&2; exit 1; }

requests_so_far() {
  curl -s "http://$ADMIN/metrics" |
    awk '/^scopegate_requests_total[{ ]/ { sum += $NF } END { printf "%d\n", sum }'
}
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$GATEWAY/status" 2>/dev/null || echo 0; }

echo "seconds,requests,rss_kb,phase" >"$OUT"
echo load >"$WORK/phase"
(
  start=$(date +%s.%N)
  while [[ -e $WORK/phase ]]; do
    now=$(date +%s.%N)
    printf '%.0f,%s,%s,%s\n' "$(echo "$now - $start" | bc)" "$(requests_so_far)" "$(rss_kb)" "$(cat "$WORK/phase" 2>/dev/null || echo done)" >>"$OUT"
    sleep 1
  done
) &
PIDS+=($!)

echo "soak: $REQUESTS requests, $TOKENS tokens, $CONNECTIONS connections, rounds of ${ROUND}s" >&2
sent=0; bad=0; errors=0; round=0; load_start=$SECONDS
while ((sent < REQUESTS && SECONDS - load_start < MAX_LOAD)); do
  round=$((round + 1))
  wrk -t1 -c"$CONNECTIONS" -d"${ROUND}s" --timeout 5s -s "$ROOT/benches/soak/rotate.lua" \
    "http://$LISTEN/api/soak" -- "$WORK/tokens.txt" "$sent" >"$WORK/wrk.$round.txt" 2>&1 &
  PIDS+=($!)
  wait $! || { echo "soak: wrk failed:" >&2; cat "$WORK/wrk.$round.txt" >&2; exit 1; }
  n=$(awk '/requests in/ { print $1 }' "$WORK/wrk.$round.txt")
  b=$(awk -F': ' '/Non-2xx or 3xx/ { print $2 }' "$WORK/wrk.$round.txt")
  e=$(grep -o 'Socket errors:.*' "$WORK/wrk.$round.txt" | grep -o '[0-9]\+' | paste -sd+ | bc || true)
  sent=$((sent + ${n:-0})); bad=$((bad + ${b:-0})); errors=$((errors + ${e:-0}))
  echo "soak: round $round: ${n:-0} requests (total $sent), non-200 so far $bad, socket errors $errors, RSS $(rss_kb) kB" >&2
done
load_seconds=$((SECONDS - load_start))
echo after >"$WORK/phase"
echo "soak: load done in ${load_seconds}s; sampling for ${AFTER}s more" >&2
sleep "$AFTER"
rm -f "$WORK/phase"
sleep 1.5

python3 - "$OUT" "$sent" "$TOKENS" "$bad" "$errors" "$load_seconds" <<'PY'
import csv, sys
path, sent, tokens, bad, errors, load_seconds = sys.argv[1], *map(int, sys.argv[2:])
rows = [r for r in csv.DictReader(open(path))]
for r in rows:
    r["seconds"], r["requests"], r["rss_mb"] = int(r["seconds"]), int(r["requests"]), int(r["rss_kb"]) / 1024
load = [r for r in rows if r["phase"] == "load"]
after = [r for r in rows if r["phase"] == "after"]
print(f"| time (s) | requests so far | RSS (MB) | phase |")
print(f"|---:|---:|---:|---|")
step = max(1, len(rows) // 24)
for i, r in enumerate(rows):
    if i % step == 0 or i == len(rows) - 1 or (i > 0 and rows[i - 1]["phase"] != r["phase"]):
        print(f"| {r['seconds']} | {r['requests']:,} | {r['rss_mb']:.1f} | {r['phase']} |")
quarter = max(1, len(load) // 4)
first_half_peak = max(r["rss_mb"] for r in load[: len(load) // 2 or 1])
last_quarter_peak = max(r["rss_mb"] for r in load[-quarter:])
end_of_load = load[-1]["rss_mb"]
after_peak = max((r["rss_mb"] for r in after), default=end_of_load)
after_last = after[-1]["rss_mb"] if after else end_of_load
print()
print(f"requests sent: {sent:,} ({sent / max(load_seconds, 1):,.0f}/s over {load_seconds} s), distinct tokens: {min(sent, tokens):,}, "
      f"non-200 answers: {bad}, socket errors: {errors}")
print(f"RSS: peak in the first half of the load {first_half_peak:.1f} MB, peak in its last quarter {last_quarter_peak:.1f} MB, "
      f"at its end {end_of_load:.1f} MB; after it: peak {after_peak:.1f} MB, last {after_last:.1f} MB")
plateau = last_quarter_peak <= first_half_peak * 1.10 + 2
no_growth_after = after_peak <= end_of_load * 1.05 + 1
print(f"verdict: {'plateau' if plateau else 'STILL GROWING'} under load; "
      f"{'no growth' if no_growth_after else 'GROWTH'} after the load stopped")
sys.exit(0 if plateau and no_growth_after and bad == 0 and errors == 0 else 1)
PY
