#!/usr/bin/env bash
# Instructions per request through Scopegate, counted by callgrind: an A/B that a noisy
# machine cannot blur (req/s moves by 10-20 % between runs here; instruction counts by
# well under 1 %).
#
#   bash benches/load/instructions.sh BINARY [BINARY...]
#   ROUTE=builtin bash benches/load/instructions.sh target/release/scopegate
#
# For each binary: Scopegate (one worker) under `valgrind --tool=callgrind` in front of an
# nginx upstream (`return 200 "ok"`), a warm-up, counters zeroed, then REQUESTS requests
# over CONNECTIONS keep-alive connections (curl's HTTP/1.1 client, --parallel), counters
# dumped: Ir / requests. The requests must all answer 200.
# ROUTE: cached (an outside issuer's RS256 token, verified once then cached; default),
# none (auth: none), builtin (the built-in issuer's RS256 token: deny-set checked),
# token (POST /oauth/token client_credentials to the built-in issuer: a signature each;
# ALG=RS256|ES256, default ES256, where the signature is not most of the cost).
# KEEP_DUMPS=DIR keeps each binary's dump (callgrind_annotate DIR/callgrind.NAME.ROUTE).
# Needs valgrind, nginx, curl and python3 with `cryptography` (the load harness's venv
# under ~/.cache/scopegate-load is used when it exists).

set -Eeuo pipefail
export LC_ALL=C
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROUTE=${ROUTE:-cached}
REQUESTS=${REQUESTS:-20000}
CONNECTIONS=${CONNECTIONS:-8}
PORT_BASE=${PORT_BASE:-18500}
PY=${PY:-${XDG_CACHE_HOME:-$HOME/.cache}/scopegate-load/venv/bin/python}
[[ -x $PY ]] || PY=python3
(($# > 0)) || { echo "usage: $0 BINARY [BINARY...]" >&2; exit 2; }
for tool in valgrind callgrind_control nginx curl; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install valgrind nginx-light curl)" >&2; exit 1; }
done
case $ROUTE in cached | none | builtin | token) ;; *) echo "ROUTE must be cached, none, builtin or token" >&2; exit 2 ;; esac
ALG=${ALG:-ES256}
case $ALG in RS256 | ES256) ;; *) echo "ALG must be RS256 or ES256" >&2; exit 2 ;; esac

UP=$((PORT_BASE + 1)) SG=$((PORT_BASE + 2)) ADMIN=$((PORT_BASE + 3))
ISSUER=https://issuer.bench.local/ AUDIENCE=https://api.bench.local SCOPE=read:bench
WORK=$(mktemp -d /tmp/scopegate-instr.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$WORK/rsa.pem" 2>/dev/null
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$WORK/ec.pem" 2>/dev/null
"$PY" "$HERE/lib/mint.py" "$WORK" "$ISSUER" "$AUDIENCE" "$SCOPE" >/dev/null
mkdir -p "$WORK/tmp" "$WORK/conf" # conf: the config alone (Scopegate watches its directory)
cat >"$WORK/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx.error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    keepalive_requests 100000000;
    client_body_temp_path $WORK/tmp/body;
    proxy_temp_path $WORK/tmp/proxy;
    fastcgi_temp_path $WORK/tmp/fastcgi;
    uwsgi_temp_path $WORK/tmp/uwsgi;
    scgi_temp_path $WORK/tmp/scgi;
    server {
        listen 127.0.0.1:$UP;
        location = /jwks.json { default_type application/json; alias $WORK/jwks.json; }
        location / { default_type text/plain; return 200 "ok"; }
    }
}
EOF
nginx -e "$WORK/nginx.error.log" -p "$WORK" -c "$WORK/nginx.conf" &
PIDS+=($!)

config() {
  cat <<EOF
server: { listen: 127.0.0.1:$SG, admin_listen: 127.0.0.1:$ADMIN, workers: 1 }
log: { format: json, level: warn }
trust:
  issuers:
    - issuer: $ISSUER
      jwks_uri: http://127.0.0.1:$UP/jwks.json
      audiences: [$AUDIENCE]
      algorithms: [RS256]
EOF
  if [[ $ROUTE == builtin || $ROUTE == token ]]; then
    local alg=RS256
    [[ $ROUTE == token ]] && alg=$ALG
    cat <<EOF
issuer:
  enabled: true
  url: http://127.0.0.1:$SG/
  store: sqlite://$WORK/issuer.db
  keys: { algorithm: $alg }
  apis: [{ identifier: $AUDIENCE, scopes: [{ value: $SCOPE }] }]
  clients:
    - { client_id: bench, client_secret: bench-secret-0123456789, grant_types: [client_credentials], grants: { "$AUDIENCE": [$SCOPE] } }
EOF
  fi
  cat <<EOF
routes:
  - name: bench
    match: { path: /bench/* }
    upstream: http://127.0.0.1:$UP
EOF
  if [[ $ROUTE == none ]]; then echo "    auth: none"; else printf '    audience: %s\n    scopes: [%s]\n' "$AUDIENCE" "$SCOPE"; fi
}

# load N: N requests over CONNECTIONS reused connections; prints how many answered 200.
load() {
  local n=$1 auth=() url=http://127.0.0.1:$SG/bench/hello
  [[ -n $TOKEN ]] && auth=(-H "Authorization: Bearer $TOKEN")
  if [[ $ROUTE == token ]]; then
    url=http://127.0.0.1:$SG/oauth/token
    auth=(-u bench:bench-secret-0123456789)
    auth+=(--data "grant_type=client_credentials&audience=$AUDIENCE") # every URL, POST
  fi
  local urls=$WORK/urls
  : >"$urls"
  for _ in $(seq "$n"); do echo "url = \"$url\""; echo 'output = "/dev/null"'; echo 'write-out = "%{http_code}\n"'; done >"$urls"
  curl -s --no-progress-meter --parallel --parallel-max "$CONNECTIONS" --http1.1 "${auth[@]}" -K "$urls" 2>/dev/null | grep -c "^200$" || true
}

for bin in "$@"; do
  [[ -x $bin ]] || { echo "no binary at $bin" >&2; exit 1; }
  config >"$WORK/conf/gateway.yaml"
  "$bin" check -c "$WORK/conf/gateway.yaml" >/dev/null
  rm -f "$WORK"/callgrind.out.*
  env -u RUST_LOG valgrind --tool=callgrind --compress-strings=no --callgrind-out-file="$WORK/callgrind.out.%p" \
    "$bin" run -c "$WORK/conf/gateway.yaml" >"$WORK/scopegate.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  # Under callgrind, start-up is slow (the built-in issuer generates an RSA key): 5 min.
  for _ in $(seq 3000); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$ADMIN/readyz" || true) == 200 ]] && break
    sleep 0.1
  done
  TOKEN=
  case $ROUTE in
    cached) TOKEN=$(cat "$WORK/tokens/rs256.good") ;;
    builtin)
      TOKEN=$(curl -s -u bench:bench-secret-0123456789 -d grant_type=client_credentials \
        -d "audience=$AUDIENCE" "http://127.0.0.1:$SG/oauth/token" |
        "$PY" -c 'import json, sys; print(json.load(sys.stdin)["access_token"])') ||
        { echo "$bin: no token from its issuer; its log:" >&2; tail -5 "$WORK/scopegate.log" >&2; exit 1; } ;;
  esac
  warm=$(load 500)
  ((warm == 500)) || { echo "$bin: warm-up answered $warm of 500 with 200" >&2; exit 1; }
  callgrind_control -d "$pid" >/dev/null # dumps (and so zeroes) the start-up and warm-up
  ok=$(load "$REQUESTS")
  callgrind_control -d "$pid" >/dev/null
  ((ok == REQUESTS)) || { echo "$bin: $ok of $REQUESTS answered 200" >&2; exit 1; }
  dump=$(ls -t "$WORK"/callgrind.out.* | head -1)
  ir=$(awk '/^summary:/ { print $2 }' "$dump")
  if [[ -n ${KEEP_DUMPS:-} ]]; then
    mkdir -p "$KEEP_DUMPS"
    cp "$dump" "$KEEP_DUMPS/callgrind.$(basename "$bin").$ROUTE"
  fi
  printf "%s (%s)\t%s\t%s requests\t%.0f instructions/request\n" "$bin" "$("$bin" --version)" "$ROUTE" "$REQUESTS" \
    "$(awk -v i="$ir" -v n="$REQUESTS" 'BEGIN { print i / n }')"
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
done
