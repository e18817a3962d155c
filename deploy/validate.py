#!/usr/bin/env python3
"""Checks everything under deploy/. Run through deploy/validate.sh, which installs the
tools this needs (PyYAML, kubernetes-validate, check-jsonschema, promtool) and passes
their paths; running it directly works when they are importable / given.

Every check prints one line: `ok`, `FAIL` or `skip`, then what it checked. The exit
status is 1 if any check failed (or a required tool is missing), else 0.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

# Kubernetes versions the manifests must be valid for: the oldest still common in
# managed clusters, and the newest kubernetes-validate knows.
K8S_VERSIONS = ["1.29", "latest"]

# The metric contract (README, Metrics) (prefix scopegate_), with each family's labels.
METRICS = {
    "scopegate_requests_total": {"route", "method", "status"},
    "scopegate_request_duration_seconds": {"route"},
    "scopegate_upstream_duration_seconds": {"route"},
    "scopegate_auth_failures_total": {"route", "reason"},
    "scopegate_jwks_fetches_total": {"issuer", "result"},
    "scopegate_tokens_issued_total": {"grant_type"},
    "scopegate_token_errors_total": {"grant_type", "error"},
    "scopegate_config_reloads_total": {"result"},
    "scopegate_build_info": {"version", "commit"},
    "scopegate_in_flight_requests": set(),
}
HISTOGRAMS = {"scopegate_request_duration_seconds", "scopegate_upstream_duration_seconds"}
# Labels Prometheus adds at scrape time, usable in any selector.
TARGET_LABELS = {"job", "instance", "le", "namespace", "pod"}

PROXY_PORT = 8080
ADMIN_PORT = 9100


class Report:
    def __init__(self) -> None:
        self.ok = 0
        self.failed = 0
        self.skipped = 0

    def check(self, condition: bool, what: str, detail: str = "") -> bool:
        if condition:
            self.ok += 1
            print(f"ok    {what}")
        else:
            self.failed += 1
            print(f"FAIL  {what}" + (f"\n      {detail}" if detail else ""))
        return condition

    def fail(self, what: str, detail: str = "") -> None:
        self.check(False, what, detail)

    def skip(self, what: str, why: str) -> None:
        self.skipped += 1
        print(f"skip  {what}: {why}")


R = Report()


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------

def rel(path: Path) -> str:
    try:
        return str(path.relative_to(DEPLOY.parent))
    except ValueError:
        return str(path)


def load_yaml_docs(path: Path) -> list:
    with open(path, encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def duration_seconds(text: str) -> float:
    """gateway.yaml durations: 500ms, 30s, 10m, 1h30m, 30d."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", str(text))
    if not parts or "".join(n + u for n, u in parts) != str(text):
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * units[u] for n, u in parts)


def compose_duration(text) -> float:
    """Compose durations: 1m30s, 15s, 500ms (a bare number is seconds)."""
    if isinstance(text, (int, float)):
        return float(text)
    units = {"us": 1e-6, "ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", text)
    return sum(float(n) * units[u] for n, u in parts)


ENV_REF = re.compile(r"(?<!\$)\$\{([A-Za-z0-9_]+)(:-[^}]*)?\}")


def env_refs(text: str) -> tuple[set[str], set[str]]:
    """(${VAR} names without a default, ${VAR:-x} names), ignoring comment lines as
    scopegate does."""
    required, defaulted = set(), set()
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        for name, default in ENV_REF.findall(line):
            (defaulted if default else required).add(name)
    return required, defaulted


def port_of(address: str) -> int:
    return int(str(address).rsplit(":", 1)[1])


def host_of(address: str) -> str:
    return str(address).rsplit(":", 1)[0].strip("[]")


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bscopegate_[a-z_]+", expr))


def check_metric_names(where: str, exprs: list[str]) -> set[str]:
    """Every scopegate_* name used is in the contract (histograms with their _bucket,
    _sum, _count series) and every label matcher on it is a known label. Returns the
    families used."""
    used = set()
    bad = []
    for expr in exprs:
        for name in metric_names(expr):
            family = name
            for suffix in ("_bucket", "_sum", "_count"):
                if name.endswith(suffix) and name[: -len(suffix)] in HISTOGRAMS:
                    family = name[: -len(suffix)]
            if family not in METRICS:
                bad.append(f"unknown metric {name}")
                continue
            if family in HISTOGRAMS and family == name:
                bad.append(f"{name} is a histogram: use {name}_bucket/_sum/_count")
            used.add(family)
            allowed = METRICS[family] | TARGET_LABELS
            for selector in re.findall(re.escape(name) + r"\{([^}]*)\}", expr):
                for label in re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", selector):
                    if label not in allowed:
                        bad.append(f"{name} has no label {label!r}")
    R.check(not bad, f"{where}: metric names and labels match the metric contract",
            "; ".join(sorted(set(bad))))
    return used


def run(cmd: list[str], env: dict | None = None, stdin: str | None = None,
        timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=env, input=stdin,
                          timeout=timeout)


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """Only PATH and the given variables: a check must not pass because the machine
    running it happens to export something."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    env.update(extra)
    return env


def scopegate_check(config_text: str, env: dict[str, str], label: str) -> None:
    if not SCOPEGATE:
        R.skip(f"scopegate check {label}", "no scopegate binary given (deploy/validate.sh PATH/TO/scopegate)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gateway.yaml"
        path.write_text(config_text, encoding="utf-8")
        result = run([SCOPEGATE, "check", "-c", str(path)], env=clean_env(env), timeout=30)
    routes = [line.split()[0] for line in result.stdout.splitlines()[1:-1] if line.strip()]
    R.check(result.returncode == 0,
            f"scopegate check {label}" + (f" ({len(routes)} routes: {', '.join(routes)})" if result.returncode == 0 else ""),
            (result.stderr or result.stdout).strip())


_HASH = None


def password_hash() -> str:
    """A real argon2id PHC string from the binary, for *_PASSWORD_HASH placeholders."""
    global _HASH
    if _HASH is None:
        _HASH = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$placeholderplaceholderplaceholderplaceho"
        if SCOPEGATE:
            result = run([SCOPEGATE, "hash-password"], stdin="validate-placeholder\n",
                         env=clean_env({}))
            if result.returncode == 0:
                _HASH = result.stdout.strip()
    return _HASH


def check_gateway_shape(config: dict, label: str) -> dict:
    """Things `scopegate check` accepts but a container deployment must not do."""
    server = config.get("server") or {}
    listen = str(server.get("listen", "127.0.0.1:8080"))
    admin = str(server.get("admin_listen", "127.0.0.1:9100"))
    R.check(host_of(listen) in ("0.0.0.0", "::") and port_of(listen) == PROXY_PORT,
            f"{label}: server.listen is {listen} (all interfaces, port {PROXY_PORT})")
    R.check(host_of(admin) in ("0.0.0.0", "::") and port_of(admin) == ADMIN_PORT,
            f"{label}: server.admin_listen is {admin} (all interfaces, port {ADMIN_PORT})")
    issuer = config.get("issuer") or {}
    if issuer.get("enabled", True) and issuer:
        store = str(issuer.get("store", "sqlite://scopegate.db"))
        R.check(store.startswith(("postgres://", "postgresql://")) or bool(ENV_REF.search(store)),
                f"{label}: issuer.store is PostgreSQL (shared by replicas): {store}")
    return server


# --------------------------------------------------------------------------------------
# Dockerfile
# --------------------------------------------------------------------------------------

def check_dockerfile() -> None:
    path = DEPLOY / "Dockerfile"
    if not R.check(path.is_file(), f"{rel(path)} exists"):
        return
    text = path.read_text(encoding="utf-8")
    # Join continuation lines, drop comments.
    lines = []
    for raw in re.sub(r"\\\n", " ", text).splitlines():
        if raw.strip() and not raw.lstrip().startswith("#"):
            lines.append(raw.strip())
    # Global ARG defaults (before the first FROM) resolve ${NAME} in FROM lines.
    args = {}
    for l in lines:
        if l.upper().startswith("FROM "):
            break
        m = re.match(r"ARG\s+(\w+)=(\S+)", l, re.I)
        if m:
            args[m.group(1)] = m.group(2)
    froms = [re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), l)
             for l in lines if l.upper().startswith("FROM ")]
    R.check(len(froms) >= 2, f"Dockerfile: multi-stage ({len(froms)} FROM lines)")
    R.check(any("rust:" in f and "AS builder" in f for f in froms) and "bookworm" in text,
            "Dockerfile: builder stage is rust:*-bookworm")
    R.check(any("cargo build --release --locked" in l for l in lines),
            "Dockerfile: cargo build --release --locked")
    R.check(any("--mount=type=cache" in l for l in lines), "Dockerfile: dependency caching (BuildKit cache mounts)")
    runtime = froms[-1] if froms else ""
    R.check("bookworm-slim" in runtime or "distroless/cc" in runtime,
            f"Dockerfile: runtime base is slim/distroless ({runtime})")
    users = [l.split(None, 1)[1] for l in lines if l.upper().startswith("USER ")]
    R.check(bool(users) and users[-1].split(":")[0] not in ("root", "0"),
            f"Dockerfile: runs as a non-root user ({users[-1] if users else 'no USER'})")
    R.check(bool(users) and users[-1].split(":")[0].isdigit(),
            "Dockerfile: USER is numeric (Kubernetes runAsNonRoot can verify it)")
    exposed = set()
    for l in lines:
        if l.upper().startswith("EXPOSE "):
            exposed |= {p.split("/")[0] for p in l.split()[1:]}
    R.check({str(PROXY_PORT), str(ADMIN_PORT)} <= exposed, f"Dockerfile: EXPOSE {PROXY_PORT} {ADMIN_PORT}")
    health = [l for l in lines if l.upper().startswith("HEALTHCHECK ")]
    R.check(bool(health) and f":{ADMIN_PORT}/" in health[0],
            f"Dockerfile: HEALTHCHECK probes the admin port {ADMIN_PORT}")
    if health and "curl" in health[0]:
        R.check(any("install" in l and "curl" in l for l in lines),
                "Dockerfile: curl used by HEALTHCHECK is installed in the runtime image")
    entry = [l for l in lines if l.upper().startswith("ENTRYPOINT ")]
    cmd = [l for l in lines if l.upper().startswith("CMD ")]
    argv = []
    try:
        argv = json.loads(entry[-1].split(None, 1)[1]) + (json.loads(cmd[-1].split(None, 1)[1]) if cmd else [])
    except (IndexError, json.JSONDecodeError):
        pass
    R.check(argv == ["scopegate", "run", "-c", "/etc/scopegate/gateway.yaml"],
            f"Dockerfile: ENTRYPOINT + CMD run `{' '.join(argv)}` (exec form)")
    ignore = DEPLOY / "Dockerfile.dockerignore"
    R.check(ignore.is_file() and "target/" in ignore.read_text(), "Dockerfile.dockerignore keeps target/ out of the build context")


# --------------------------------------------------------------------------------------
# Kubernetes
# --------------------------------------------------------------------------------------

def check_servicemonitor(doc: dict, where: str) -> None:
    """No schema is bundled for this CRD: check the fields the Prometheus Operator needs,
    by hand, and say so."""
    spec = doc.get("spec") or {}
    problems = []
    if doc.get("apiVersion") != "monitoring.coreos.com/v1":
        problems.append("apiVersion must be monitoring.coreos.com/v1")
    if not (doc.get("metadata") or {}).get("name"):
        problems.append("metadata.name missing")
    selector = spec.get("selector") or {}
    if not isinstance(selector.get("matchLabels"), dict) or not selector["matchLabels"]:
        problems.append("spec.selector.matchLabels missing")
    endpoints = spec.get("endpoints")
    if not isinstance(endpoints, list) or not endpoints:
        problems.append("spec.endpoints must be a non-empty list")
    else:
        for i, ep in enumerate(endpoints):
            if not isinstance(ep, dict) or not (ep.get("port") or ep.get("targetPort")):
                problems.append(f"spec.endpoints[{i}] needs port (a Service port name)")
            for key in ("interval", "scrapeTimeout"):
                if key in ep and not re.fullmatch(r"(\d+(ms|s|m|h))+", str(ep[key])):
                    problems.append(f"spec.endpoints[{i}].{key} {ep[key]!r} is not a duration")
            if "path" in ep and not str(ep["path"]).startswith("/"):
                problems.append(f"spec.endpoints[{i}].path must start with /")
    known = {"selector", "endpoints", "jobLabel", "namespaceSelector", "targetLabels",
             "podTargetLabels", "sampleLimit", "targetLimit", "attachMetadata",
             "labelLimit", "labelNameLengthLimit", "labelValueLengthLimit", "scrapeProtocols",
             "keepDroppedTargets", "bodySizeLimit", "scrapeClass", "fallbackScrapeProtocol",
             "selectorMechanism", "scrapeClassicHistograms", "nativeHistogramBucketLimit",
             "nativeHistogramMinBucketFactor", "convertClassicHistogramsToNHCB"}
    unknown = set(spec) - known
    if unknown:
        problems.append(f"unknown spec keys {sorted(unknown)}")
    R.check(not problems, f"{where}: structural check (no bundled schema for this CRD)", "; ".join(problems))


def check_kubernetes() -> None:
    kdir = DEPLOY / "kubernetes"
    kustomization_path = kdir / "kustomization.yaml"
    if not R.check(kustomization_path.is_file(), f"{rel(kustomization_path)} exists"):
        return
    kustomization = load_yaml_docs(kustomization_path)[0]
    R.check(kustomization.get("apiVersion") == "kustomize.config.k8s.io/v1beta1"
            and kustomization.get("kind") == "Kustomization",
            "kustomization.yaml: kustomize.config.k8s.io/v1beta1 Kustomization")
    R.check("namespace" not in kustomization, "kustomization.yaml: namespace-agnostic (no namespace:)")
    listed = list(kustomization.get("resources") or [])
    on_disk = sorted(p.name for p in kdir.glob("*.yaml") if p.name != "kustomization.yaml")
    R.check(sorted(listed) == on_disk,
            f"kustomization.yaml lists every manifest ({', '.join(listed)})",
            f"listed {sorted(listed)}, on disk {on_disk}")

    docs = []
    for name in listed:
        path = kdir / name
        if not path.is_file():
            continue
        try:
            docs += [(name, doc) for doc in load_yaml_docs(path)]
        except yaml.YAMLError as err:
            R.fail(f"{name}: YAML parses", str(err))
    resources = validate_documents(docs)
    check_gateway_resources(resources, "kubernetes", replicas=3,
                            kinds=["ConfigMap", "Secret", "Deployment", "Service",
                                   "HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceMonitor"])


def validate_documents(docs: list[tuple[str, dict]]) -> dict[tuple[str, str], dict]:
    """Every document against the bundled Kubernetes schemas (strict), for each of
    K8S_VERSIONS; ServiceMonitors structurally. Returns them by (kind, name)."""
    import kubernetes_validate  # installed by validate.sh

    resources: dict[tuple[str, str], dict] = {}
    for name, doc in docs:
        kind, meta = doc.get("kind"), doc.get("metadata") or {}
        where = f"{name}: {kind}/{meta.get('name')}"
        resources[(kind, meta.get("name"))] = doc
        R.check("namespace" not in meta, f"{where}: no metadata.namespace (namespace-agnostic)")
        if kind == "ServiceMonitor":
            check_servicemonitor(doc, where)
            continue
        for version in K8S_VERSIONS:
            wanted = kubernetes_validate.latest_version() if version == "latest" else version
            try:
                got = kubernetes_validate.validate(doc, wanted, strict=True)
                R.check(True, f"{where}: valid against the Kubernetes {got} schema (strict: unknown fields refused)")
            except kubernetes_validate.ValidationError as err:
                path_text = ".".join(str(p) for p in err.path)
                R.fail(f"{where}: valid against the Kubernetes {wanted} schema", f"{path_text}: {err.message}")
            except kubernetes_validate.SchemaNotFoundError:
                R.fail(f"{where}: has a Kubernetes {wanted} schema",
                       "unknown kind/apiVersion; if it is a CRD, add a structural check like ServiceMonitor's")
    return resources


def check_gateway_resources(resources: dict[tuple[str, str], dict], label: str, replicas: int | None,
                            kinds: list[str], external_secrets: set[str] = frozenset(),
                            one_scrape_mechanism: bool = False) -> None:
    """Cross-references between the gateway's resources (kustomize or a Helm render).
    external_secrets: Secrets referenced but not rendered (placeholders are used for
    their values); one_scrape_mechanism: no prometheus.io annotations with a
    ServiceMonitor."""
    present = {kind for kind, _ in resources}
    for kind in kinds:
        R.check(kind in present, f"{label}: has a {kind}")

    deployments = [d for (k, _), d in resources.items() if k == "Deployment"]
    if not deployments:
        return
    deploy = deployments[0]
    dname = deploy["metadata"]["name"]
    spec = deploy["spec"]
    pod = spec["template"]["spec"]
    pod_labels = spec["template"]["metadata"].get("labels") or {}
    annotations = spec["template"]["metadata"].get("annotations") or {}
    container = pod["containers"][0]
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    where = f"{label}: Deployment/{dname}"

    if replicas is None:
        R.check("replicas" not in spec, f"{where}: no spec.replicas (the HPA owns the count)")
    else:
        R.check(spec.get("replicas") == replicas, f"{where}: {replicas} replicas")
    R.check(spec["selector"].get("matchLabels", {}).items() <= pod_labels.items(),
            f"{where}: selector matches the pod template labels")
    R.check(ports.get("http") == PROXY_PORT and ports.get("admin") == ADMIN_PORT,
            f"{where}: container ports http={PROXY_PORT}, admin={ADMIN_PORT}")

    def probe_port(probe: dict) -> int | None:
        port = (probe.get("httpGet") or {}).get("port")
        return ports.get(port) if isinstance(port, str) else port

    readiness = container.get("readinessProbe") or {}
    liveness = container.get("livenessProbe") or {}
    R.check((readiness.get("httpGet") or {}).get("path") == "/readyz" and probe_port(readiness) == ADMIN_PORT,
            f"{where}: readinessProbe GET /readyz on the admin port")
    R.check((liveness.get("httpGet") or {}).get("path") == "/healthz" and probe_port(liveness) == ADMIN_PORT,
            f"{where}: livenessProbe GET /healthz on the admin port")
    if one_scrape_mechanism and "ServiceMonitor" in present:
        R.check(not any(k.startswith("prometheus.io/") for k in annotations),
                f"{where}: no prometheus.io annotations next to the ServiceMonitor (one scrape mechanism)")
    else:
        R.check(annotations.get("prometheus.io/scrape") == "true"
                and annotations.get("prometheus.io/port") == str(ADMIN_PORT)
                and annotations.get("prometheus.io/path") == "/metrics",
                f"{where}: prometheus.io/scrape, port {ADMIN_PORT}, path /metrics annotations")
    psc, csc = pod.get("securityContext") or {}, container.get("securityContext") or {}
    R.check((psc.get("runAsNonRoot") or csc.get("runAsNonRoot")) is True
            and csc.get("readOnlyRootFilesystem") is True
            and csc.get("allowPrivilegeEscalation") is False
            and "ALL" in ((csc.get("capabilities") or {}).get("drop") or []),
            f"{where}: non-root, read-only root fs, no privilege escalation, capabilities dropped")
    resources_spec = container.get("resources") or {}
    R.check(bool((resources_spec.get("requests") or {}).get("cpu")) and bool((resources_spec.get("limits") or {}).get("memory")),
            f"{where}: CPU request (for the HPA) and memory limit set")
    R.check(bool(pod.get("topologySpreadConstraints") or (pod.get("affinity") or {}).get("podAntiAffinity")),
            f"{where}: topology spread / anti-affinity")
    pre_stop = ((container.get("lifecycle") or {}).get("preStop") or {})
    sleep_s = 0.0
    command = (pre_stop.get("exec") or {}).get("command") or []
    if command[:1] == ["sleep"] and len(command) == 2:
        sleep_s = float(command[1])
    elif "sleep" in pre_stop:
        sleep_s = float(pre_stop["sleep"]["seconds"])
    R.check(sleep_s > 0, f"{where}: preStop sleep ({sleep_s:g}s) so endpoints drain before SIGTERM")

    # Volumes: the ConfigMap at /etc/scopegate.
    mounts = {m["name"]: m for m in container.get("volumeMounts", [])}
    config_volume = next((v for v in pod.get("volumes", []) if "configMap" in v), None)
    cm_name = (config_volume or {}).get("configMap", {}).get("name")
    R.check(config_volume is not None and mounts.get(config_volume["name"], {}).get("mountPath") == "/etc/scopegate",
            f"{where}: ConfigMap {cm_name} mounted at /etc/scopegate")
    configmap = resources.get(("ConfigMap", cm_name))
    if not R.check(configmap is not None and "gateway.yaml" in (configmap.get("data") or {}),
                   f"{where}: ConfigMap {cm_name} exists with a gateway.yaml key"):
        return
    config_text = configmap["data"]["gateway.yaml"]
    try:
        config = yaml.safe_load(config_text)
    except yaml.YAMLError as err:
        R.fail(f"{label}: ConfigMap/{cm_name}: gateway.yaml parses as YAML", str(err))
        return
    server = check_gateway_shape(config, f"{label}: ConfigMap/{cm_name} gateway.yaml")
    grace = duration_seconds(server.get("shutdown_grace", "30s"))
    tgps = pod.get("terminationGracePeriodSeconds", 30)
    R.check(tgps > sleep_s + grace,
            f"{where}: terminationGracePeriodSeconds {tgps} > preStop {sleep_s:g}s + server.shutdown_grace {grace:g}s")

    # Env: every ${VAR} the config needs is set by the Deployment, from the Secret.
    env_values: dict[str, str] = {}
    secret_refs: dict[str, tuple[str, str]] = {}
    for item in container.get("env", []):
        if "value" in item:
            env_values[item["name"]] = item["value"]
        ref = (item.get("valueFrom") or {}).get("secretKeyRef")
        if ref:
            secret_refs[item["name"]] = (ref["name"], ref["key"])
    for source in container.get("envFrom", []):
        if "secretRef" in source:
            secret = resources.get(("Secret", source["secretRef"]["name"]))
            for key in (secret or {}).get("stringData", {}) or {}:
                secret_refs[key] = (source["secretRef"]["name"], key)
    required, _ = env_refs(config_text)
    missing = sorted(required - set(env_values) - set(secret_refs))
    R.check(not missing, f"{where}: env provides every ${{VAR}} of gateway.yaml ({', '.join(sorted(required))})",
            f"not set: {missing}")
    R.check("SCOPEGATE_KEY_ENCRYPTION_KEY" in secret_refs,
            f"{where}: SCOPEGATE_KEY_ENCRYPTION_KEY comes from a Secret")
    secrets_ok, problems = True, []
    for var, (secret_name, key) in sorted(secret_refs.items()):
        secret = resources.get(("Secret", secret_name))
        data = (secret or {}).get("stringData") or {}
        if secret is None and secret_name in external_secrets:
            # Not rendered: the user's own Secret. Check the config with placeholders.
            env_values[var] = (password_hash() if var.endswith("_PASSWORD_HASH")
                               else secrets.token_hex(32) if var == "SCOPEGATE_KEY_ENCRYPTION_KEY"
                               else "postgres://scopegate:placeholder@postgres:5432/scopegate"
                               if var == "SCOPEGATE_DATABASE_URL" else f"placeholder-{var.lower()}-value")
            continue
        if secret is None or key not in data:
            secrets_ok = False
            problems.append(f"{var}: Secret {secret_name} has no key {key}")
            continue
        if "CHANGE-ME" not in str(data[key]):
            secrets_ok = False
            problems.append(f"{secret_name}.{key} is not a marked placeholder (must contain CHANGE-ME)")
        if var.endswith("_PASSWORD_HASH"):
            env_values[var] = password_hash()  # the placeholder is deliberately not a hash
        elif var == "SCOPEGATE_KEY_ENCRYPTION_KEY":
            # Deliberately not a key either: `run` (and so `check`) refuses the
            # placeholder, so a Secret deployed unedited fails loudly instead of
            # encrypting with a published key. Check with a real one.
            env_values[var] = secrets.token_hex(32)
        else:
            env_values[var] = str(data[key])
    outside = sorted({n for n, _ in secret_refs.values()} & set(external_secrets))
    R.check(secrets_ok, f"{where}: every secretKeyRef exists in the Secret, and every Secret value is a CHANGE-ME placeholder"
            + (f" (not rendered, placeholders used: {', '.join(outside)})" if outside else ""),
            "; ".join(problems))
    scopegate_check(config_text, env_values,
                    f"{label}: ConfigMap/{cm_name} gateway.yaml (env: the Deployment's, with the Secret's placeholder values)")

    # Services select the pods and target existing ports.
    # The gateway's Services (not a dev database's).
    services = [d for (k, _), d in resources.items() if k == "Service"
                and (d["metadata"].get("labels") or {}).get("app.kubernetes.io/component") != "postgresql"]
    for svc in services:
        selector = svc["spec"].get("selector") or {}
        sname = svc["metadata"]["name"]
        R.check(bool(selector) and selector.items() <= pod_labels.items(),
                f"{label}: Service/{sname}: selector matches the {dname} pods")
        targets = [p.get("targetPort") for p in svc["spec"]["ports"]]
        R.check(all((t in ports) if isinstance(t, str) else (t in ports.values()) for t in targets),
                f"{label}: Service/{sname}: targetPorts {targets} exist on the container")
    proxy_svcs = [s for s in services if any(p.get("targetPort") in ("http", PROXY_PORT) for p in s["spec"]["ports"])]
    admin_svcs = [s for s in services if any(p.get("targetPort") in ("admin", ADMIN_PORT) for p in s["spec"]["ports"])]
    R.check(bool(proxy_svcs) and bool(admin_svcs), f"{label}: a Service for the proxy port and one for the admin port")
    R.check(not any(s in admin_svcs for s in proxy_svcs),
            f"{label}: the proxy Service does not also expose the admin port")

    for (kind, name), doc in resources.items():
        if kind == "HorizontalPodAutoscaler":
            ref = doc["spec"]["scaleTargetRef"]
            metrics = doc["spec"].get("metrics") or []
            R.check(doc["apiVersion"] == "autoscaling/v2" and ref.get("kind") == "Deployment" and ref.get("name") == dname,
                    f"{label}: HorizontalPodAutoscaler/{name}: autoscaling/v2, targets Deployment/{dname}")
            R.check(any((m.get("resource") or {}).get("name") == "cpu" for m in metrics)
                    and doc["spec"].get("minReplicas", 1) >= 2,
                    f"{label}: HorizontalPodAutoscaler/{name}: scales on CPU, minReplicas {doc['spec'].get('minReplicas')}")
        if kind == "PodDisruptionBudget":
            selector = doc["spec"]["selector"].get("matchLabels") or {}
            R.check(doc["apiVersion"] == "policy/v1" and bool(selector) and selector.items() <= pod_labels.items(),
                    f"{label}: PodDisruptionBudget/{name}: policy/v1, selects the {dname} pods")
        if kind == "ServiceMonitor":
            selector = doc["spec"]["selector"].get("matchLabels") or {}
            chosen = [s for s in services if selector.items() <= (s["metadata"].get("labels") or {}).items()]
            port_names = {p.get("name") for s in chosen for p in s["spec"]["ports"]}
            ep_ports = {ep.get("port") for ep in doc["spec"].get("endpoints", [])}
            R.check(chosen == admin_svcs and ep_ports <= port_names,
                    f"{label}: ServiceMonitor/{name}: selects the admin Service ({', '.join(s['metadata']['name'] for s in chosen)}) and its port {sorted(ep_ports)}")
            job_label = doc["spec"].get("jobLabel")
            job = (chosen[0]["metadata"].get("labels") or {}).get(job_label) if chosen and job_label else None
            R.check(job == "scopegate", f"{label}: ServiceMonitor/{name}: scraped as job=\"scopegate\" (jobLabel {job_label}), as alerts.yaml expects")


# --------------------------------------------------------------------------------------
# Helm chart
# --------------------------------------------------------------------------------------

# (values file under the chart's ci/ or None, label, check_gateway_resources arguments)
HELM_SCENARIOS = [
    (None, "default values",
     dict(replicas=3, kinds=["ConfigMap", "Secret", "Deployment", "Service", "PodDisruptionBudget"])),
    ("all-features-values.yaml", "every optional feature on",
     dict(replicas=None, one_scrape_mechanism=True,
          kinds=["ConfigMap", "Secret", "Deployment", "Service", "HorizontalPodAutoscaler",
                 "PodDisruptionBudget", "ServiceMonitor", "StatefulSet"])),
    ("existing-secret-values.yaml", "existing Secrets, one replica",
     dict(replicas=1, kinds=["ConfigMap", "Deployment", "Service"],
          external_secrets={"scopegate-secrets", "scopegate-database"})),
]


def check_helm() -> None:
    chart = DEPLOY / "helm" / "scopegate"
    chart_yaml = chart / "Chart.yaml"
    if not R.check(chart_yaml.is_file(), f"{rel(chart_yaml)} exists"):
        return
    meta = load_yaml_docs(chart_yaml)[0]
    cargo = (DEPLOY.parent / "Cargo.toml").read_text(encoding="utf-8")
    version = re.search(r'^version\s*=\s*"([^"]+)"', cargo, re.M)
    R.check(meta.get("apiVersion") == "v2" and version is not None and str(meta.get("appVersion")) == version.group(1),
            f"Chart.yaml: apiVersion v2, appVersion {meta.get('appVersion')} is Cargo.toml's version "
            f"({version.group(1) if version else '?'})")
    if not HELM:
        R.skip("helm lint / helm template", "no helm binary (deploy/validate.sh installs one)")
        return
    result = run([HELM, "version", "--short"])
    R.check(result.returncode == 0, f"helm {result.stdout.strip()}", result.stderr.strip())
    kustomize_config = None
    cm_path = DEPLOY / "kubernetes" / "configmap.yaml"
    if cm_path.is_file():
        kustomize_config = load_yaml_docs(cm_path)[0]["data"]["gateway.yaml"]

    for values_file, label, expect in HELM_SCENARIOS:
        args = ["-f", str(chart / "ci" / values_file)] if values_file else []
        label = f"helm ({label})"
        result = run([HELM, "lint", "--strict", str(chart)] + args)
        if not R.check(result.returncode == 0, f"{label}: helm lint --strict",
                       (result.stdout + result.stderr).strip()):
            continue
        result = run([HELM, "template", "scopegate", str(chart)] + args)
        if not R.check(result.returncode == 0, f"{label}: helm template renders", result.stderr.strip()):
            continue
        try:
            docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]
        except yaml.YAMLError as err:
            R.fail(f"{label}: the rendered manifests parse as YAML", str(err))
            continue
        resources = validate_documents([(label, doc) for doc in docs])
        check_gateway_resources(resources, label, **expect)
        config = next((d for (k, _), d in resources.items() if k == "ConfigMap"), {}).get("data", {}).get("gateway.yaml")
        deployment = next((d for (k, _), d in resources.items() if k == "Deployment"), None)
        if deployment and config is not None:
            import hashlib
            annotations = deployment["spec"]["template"]["metadata"].get("annotations") or {}
            R.check(annotations.get("checksum/config") == hashlib.sha256(config.encode()).hexdigest(),
                    f"{label}: checksum/config annotation is the ConfigMap's gateway.yaml sha256 (a config change rolls the pods)")
        if values_file is None and kustomize_config is not None:
            R.check(config == kustomize_config,
                    f"{label}: the default config is deploy/kubernetes/configmap.yaml's gateway.yaml, verbatim")
        if "StatefulSet" in expect["kinds"]:
            secret = next((d for (k, _), d in resources.items() if k == "Secret"), {})
            data = secret.get("stringData") or {}
            services = {n for (k, n), d in resources.items() if k == "Service"
                        and (d["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == "postgresql"}
            url = str(data.get("SCOPEGATE_DATABASE_URL", ""))
            host = re.match(r"postgres(?:ql)?://[^@]*@([^:/]+)", url)
            R.check("POSTGRES_PASSWORD" in data and host is not None and host.group(1) in services,
                    f"{label}: SCOPEGATE_DATABASE_URL points at the dev PostgreSQL Service ({', '.join(sorted(services))})",
                    f"url {url!r}, services {sorted(services)}")
        if expect.get("external_secrets"):
            R.check(not any(k == "Secret" for k, _ in resources),
                    f"{label}: no Secret rendered (secrets.existingSecret, externalDatabase.existingSecret)")

    # The chart refuses a config that does not listen on its ports.
    result = run([HELM, "template", "scopegate", str(chart), "--set", "ports.http=8081"])
    R.check(result.returncode != 0 and "server.listen" in result.stderr,
            "helm: ports.http that disagrees with the config's server.listen is refused",
            (result.stdout + result.stderr).strip()[-400:])


# --------------------------------------------------------------------------------------
# Compose
# --------------------------------------------------------------------------------------

COMPOSE_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def compose_interpolate(value: str, problems: list[str]) -> str:
    """Compose interpolation with an empty environment: what a user gets without .env."""
    if not isinstance(value, str):
        return value
    value = value.replace("$$", "\0")

    def sub(match: re.Match) -> str:
        name, op, arg, bare = match.groups()
        if bare or not op:
            problems.append(f"${{{name or bare}}} has no default: compose would substitute an empty string")
            return ""
        if op.endswith("?"):
            problems.append(f"${{{name}}} is required from the environment")
            return ""
        return arg

    return COMPOSE_VAR.sub(sub, value).replace("\0", "$")


def check_compose() -> None:
    path = DEPLOY / "compose.yaml"
    if not R.check(path.is_file(), f"{rel(path)} exists"):
        return
    if CHECK_JSONSCHEMA:
        result = run([CHECK_JSONSCHEMA, "--builtin-schema", "vendor.compose-spec", str(path)], timeout=60)
        R.check(result.returncode == 0, "compose.yaml: valid against the Compose Specification schema (check-jsonschema)",
                (result.stdout + result.stderr).strip())
    else:
        R.fail("compose.yaml: Compose Specification schema", "check-jsonschema not available")
    try:
        compose = load_yaml_docs(path)[0]
    except yaml.YAMLError as err:
        R.fail("compose.yaml: parses as YAML", str(err))
        return
    services = compose.get("services") or {}
    gateways = sorted(name for name, svc in services.items()
                      if "deploy/Dockerfile" in str((svc.get("build") or {}).get("dockerfile", "")))
    R.check(len(gateways) == 2, f"compose.yaml: two scopegate replicas built from deploy/Dockerfile ({', '.join(gateways)})")
    postgres = next((n for n, s in services.items() if str(s.get("image", "")).startswith("postgres:15")), None)
    R.check(postgres is not None and "healthcheck" in services[postgres],
            f"compose.yaml: postgres:15 with a healthcheck ({postgres})")
    prometheus = next((n for n, s in services.items() if "prometheus" in str(s.get("image", ""))), None)
    R.check(prometheus is not None, f"compose.yaml: a Prometheus service ({prometheus})")
    echo = next((n for n, s in services.items() if "echo" in str(s.get("image", ""))), None)
    R.check(echo is not None, f"compose.yaml: an example upstream ({echo}: {services.get(echo, {}).get('image')})")

    published = []
    for name in gateways:
        svc = services[name]
        build = svc["build"]
        context = (path.parent / build.get("context", ".")).resolve()
        R.check(context == DEPLOY.parent.resolve() and (context / build["dockerfile"]).is_file(),
                f"compose.yaml: {name} builds with context .. (the repository root) and deploy/Dockerfile")
        depends = svc.get("depends_on") or {}
        R.check(isinstance(depends, dict) and (depends.get(postgres) or {}).get("condition") == "service_healthy",
                f"compose.yaml: {name} waits for {postgres} to be healthy")
        problems: list[str] = []
        env = {}
        for key, value in (svc.get("environment") or {}).items():
            if value is not None:  # a null value passes through from the shell if set
                env[key] = str(compose_interpolate(str(value), problems))
        R.check(not problems, f"compose.yaml: {name} environment works without a .env file", "; ".join(problems))
        mounts = {}
        for volume in svc.get("volumes") or []:
            source, target = str(volume).split(":")[:2]
            if source.startswith("."):
                mounts[target] = (path.parent / source).resolve()
        config_target = env.get("SCOPEGATE_CONFIG", "/etc/scopegate/gateway.yaml")
        config_path = mounts.get(config_target)
        if not R.check(config_path is not None and config_path.is_file(),
                       f"compose.yaml: {name} mounts a gateway.yaml at {config_target} ({rel(config_path) if config_path else 'none'})"):
            continue
        CHECKED_CONFIGS.add(config_path)
        text = config_path.read_text(encoding="utf-8")
        config = yaml.safe_load(text)
        server = check_gateway_shape(config, f"{rel(config_path)} ({name})")
        required, _ = env_refs(text)
        missing = sorted(required - set(env))
        R.check(not missing, f"compose.yaml: {name} environment provides every ${{VAR}} of {rel(config_path)}",
                f"not set: {missing}")
        grace = duration_seconds(server.get("shutdown_grace", "30s"))
        stop = compose_duration(svc.get("stop_grace_period", "10s"))
        R.check(stop > grace, f"compose.yaml: {name} stop_grace_period {stop:g}s > server.shutdown_grace {grace:g}s")
        health = " ".join(map(str, (svc.get("healthcheck") or {}).get("test", [])))
        R.check(f":{ADMIN_PORT}/" in health, f"compose.yaml: {name} healthcheck probes the admin port")
        scopegate_check(text, env, f"{rel(config_path)} (env: compose.yaml's {name}, no .env)")
        published += [str(p) for p in svc.get("ports") or []]
    R.check(len(set(published)) == len(published), f"compose.yaml: replicas publish distinct ports ({', '.join(published)})")

    # Prometheus scrapes every replica's admin port.
    prom_config_path = DEPLOY / "prometheus" / "prometheus.yml"
    if prometheus and prom_config_path.is_file():
        mounted = [str(v).split(":")[0] for v in services[prometheus].get("volumes") or []]
        R.check(any((path.parent / m).resolve() == prom_config_path.resolve() for m in mounted),
                f"compose.yaml: {prometheus} mounts {rel(prom_config_path)}")
        prom = load_yaml_docs(prom_config_path)[0]
        targets = {t for job in prom.get("scrape_configs", []) if job.get("job_name") == "scopegate"
                   for sc in job.get("static_configs", []) for t in sc.get("targets", [])}
        wanted = {f"{g}:{ADMIN_PORT}" for g in gateways}
        R.check(targets == wanted, f"prometheus.yml: job scopegate scrapes {', '.join(sorted(wanted))}",
                f"targets {sorted(targets)}")
        for rule_file in prom.get("rule_files", []):
            R.check(any(Path(m).name == Path(rule_file).name for m in mounted),
                    f"compose.yaml: {prometheus} mounts rule file {rule_file} next to prometheus.yml")

    # nginx (if any) balances over the replicas' proxy ports.
    for name, svc in services.items():
        if "nginx" not in str(svc.get("image", "")):
            continue
        conf = next(((path.parent / str(v).split(":")[0]).resolve() for v in svc.get("volumes") or []
                     if str(v).split(":")[1] == "/etc/nginx/nginx.conf"), None)
        if R.check(conf is not None and conf.is_file(), f"compose.yaml: {name} mounts an nginx.conf"):
            servers = set(re.findall(r"^\s*server\s+([\w.-]+:\d+)", conf.read_text(), re.M))
            wanted = {f"{g}:{PROXY_PORT}" for g in gateways}
            R.check(servers == wanted, f"{rel(conf)}: upstream is {', '.join(sorted(wanted))}", f"found {sorted(servers)}")


# --------------------------------------------------------------------------------------
# gateway.yaml files not covered above
# --------------------------------------------------------------------------------------

def check_other_gateway_files(done: set[Path]) -> None:
    for path in sorted(DEPLOY.rglob("gateway.yaml")):
        if path.resolve() in done:
            continue
        text = path.read_text(encoding="utf-8")
        required, _ = env_refs(text)
        env = {name: ("$argon2id$placeholder" if name.endswith("_PASSWORD_HASH") else f"placeholder-{name.lower()}-value")
               for name in required}
        check_gateway_shape(yaml.safe_load(text), rel(path))
        scopegate_check(text, env, f"{rel(path)} (placeholder values for {', '.join(sorted(required)) or 'no variables'})")


# --------------------------------------------------------------------------------------
# Prometheus rules
# --------------------------------------------------------------------------------------

def check_promtool_rules(exprs: dict[str, str], label: str) -> None:
    """Parses PromQL with promtool by wrapping expressions as recording rules."""
    if not PROMTOOL:
        return
    with tempfile.TemporaryDirectory() as tmp:
        rules = {"groups": [{"name": "syntax", "rules": [
            {"record": f"check:{i}", "expr": expr} for i, expr in enumerate(exprs.values())]}]}
        path = Path(tmp) / "rules.yaml"
        path.write_text(yaml.safe_dump(rules), encoding="utf-8")
        result = run([PROMTOOL, "check", "rules", str(path)])
    detail = (result.stdout + result.stderr).strip()
    if result.returncode != 0:
        names = list(exprs)
        for i, name in enumerate(names):
            detail = detail.replace(f"check:{i}", name)
    R.check(result.returncode == 0, f"{label}: every PromQL expression parses (promtool)", detail)


def check_prometheus() -> None:
    pdir = DEPLOY / "prometheus"
    alerts_path = pdir / "alerts.yaml"
    if not R.check(alerts_path.is_file(), f"{rel(alerts_path)} exists"):
        return
    doc = load_yaml_docs(alerts_path)[0]
    groups = doc.get("groups") if isinstance(doc, dict) else None
    R.check(isinstance(groups, list) and bool(groups) and set(doc) == {"groups"},
            "alerts.yaml: a rule file with a top-level groups: list (PrometheusRule spec compatible)")
    rules = [r for g in groups or [] for r in g.get("rules", [])]
    alerts = [r for r in rules if "alert" in r]
    problems = []
    for r in alerts:
        if (r.get("labels") or {}).get("severity") not in ("critical", "warning", "info"):
            problems.append(f"{r['alert']}: labels.severity must be critical|warning|info")
        if not {"summary", "description"} <= set(r.get("annotations") or {}):
            problems.append(f"{r['alert']}: needs summary and description annotations")
    names = [r["alert"] for r in alerts]
    if len(names) != len(set(names)):
        problems.append("duplicate alert names")
    R.check(not problems, f"alerts.yaml: {len(alerts)} alerts, each with a severity, summary and description",
            "; ".join(problems))
    exprs = [str(r.get("expr", "")) for r in rules]
    check_metric_names("alerts.yaml", exprs)
    joined = "\n".join(exprs)
    coverage = {
        "auth failure ratio": r"scopegate_auth_failures_total",
        "JWKS fetch errors": r'scopegate_jwks_fetches_total\{result="error"\}',
        "5xx ratio": r'scopegate_requests_total\{status=~"5\.\."\}',
        "p99 latency": r"histogram_quantile\(0\.99,[\s\S]*scopegate_request_duration_seconds_bucket",
        "instances up": r'\bup\{job="scopegate"\}',
        "config reload errors": r'scopegate_config_reloads_total\{result="error"\}',
        "issuer token errors": r"scopegate_token_errors_total",
    }
    missing = [what for what, pattern in coverage.items() if not re.search(pattern, joined)]
    R.check(not missing, f"alerts.yaml: covers {', '.join(coverage)}", f"missing: {missing}")

    if not PROMTOOL:
        R.skip("promtool checks", "promtool not available (structural checks only)")
        return
    result = run([PROMTOOL, "check", "rules", str(alerts_path)])
    R.check(result.returncode == 0, f"promtool check rules {rel(alerts_path)}", (result.stdout + result.stderr).strip())
    tests_path = pdir / "alerts_test.yaml"
    if R.check(tests_path.is_file(), f"{rel(tests_path)} exists (alert unit tests)"):
        # rule_files in the test file are relative to it: run promtool from there.
        result = subprocess.run([PROMTOOL, "test", "rules", tests_path.name], cwd=pdir,
                                capture_output=True, text=True, timeout=120)
        count = len((load_yaml_docs(tests_path)[0] or {}).get("tests", []))
        R.check(result.returncode == 0, f"promtool test rules {rel(tests_path)} ({count} scenarios)",
                (result.stdout + result.stderr).strip())
    prom_path = pdir / "prometheus.yml"
    if prom_path.is_file():
        result = run([PROMTOOL, "check", "config", str(prom_path)])
        R.check(result.returncode == 0, f"promtool check config {rel(prom_path)}", (result.stdout + result.stderr).strip())


# --------------------------------------------------------------------------------------
# Grafana
# --------------------------------------------------------------------------------------

def check_grafana() -> None:
    path = DEPLOY / "grafana" / "scopegate.json"
    if not R.check(path.is_file(), f"{rel(path)} exists"):
        return
    try:
        dash = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        R.fail(f"{rel(path)}: parses as JSON", str(err))
        return
    R.check(True, f"{rel(path)}: parses as JSON")
    R.check(isinstance(dash.get("schemaVersion"), int) and dash["schemaVersion"] >= 36,
            f"scopegate.json: schemaVersion {dash.get('schemaVersion')} >= 36")
    variables = {v.get("name"): v for v in (dash.get("templating") or {}).get("list", [])}
    ds_vars = [n for n, v in variables.items() if v.get("type") == "datasource" and v.get("query") == "prometheus"]
    R.check(bool(ds_vars), f"scopegate.json: a Prometheus datasource template variable ({', '.join(ds_vars)})")
    ds_refs = {f"${{{n}}}" for n in ds_vars} | {f"${n}" for n in ds_vars}

    def uses_var(ds) -> bool:
        uid = ds.get("uid") if isinstance(ds, dict) else ds
        return uid in ds_refs

    for name, var in variables.items():
        if var.get("type") == "query":
            R.check(uses_var(var.get("datasource")), f"scopegate.json: variable ${name} queries the datasource variable")

    def walk(panels):
        for p in panels:
            yield p
            yield from walk(p.get("panels") or [])

    panels = list(walk(dash.get("panels") or []))
    ids = [p.get("id") for p in panels]
    R.check(len(ids) == len(set(ids)) and None not in ids, f"scopegate.json: {len(panels)} panels with unique ids")
    problems, exprs = [], {}
    for p in panels:
        title = p.get("title", f"id {p.get('id')}")
        if p.get("type") == "row":
            continue
        if not isinstance(p.get("gridPos"), dict):
            problems.append(f"{title}: no gridPos")
        if not uses_var(p.get("datasource")):
            problems.append(f"{title}: datasource is not the template variable")
        targets = p.get("targets") or []
        if not targets:
            problems.append(f"{title}: no targets")
        for t in targets:
            if not t.get("expr"):
                problems.append(f"{title}: target {t.get('refId')} has no expr")
            elif not uses_var(t.get("datasource", p.get("datasource"))):
                problems.append(f"{title}: target {t.get('refId')} datasource is not the template variable")
            else:
                exprs[f"{title} [{t.get('refId')}]"] = t["expr"]
    R.check(not problems, f"scopegate.json: every panel has the datasource variable and targets with a query",
            "; ".join(problems))
    used = check_metric_names("scopegate.json", list(exprs.values()))
    missing = sorted(set(METRICS) - used)
    R.check(not missing, "scopegate.json: a panel for every scopegate metric family", f"missing: {missing}")
    # Grafana's own variables become something promtool can parse.
    substituted = {}
    for name, expr in exprs.items():
        expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$__range", "1h")
        expr = re.sub(r"\$\{?([A-Za-z_]\w*)\}?", ".*", expr)
        substituted[name] = expr
    if PROMTOOL:
        check_promtool_rules(substituted, "scopegate.json")
    else:
        R.skip("scopegate.json: PromQL syntax", "promtool not available")


# --------------------------------------------------------------------------------------

def main() -> int:
    global DEPLOY, SCOPEGATE, PROMTOOL, CHECK_JSONSCHEMA, HELM
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deploy-dir", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--scopegate", help="scopegate binary: run `scopegate check` on every config")
    parser.add_argument("--promtool", default=shutil.which("promtool"))
    parser.add_argument("--check-jsonschema", default=shutil.which("check-jsonschema"))
    parser.add_argument("--helm", default=shutil.which("helm"))
    args = parser.parse_args()
    DEPLOY = args.deploy_dir.resolve()
    SCOPEGATE = args.scopegate
    PROMTOOL = args.promtool
    CHECK_JSONSCHEMA = args.check_jsonschema
    HELM = args.helm
    if SCOPEGATE:
        version = run([SCOPEGATE, "--version"], env=clean_env({}))
        R.check(version.returncode == 0, f"scopegate binary {SCOPEGATE}: {version.stdout.strip()}",
                version.stderr.strip())

    sections = [
        ("Dockerfile", check_dockerfile),
        ("Kubernetes manifests", check_kubernetes),
        ("Helm chart", check_helm),
        ("compose", check_compose),
        ("Prometheus", check_prometheus),
        ("Grafana", check_grafana),
    ]
    for title, fn in sections:
        print(f"\n== {title}")
        try:
            fn()
        except Exception as err:  # a crash in a check is a failure, with its cause
            R.fail(f"{title}: checks ran to completion", f"{type(err).__name__}: {err}")
    print("\n== other gateway.yaml files under deploy/")
    check_other_gateway_files(CHECKED_CONFIGS)

    print(f"\ndeploy validation: {R.ok} ok, {R.failed} failed, {R.skipped} skipped")
    return 1 if R.failed else 0


DEPLOY = Path(".")
SCOPEGATE = None
PROMTOOL = None
CHECK_JSONSCHEMA = None
HELM = None
CHECKED_CONFIGS: set[Path] = set()  # gateway.yaml files already run through scopegate check

if __name__ == "__main__":
    sys.exit(main())
