#!/usr/bin/env bash
# Validates everything under deploy/ (CI runs this; so can you).
#
#   deploy/validate.sh [PATH/TO/scopegate]
#
# With a scopegate binary, every gateway.yaml under deploy/ (including the one inside the
# Kubernetes ConfigMap) must pass `scopegate check`, with the environment its deployment
# gives it. Without one those checks are reported as skipped.
#
# Needs python3 and network access to PyPI and Debian's archive; as root on Debian it
# installs python3-venv if missing. Installs into a throwaway directory only:
#   - a venv with kubernetes-validate (bundled Kubernetes JSON schemas: works offline
#     once installed) and check-jsonschema (bundled Compose Specification schema);
#   - promtool, extracted from Debian's `prometheus` package (not installed, so no
#     service is started).
# Environment:
#   SCOPEGATE_VALIDATE_ALLOW_SKIP=1   a tool that cannot be installed is a skip, not a
#                                     failure (for offline laptops; CI should not set it)
#   SCOPEGATE_VALIDATE_WORKDIR=DIR    keep tools in DIR and reuse them on the next run
#
# Exits non-zero if any check fails.
set -euo pipefail

started=$SECONDS
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
allow_skip="${SCOPEGATE_VALIDATE_ALLOW_SKIP:-0}"

say() { printf '%s\n' "validate.sh: $*" >&2; }
missing_tool() {
    if [[ $allow_skip == 1 ]]; then
        say "WARNING: $1 (continuing: SCOPEGATE_VALIDATE_ALLOW_SKIP=1)"
    else
        say "ERROR: $1 (set SCOPEGATE_VALIDATE_ALLOW_SKIP=1 to continue without it)"
        exit 2
    fi
}

scopegate=""
if [[ $# -gt 1 ]]; then
    say "usage: $0 [PATH/TO/scopegate]"
    exit 2
elif [[ $# -eq 1 ]]; then
    if [[ ! -x $1 || -d $1 ]]; then
        say "ERROR: $1 is not an executable scopegate binary"
        exit 2
    fi
    scopegate="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
fi

if [[ -n ${SCOPEGATE_VALIDATE_WORKDIR:-} ]]; then
    work="$SCOPEGATE_VALIDATE_WORKDIR"
    mkdir -p "$work"
else
    work="$(mktemp -d "${TMPDIR:-/tmp}/scopegate-validate.XXXXXX")"
    trap 'rm -rf "$work"' EXIT
fi

as_root() { [[ $(id -u) -eq 0 ]]; }
apt_updated=0
apt_install() {
    as_root && command -v apt-get >/dev/null || return 1
    if [[ $apt_updated == 0 ]]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || return 1
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# --- Python tools -----------------------------------------------------------------------
command -v python3 >/dev/null || apt_install python3 || { say "ERROR: python3 is required"; exit 2; }
venv="$work/venv"
if [[ ! -x $venv/bin/python ]]; then
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
        rm -rf "$venv"
        apt_install python3-venv || { say "ERROR: python3 -m venv failed and python3-venv cannot be installed"; exit 2; }
        python3 -m venv "$venv"
    fi
fi
say "installing kubernetes-validate and check-jsonschema into $venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check \
    'kubernetes-validate==1.37.0' 'check-jsonschema==0.39.0' 'PyYAML>=6' \
    || { say "ERROR: pip install failed (is PyPI reachable?)"; exit 2; }

# --- promtool ---------------------------------------------------------------------------
promtool="$(command -v promtool || true)"
if [[ -z $promtool && -x $work/promtool/usr/bin/promtool ]]; then
    promtool="$work/promtool/usr/bin/promtool"
fi
if [[ -z $promtool ]] && command -v apt-get >/dev/null; then
    say "fetching promtool from Debian's prometheus package"
    (
        cd "$work"
        if ! apt-cache show prometheus >/dev/null 2>&1 && as_root; then
            apt-get update -qq >/dev/null
        fi
        sandbox=()  # as root, apt would otherwise try to download as _apt into our dir
        as_root && sandbox=(-o APT::Sandbox::User=root)
        apt-get download -q "${sandbox[@]}" prometheus >/dev/null 2>&1 \
            && dpkg-deb -x prometheus_*.deb promtool \
            && rm -f prometheus_*.deb
    ) || true
    [[ -x $work/promtool/usr/bin/promtool ]] && promtool="$work/promtool/usr/bin/promtool"
fi
if [[ -z $promtool ]]; then
    missing_tool "promtool is not available (apt-get download prometheus failed)"
fi

# --- checks -----------------------------------------------------------------------------
args=(--deploy-dir "$here" --check-jsonschema "$venv/bin/check-jsonschema")
[[ -n $promtool ]] && args+=(--promtool "$promtool")
[[ -n $scopegate ]] && args+=(--scopegate "$scopegate")

status=0
"$venv/bin/python" "$here/validate.py" "${args[@]}" || status=$?
say "finished in $((SECONDS - started))s"
exit "$status"
