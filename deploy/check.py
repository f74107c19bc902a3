#!/usr/bin/env python3
"""Offline checks of deploy/: the Kubernetes base, the Grafana dashboard, the Prometheus
rules and the sidecar's cachet.toml. Run through deploy/check, which installs promtool
and kubernetes-validate first; every problem is printed, and the exit status is 1 if
there was any.

    deploy/check                 check everything
    deploy/check --regenerate    rewrite deploy/kubernetes/cachet.toml from
                                 config/cachet.toml first

Environment: PROMTOOL (default: promtool on PATH), CACHET_BIN (default:
target/debug/cachet, built with cargo if missing), KUBECTL (default: kubectl on PATH,
optional: when present, `kubectl kustomize` renders the base as well; "none": skip it).
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from pathlib import Path

import yaml  # PyYAML, installed with kubernetes-validate
import kubernetes_validate

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
DASHBOARD = DEPLOY / "grafana" / "cachet.json"
RULES = DEPLOY / "prometheus" / "cachet-rules.yml"
RULES_TEST = DEPLOY / "prometheus" / "cachet-rules.test.yml"
SHIPPED_CONFIG = ROOT / "config" / "cachet.toml"
SIDECAR_CONFIG = K8S / "cachet.toml"

# Native sidecars (an init container with restartPolicy: Always) are on by default from
# Kubernetes 1.29; the manifests are validated against that and against the newest
# schemas kubernetes-validate bundles.
MIN_KUBERNETES = "1.29.0"

# Two labelled counter families being added beside the unlabelled cache counters; the
# dashboard uses them before (or while) they are listed in the metrics reference.
# Exactly these two; everything else must be in the reference.
ALLOWED_UNDOCUMENTED = {
    "cachet_keyspace_reads_total",  # {keyspace="<rule pattern>", outcome="hit"|"miss"}
    "cachet_keyspace_fills_total",  # {keyspace="<rule pattern>", outcome="stored"|"refused"}
}

# Resources whose schema kubernetes-validate does not bundle (CRDs): checked by hand.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "PodMonitor")}

problems: list[str] = []


def fail(section: str, message: str) -> None:
    problems.append(f"[{section}] {message}")
    print(f"FAIL [{section}] {message}", flush=True)


def ok(section: str, message: str) -> None:
    print(f"ok   [{section}] {message}", flush=True)


def rel(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------------
# The sidecar's cachet.toml: config/cachet.toml with a few settings changed.

SIDECAR_HEADER = """\
# cachet as a native sidecar in Kubernetes (deploy/kubernetes): the ConfigMap's
# cachet.toml. GENERATED from config/cachet.toml by `deploy/check --regenerate`, which
# changes only the settings marked "(sidecar)"; deploy/check fails when this file and
# config/cachet.toml drift apart. For your own deployment, edit a copy freely (its
# [[keyspace]] rules especially).
"""

# (section, key, new value, why): the line setting `key` in `section`, or its
# commented-out example (`# key = ...`), becomes `key = value   # (sidecar) why`.
SIDECAR_SETTINGS = [
    ("upstream", "url", '"redis://redis:6379/0"', 'the Service "redis" in the pod\'s namespace'),
    (
        "upstream",
        "password_file",
        '"/run/secrets/redis/password"',
        'the Secret "redis", key "password"',
    ),
    ("admin", "address", '"0.0.0.0:9180"', "the kubelet's probes and Prometheus use the pod's IP"),
]


def generate_sidecar_config(shipped: str) -> str:
    lines = shipped.splitlines()
    if not lines or not lines[0].startswith("# cachet"):
        raise ValueError("config/cachet.toml no longer starts with its '# cachet...' title line")
    out = SIDECAR_HEADER.splitlines()
    section = ""
    done = {(s, k): 0 for s, k, _, _ in SIDECAR_SETTINGS}
    for line in lines[1:]:
        header = re.match(r"^\s*\[\[?\s*([A-Za-z0-9_.]+)\s*\]\]?", line)
        if header:
            section = header.group(1)
        replaced = False
        for s, key, value, why in SIDECAR_SETTINGS:
            if section == s and re.match(rf"^#?\s*{re.escape(key)}\s*=", line):
                out.append(f"{key} = {value}   # (sidecar) {why}")
                done[(s, key)] += 1
                replaced = True
                break
        if not replaced:
            out.append(line)
    for (s, key), n in done.items():
        if n != 1:
            raise ValueError(
                f"config/cachet.toml: expected exactly one `{key} = ...` line (set or "
                f"commented out) in [{s}], found {n}: update SIDECAR_SETTINGS in deploy/check.py"
            )
    return "\n".join(out) + "\n"


def check_sidecar_config(regenerate: bool) -> None:
    section = "config"
    try:
        want = generate_sidecar_config(SHIPPED_CONFIG.read_text())
    except (OSError, ValueError) as e:
        fail(section, str(e))
        return
    have = SIDECAR_CONFIG.read_text() if SIDECAR_CONFIG.exists() else ""
    if regenerate and have != want:
        SIDECAR_CONFIG.write_text(want)
        ok(section, f"regenerated {rel(SIDECAR_CONFIG)} from {rel(SHIPPED_CONFIG)}")
    elif have != want:
        diff = list(
            difflib.unified_diff(
                have.splitlines(),
                want.splitlines(),
                rel(SIDECAR_CONFIG),
                f"generated from {rel(SHIPPED_CONFIG)}",
                lineterm="",
            )
        )
        fail(
            section,
            f"{rel(SIDECAR_CONFIG)} is not what config/cachet.toml generates; run "
            "`deploy/check --regenerate` (or change SIDECAR_SETTINGS in deploy/check.py):\n    "
            + "\n    ".join(diff[:60])
            + ("\n    ..." if len(diff) > 60 else ""),
        )
    else:
        ok(section, f"{rel(SIDECAR_CONFIG)} is config/cachet.toml with the sidecar's settings")


def cachet_binary() -> Path | None:
    """The cachet binary to run: CACHET_BIN, else target/debug/cachet (built if missing)."""
    if os.environ.get("CACHET_BIN"):
        return Path(os.environ["CACHET_BIN"])
    binary = ROOT / "target" / "debug" / "cachet"
    if not binary.exists():
        print("deploy/check: building target/debug/cachet (cargo build --bin cachet)", flush=True)
        r = subprocess.run(["cargo", "build", "--quiet", "--bin", "cachet"], cwd=ROOT)
        if r.returncode != 0 or not binary.exists():
            return None
    return binary


def cachet_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("CACHET_UPSTREAM", None)  # would override the files' [upstream] url
    return env


def check_config_files(binary: Path | None) -> None:
    """`cachet --check-config` on the Kubernetes base's TOML files (other folders of
    deploy/ have checks of their own)."""
    section = "config"
    if binary is None:
        fail(section, "no cachet binary (cargo build --bin cachet failed): cannot run --check-config")
        return
    for path in sorted(K8S.glob("*.toml")):
        text = path.read_text()
        with tempfile.TemporaryDirectory(prefix="deploy-check-") as tmp:
            # password_file must be readable when the configuration loads: it is the
            # Secret's mount in the pod, so a stand-in file takes its place here.
            secret = Path(tmp) / "password"
            secret.write_text("not-the-password\n")
            text2, n = re.subn(
                r'(?m)^(\s*(?:upstream_)?password_file\s*=\s*)"[^"]*"', rf'\1"{secret}"', text
            )
            candidate = Path(tmp) / path.name
            candidate.write_text(text2)
            r = subprocess.run(
                [str(binary), "--config", str(candidate), "--check-config"],
                capture_output=True,
                text=True,
                env=cachet_env(),
            )
        note = f" ({n} password file(s) stood in for)" if n else ""
        if r.returncode == 0:
            ok(section, f"cachet --check-config {rel(path)}{note}")
        else:
            fail(
                section,
                f"cachet --check-config {rel(path)}{note} exited {r.returncode}:\n    "
                + (r.stdout + r.stderr).strip().replace("\n", "\n    "),
            )


# ---------------------------------------------------------------------------------
# Kubernetes: the kustomize base rendered (here, and by kubectl when present), each
# resource validated against the official schemas, and the sidecar's wiring checked.

KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "configMapGenerator", "images"}


def load_yaml_documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def pod_spec(resource: dict) -> dict | None:
    spec = resource.get("spec") or {}
    if resource.get("kind") == "Pod":
        return spec
    return ((spec.get("template") or {}).get("spec")) if "template" in spec else None


def all_containers(spec: dict) -> list[dict]:
    return list(spec.get("initContainers") or []) + list(spec.get("containers") or [])


def render_kustomization(directory: Path) -> tuple[list[dict], list[str]]:
    """The resources kustomize would produce, for the features this base uses (a
    ConfigMap generator's name suffix is a hash, though not kustomize's own)."""
    import hashlib

    errors: list[str] = []
    k = yaml.safe_load((directory / "kustomization.yaml").read_text()) or {}
    unknown = set(k) - KUSTOMIZATION_KEYS
    if unknown:
        errors.append(
            f"kustomization.yaml uses {sorted(unknown)}, which deploy/check.py's offline "
            f"renderer does not handle: teach render_kustomization() about it"
        )
    out: list[dict] = []
    for entry in k.get("resources") or []:
        path = directory / entry
        if not path.is_file():
            errors.append(f"kustomization.yaml: resource {entry} is not a file in {rel(directory)}")
            continue
        out.extend(load_yaml_documents(path))
    renamed: dict[str, str] = {}
    for gen in k.get("configMapGenerator") or []:
        unknown = set(gen) - {"name", "files", "literals"}
        if unknown:
            errors.append(f"configMapGenerator {gen.get('name')}: unhandled fields {sorted(unknown)}")
        data: dict[str, str] = {}
        for f in gen.get("files") or []:
            key, _, file = f.partition("=") if "=" in f else (Path(f).name, "", f)
            path = directory / file
            if not path.is_file():
                errors.append(f"configMapGenerator {gen['name']}: no file {file}")
                continue
            data[key] = path.read_text()
        for lit in gen.get("literals") or []:
            key, _, value = lit.partition("=")
            data[key] = value
        digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]
        name = f"{gen['name']}-{digest}"
        renamed[gen["name"]] = name
        out.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data})
    for resource in out:
        spec = pod_spec(resource)
        if spec is None:
            continue
        for volume in spec.get("volumes") or []:
            cm = volume.get("configMap")
            if cm and cm.get("name") in renamed:
                cm["name"] = renamed[cm["name"]]
        for c in all_containers(spec):
            for image in k.get("images") or []:
                name = re.sub(r"[@:][^/]*$", "", c.get("image", ""))
                if name == image["name"]:
                    new = image.get("newName", name)
                    if "digest" in image:
                        c["image"] = f"{new}@{image['digest']}"
                    else:
                        c["image"] = f"{new}:{image.get('newTag', 'latest')}"
            for env in c.get("envFrom") or []:
                ref = env.get("configMapRef")
                if ref and ref.get("name") in renamed:
                    ref["name"] = renamed[ref["name"]]
    return out, errors


def validate_schema(section: str, where: str, resource: dict, versions: list[str]) -> None:
    api, kind = resource.get("apiVersion"), resource.get("kind")
    name = (resource.get("metadata") or {}).get("name")
    if (api, kind) in CUSTOM_KINDS:
        return  # no bundled schema: check_podmonitor() checks it by hand
    for version in versions:
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            fail(section, f"{where}: {kind}/{name} against Kubernetes {version}: {path}: {e.message}")
            return
        except kubernetes_validate.SchemaNotFoundError as e:
            fail(section, f"{where}: {e.message} (a misspelt kind or apiVersion?)")
            return
    ok(section, f"{where}: {kind}/{name} valid (strict) against Kubernetes {', '.join(versions)}")


DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|ms|s|m|h)\s*$")


def seconds(duration: str) -> float:
    m = DURATION.match(duration)
    if not m:
        raise ValueError(f"not a duration: {duration!r}")
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}[m.group(2)]
    return float(m.group(1)) * scale


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def check_sidecar_wiring(section: str, resources: list[dict]) -> None:
    """What no schema says: the sidecar's pieces fit one another and cachet.toml."""
    configmaps = {r["metadata"]["name"]: r for r in resources if r.get("kind") == "ConfigMap"}
    workloads = [r for r in resources if pod_spec(r) is not None]
    if not workloads:
        fail(section, "the base renders no workload (Deployment) with a pod template")
        return
    for w in workloads:
        where = f"{w['kind']}/{w['metadata']['name']}"
        spec = pod_spec(w)
        errors: list[str] = []
        cachet = [c for c in spec.get("initContainers") or [] if c.get("name") == "cachet"]
        if any(c.get("name") == "cachet" for c in spec.get("containers") or []):
            errors.append("cachet is in containers: it must be a native sidecar (initContainers)")
        if len(cachet) != 1:
            fail(section, f"{where}: expected one init container named cachet, found {len(cachet)}")
            continue
        c = cachet[0]
        if c.get("restartPolicy") != "Always":
            errors.append("the cachet init container lacks restartPolicy: Always (a native sidecar)")
        mounts = {m["mountPath"].rstrip("/"): m for m in c.get("volumeMounts") or []}
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        # The configuration file: --config names a key of a mounted ConfigMap.
        args = list(c.get("command") or []) + list(c.get("args") or [])
        config = None
        if "--config" in args and args.index("--config") + 1 < len(args):
            path = args[args.index("--config") + 1]
            mount = mounts.get(os.path.dirname(path))
            volume = volumes.get(mount["name"]) if mount else None
            cm_name = ((volume or {}).get("configMap") or {}).get("name")
            cm = configmaps.get(cm_name)
            if cm is None:
                errors.append(f"--config {path}: its directory is not a mounted ConfigMap of the base")
            elif os.path.basename(path) not in (cm.get("data") or {}):
                errors.append(f"--config {path}: ConfigMap {cm_name} has no key {os.path.basename(path)}")
            else:
                try:
                    config = tomllib.loads(cm["data"][os.path.basename(path)])
                except tomllib.TOMLDecodeError as e:
                    errors.append(f"ConfigMap {cm_name}: {os.path.basename(path)} is not TOML: {e}")
        else:
            errors.append("cachet's args lack --config <file>")
        if config is None:
            for e in errors:
                fail(section, f"{where}: {e}")
            continue
        listen = (config.get("listen") or {})
        upstream = config.get("upstream") or {}
        admin = (config.get("admin") or {}).get("address", "127.0.0.1:9180")
        ports = {p.get("name"): p["containerPort"] for p in c.get("ports") or []}
        # Admin endpoint: reachable from the kubelet and Prometheus, on the probed port.
        if admin == "off":
            errors.append("[admin] address is off: no probes, no metrics")
        else:
            host, admin_port = host_port(admin)
            if host not in ("0.0.0.0", "::"):
                errors.append(f"[admin] address {admin}: the kubelet probes the pod's IP, so bind 0.0.0.0")
            for probe, want in (("startupProbe", "/readyz"), ("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
                get = (c.get(probe) or {}).get("httpGet")
                if not get:
                    errors.append(f"cachet has no {probe} with httpGet {want}")
                    continue
                port = ports.get(get["port"], get["port"])
                if get.get("path") != want or port != admin_port:
                    errors.append(f"{probe} is {get.get('path')} on port {get['port']}, want {want} on {admin_port} ([admin] address)")
            annotations = ((w.get("spec", {}).get("template") or {}).get("metadata") or {}).get("annotations") or {}
            if "prometheus.io/port" in annotations and annotations["prometheus.io/port"] != str(admin_port):
                errors.append(f"prometheus.io/port {annotations['prometheus.io/port']} is not the admin port {admin_port}")
            if admin_port not in ports.values():
                errors.append(f"the admin port {admin_port} is not among cachet's container ports")
        # Client port: loopback only, and the application's REDIS_URL points at it.
        host, listen_port = host_port(listen.get("address", "127.0.0.1:6380"))
        if host not in ("127.0.0.1", "::1", "localhost"):
            errors.append(f"[listen] address {host}:{listen_port}: a sidecar listens on loopback only")
        app_urls = [
            (cc["name"], e["value"])
            for cc in spec.get("containers") or []
            for e in cc.get("env") or []
            if e.get("name") == "REDIS_URL" and "value" in e
        ]
        if not app_urls:
            errors.append("no application container sets REDIS_URL")
        for name, url in app_urls:
            m = re.match(r"^rediss?://(?:[^@/]*@)?([^:/]+|\[[^\]]+\]):(\d+)", url)
            if not m or m.group(1).strip("[]") not in ("127.0.0.1", "::1", "localhost") or int(m.group(2)) != listen_port:
                errors.append(f"container {name}: REDIS_URL {url} is not cachet at 127.0.0.1:{listen_port}")
        # The upstream password: from a mounted Secret, never in the URL.
        if re.match(r"^[a-z+]+://[^@/]*:[^@/]*@", upstream.get("url", "")):
            errors.append("[upstream] url carries a password: use password_file (a Secret)")
        pw = upstream.get("password_file")
        if not pw:
            errors.append("[upstream] password_file is not set (the Secret's file)")
        else:
            mount = mounts.get(os.path.dirname(pw))
            secret = ((volumes.get(mount["name"]) if mount else None) or {}).get("secret")
            if not secret:
                errors.append(f"password_file {pw}: its directory is not a mounted Secret")
            else:
                items = secret.get("items")
                names = [i["path"] for i in items] if items else None
                if names is not None and os.path.basename(pw) not in names:
                    errors.append(f"password_file {pw}: the Secret volume has no item {os.path.basename(pw)}")
                mode = secret.get("defaultMode", 0o644)
                user = (c.get("securityContext") or {}).get("runAsUser")
                fs_group = (spec.get("securityContext") or {}).get("fsGroup")
                if user not in (None, 0) and not (mode & 0o004 or (mode & 0o040 and fs_group is not None)):
                    errors.append(f"the Secret's file (mode {mode:o}) is unreadable by uid {user}: make it group-readable with a pod fsGroup")
        # Termination: the pod's grace period covers cachet's drain and shutdown grace.
        try:
            needed = seconds(listen.get("drain_delay", "5s")) + seconds(listen.get("shutdown_grace", "10s"))
            grace = spec.get("terminationGracePeriodSeconds", 30)
            if not grace > needed:
                errors.append(f"terminationGracePeriodSeconds {grace} is not above drain_delay + shutdown_grace = {needed:g}s")
        except ValueError as e:
            errors.append(str(e))
        # Resources and a locked-down container.
        res = c.get("resources") or {}
        for kind, key in (("requests", "cpu"), ("requests", "memory"), ("limits", "memory")):
            if key not in (res.get(kind) or {}):
                errors.append(f"cachet has no resources.{kind}.{key}")
        sc = c.get("securityContext") or {}
        psc = spec.get("securityContext") or {}
        if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
            errors.append("cachet: runAsNonRoot is not set")
        if sc.get("readOnlyRootFilesystem") is not True:
            errors.append("cachet: readOnlyRootFilesystem is not true")
        if sc.get("allowPrivilegeEscalation") is not False:
            errors.append("cachet: allowPrivilegeEscalation is not false")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            errors.append("cachet: capabilities do not drop ALL")
        if ((sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")) != "RuntimeDefault":
            errors.append("cachet: no RuntimeDefault seccomp profile")
        for e in errors:
            fail(section, f"{where}: {e}")
        if not errors:
            ok(section, f"{where}: cachet is a native sidecar wired to its ConfigMap, Secret, probes, ports and REDIS_URL")


def check_podmonitor(section: str, path: Path, workloads: list[dict]) -> None:
    for r in load_yaml_documents(path):
        if (r.get("apiVersion"), r.get("kind")) not in CUSTOM_KINDS:
            continue
        where = f"{rel(path)}: PodMonitor/{(r.get('metadata') or {}).get('name')}"
        errors = []
        allowed = {"apiVersion", "kind", "metadata", "spec"}
        if set(r) - allowed:
            errors.append(f"unexpected top-level fields {sorted(set(r) - allowed)}")
        spec = r.get("spec") or {}
        selector = (spec.get("selector") or {}).get("matchLabels") or {}
        endpoints = spec.get("podMetricsEndpoints") or []
        if not selector or not endpoints:
            errors.append("needs spec.selector.matchLabels and spec.podMetricsEndpoints")
        matched = [
            w for w in workloads
            if selector and selector.items() <= (((w["spec"].get("template") or {}).get("metadata") or {}).get("labels") or {}).items()
        ]
        if selector and not matched:
            errors.append(f"selector {selector} matches no pod template of the base")
        for ep in endpoints:
            unknown = set(ep) - {"port", "path", "interval", "scrapeTimeout", "scheme", "relabelings", "metricRelabelings", "honorLabels"}
            if unknown:
                errors.append(f"podMetricsEndpoints: unexpected fields {sorted(unknown)}")
            names = {p.get("name") for w in matched for c in all_containers(pod_spec(w)) for p in c.get("ports") or []}
            if matched and ep.get("port") not in names:
                errors.append(f"podMetricsEndpoints port {ep.get('port')!r} is not a named container port ({sorted(n for n in names if n)})")
            if ep.get("path", "/metrics") != "/metrics":
                errors.append(f"path {ep.get('path')}: cachet serves /metrics")
        for e in errors:
            fail(section, f"{where}: {e}")
        if not errors:
            ok(section, f"{where}: selects the base's pods, scrapes the named admin port (no CRD schema offline: checked by hand)")


def check_kubernetes() -> None:
    section = "kubernetes"
    versions = [MIN_KUBERNETES, kubernetes_validate.latest_version()]
    files = sorted(p for p in K8S.glob("*.y*ml") if p.name != "kustomization.yaml")
    for path in files:
        try:
            docs = load_yaml_documents(path)
        except yaml.YAMLError as e:
            fail(section, f"{rel(path)}: not YAML: {e}")
            continue
        for doc in docs:
            validate_schema(section, rel(path), doc, versions)
    rendered, errors = render_kustomization(K8S)
    for e in errors:
        fail(section, e)
    for doc in rendered:
        validate_schema(section, "rendered base", doc, versions)
    kubectl = os.environ.get("KUBECTL") or shutil.which("kubectl")
    if kubectl and kubectl != "none":
        r = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True)
        if r.returncode != 0:
            fail(section, f"kubectl kustomize {rel(K8S)}: {r.stderr.strip()}")
        else:
            theirs = [d for d in yaml.safe_load_all(r.stdout) if d]
            for doc in theirs:
                validate_schema(section, "kubectl kustomize", doc, versions)

            def shape(docs: list[dict]) -> str:
                text = json.dumps(sorted(docs, key=lambda d: (d["kind"], d["metadata"]["name"])), sort_keys=True)
                return re.sub(r'"(cachet)-[a-z0-9]{10}"', r'"\1-<hash>"', text)

            if shape(theirs) != shape(rendered):
                fail(section, "kubectl kustomize renders the base differently from deploy/check.py's renderer")
            else:
                ok(section, "kubectl kustomize renders the same resources as the offline renderer")
    else:
        print("note [kubernetes] kubectl not found: the base was rendered by deploy/check.py alone")
    check_sidecar_wiring(section, rendered)
    workloads = [r for r in rendered if pod_spec(r) is not None]
    for path in files:
        check_podmonitor(section, path, workloads)


# ---------------------------------------------------------------------------------
# Metric names: the metrics reference (rows "| `cachet_name` | meaning |" in README.md
# or docs/*.md) and, when a cachet binary runs, its real exposition's types.

REFERENCE_ROW = re.compile(r"^\|\s*`(cachet_[A-Za-z0-9_]+)`\s*\|")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def documented_metrics() -> set[str]:
    names: set[str] = set()
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        if path.exists():
            for line in path.read_text().splitlines():
                m = REFERENCE_ROW.match(line)
                if m:
                    names.add(m.group(1))
    return names


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def exposed_metric_types(binary: Path | None) -> dict[str, str] | None:
    """`# TYPE` of each family /metrics exposes, from a cachet started on free loopback
    ports with an upstream that is not there (it serves /metrics all the same)."""
    if binary is None:
        return None
    listen, admin, upstream = free_port(), free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="deploy-check-") as tmp:
        config = Path(tmp) / "cachet.toml"
        config.write_text(
            f'[listen]\naddress = "127.0.0.1:{listen}"\ndrain_delay = "0s"\nshutdown_grace = "1s"\n'
            f'[upstream]\nurl = "redis://127.0.0.1:{upstream}/0"\nconnect_timeout = "100ms"\n'
            f'[admin]\naddress = "127.0.0.1:{admin}"\n[log]\nlevel = "error"\n'
        )
        proc = subprocess.Popen(
            [str(binary), "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=cachet_env(),
        )
        body = None
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=2) as r:
                        body = r.read().decode()
                        break
                except OSError:
                    time.sleep(0.1)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            stderr = proc.stderr.read() if proc.stderr else ""
    if body is None:
        fail("metrics", f"{binary} served no /metrics within 10 s: {stderr.strip()}")
        return None
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", body, re.M))


def promql_metric_names(expr: str) -> list[str]:
    """cachet_* names in a PromQL expression (string literals and comments skipped)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    expr = re.sub(r"#[^\n]*", "", expr)
    return re.findall(r"(?<![A-Za-z0-9_:])cachet_[A-Za-z0-9_]+", expr)


class NameCheck:
    def __init__(self, documented: set[str], types: dict[str, str] | None):
        self.documented = documented
        self.types = types

    def known(self, name: str) -> bool:
        if name in self.documented or name in ALLOWED_UNDOCUMENTED:
            return True
        for suffix in HISTOGRAM_SUFFIXES:
            base = name.removesuffix(suffix)
            if base != name and base in self.documented:
                if self.types is not None:
                    return self.types.get(base) == "histogram"
                # Without an exposition: a counter or an info gauge has no buckets.
                return not base.endswith(("_total", "_info"))
        return False

    def check(self, section: str, items: list[tuple[str, str]]) -> None:
        bad = 0
        seen: set[str] = set()
        for where, expr in items:
            for name in promql_metric_names(expr):
                seen.add(name)
                if not self.known(name):
                    bad += 1
                    base = next((name.removesuffix(s) for s in HISTOGRAM_SUFFIXES if name.endswith(s)), name)
                    if base != name and base in self.documented:
                        kind = (self.types or {}).get(base)
                        what = f"a {kind}" if kind else "not a histogram"
                        fail(section, f"{where}: {name}: {base} is {what}, with no {name[len(base):]} series")
                    else:
                        fail(section, f"{where}: {name} is not in the metrics reference (README.md or docs/*.md)")
        if self.types is not None:
            for name in sorted(seen):
                base = next((name.removesuffix(s) for s in HISTOGRAM_SUFFIXES if name.endswith(s) and name.removesuffix(s) in self.types), name)
                if base not in self.types and self.known(name):
                    print(f"note [{section}] {name} is documented or allowed but not exposed by this build's /metrics")
        if not bad:
            ok(section, f"{len(items)} expressions use {len(seen)} metric names, all in the metrics reference")


# ---------------------------------------------------------------------------------
# Grafana dashboard.

PANEL_TYPES = {"timeseries", "stat", "table", "heatmap", "gauge", "bargauge", "text", "row", "piechart"}


def grafana_to_promql(expr: str) -> str:
    """A dashboard expression with Grafana's variables replaced, for promtool to parse."""
    for var, value in (("__rate_interval", "5m"), ("__interval", "1m"), ("__range", "1h")):
        expr = expr.replace(f"${{{var}}}", value).replace(f"${var}", value)
    expr = re.sub(r"\$\{[A-Za-z0-9_]+(?::[a-z]+)?\}|\$[A-Za-z0-9_]+|\[\[[A-Za-z0-9_]+\]\]", ".*", expr)
    return expr


def promtool_parse(section: str, exprs: list[tuple[str, str]], promtool: str) -> None:
    """Parses each expression with promtool (as recording rules of a throwaway file)."""
    rules = [{"record": f"deploy_check:expr{i}", "expr": grafana_to_promql(e)} for i, (_, e) in enumerate(exprs)]
    with tempfile.TemporaryDirectory(prefix="deploy-check-") as tmp:
        path = Path(tmp) / "exprs.yml"
        path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
        r = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    if r.returncode == 0:
        ok(section, f"promtool parses all {len(exprs)} PromQL expressions")
        return
    output = r.stdout + r.stderr
    reported = False
    for i, (where, _) in enumerate(exprs):
        m = re.search(rf'"deploy_check:expr{i}": (.*)', output)
        if m:
            reported = True
            fail(section, f"{where}: PromQL does not parse: {m.group(1)}")
    if not reported:
        fail(section, "promtool check rules on the dashboard's expressions: " + output.strip())


def check_dashboard(names: NameCheck, promtool: str | None) -> None:
    section = "dashboard"
    try:
        board = json.loads(DASHBOARD.read_text())
    except (OSError, json.JSONDecodeError) as e:
        fail(section, f"{rel(DASHBOARD)}: not valid JSON: {e}")
        return
    ok(section, f"{rel(DASHBOARD)} is valid JSON")
    for key in ("title", "uid", "panels", "templating", "schemaVersion"):
        if key not in board:
            fail(section, f"no top-level {key!r}")
    if not isinstance(board.get("schemaVersion"), int) or board["schemaVersion"] < 36:
        fail(section, f"schemaVersion {board.get('schemaVersion')!r} is below 36")
    variables = {v.get("name"): v for v in (board.get("templating") or {}).get("list") or []}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        fail(section, "no templated variable `datasource` of type datasource for Prometheus")
    ds_refs = {"${datasource}", "$datasource"}
    exprs: list[tuple[str, str]] = []
    for name, v in variables.items():
        if v.get("type") == "query":
            q = v.get("query")
            q = q.get("query", "") if isinstance(q, dict) else (q or "")
            if ((v.get("datasource") or {}).get("uid")) not in ds_refs:
                fail(section, f"variable {name}: its data source is not ${{datasource}}")
            m = re.match(r"^\s*label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*$", q, re.S)
            if m:
                exprs.append((f"variable {name}", m.group(1)))
            elif q:
                fail(section, f"variable {name}: query {q!r} is not label_values(<selector>, <label>)")
    before = len(problems)
    panels: list[dict] = []
    for p in board.get("panels") or []:
        panels.append(p)
        panels.extend(p.get("panels") or [])  # a collapsed row's panels
    ids: set[int] = set()
    boxes: list[tuple[str, dict]] = []
    for p in panels:
        title = p.get("title", "?")
        where = f"panel {p.get('id')} {title!r}"
        if not isinstance(p.get("id"), int) or p["id"] in ids:
            fail(section, f"{where}: id missing or not unique")
        ids.add(p.get("id"))
        if p.get("type") not in PANEL_TYPES:
            fail(section, f"{where}: unknown panel type {p.get('type')!r}")
        g = p.get("gridPos") or {}
        if not all(isinstance(g.get(k), int) for k in "hwxy") or g["x"] + g["w"] > 24 or g["w"] <= 0 or g["h"] <= 0:
            fail(section, f"{where}: bad gridPos {g}")
        elif any(p is q for q in board.get("panels") or []):
            boxes.append((where, g))
        if p.get("type") in ("row", "text"):
            continue
        if ((p.get("datasource") or {}).get("uid")) not in ds_refs:
            fail(section, f"{where}: data source is not ${{datasource}}")
        targets = p.get("targets") or []
        if not targets:
            fail(section, f"{where}: no queries")
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs) or None in refs:
            fail(section, f"{where}: refIds missing or repeated: {refs}")
        for t in targets:
            expr = t.get("expr", "")
            if not expr.strip():
                fail(section, f"{where} {t.get('refId')}: empty expression")
                continue
            if ((t.get("datasource") or {}).get("uid", "${datasource}")) not in ds_refs:
                fail(section, f"{where} {t.get('refId')}: data source is not ${{datasource}}")
            if "histogram_quantile" in expr and not re.search(r"\ble\b", expr):
                fail(section, f"{where} {t.get('refId')}: histogram_quantile without `le` in its aggregation")
            if re.search(r"(?<![A-Za-z0-9_])cachet:[A-Za-z0-9_:]+", re.sub(r'"[^"]*"', "", expr)):
                fail(section, f"{where} {t.get('refId')}: uses a recording rule; the dashboard must work without the rules")
            exprs.append((f"{where} {t.get('refId')}", expr))
    # Top-level panels must not overlap (a collapsed row's are laid out when it opens).
    for i, (w1, a) in enumerate(boxes):
        for w2, b in boxes[i + 1:]:
            if a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"] and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"]:
                fail(section, f"{w1} and {w2} overlap")
    if len(problems) == before:
        ok(section, f"{len(panels)} panels and {len(exprs)} queries well formed, on ${{datasource}}, not overlapping")
    names.check(section, exprs)
    if promtool:
        promtool_parse(section, exprs, promtool)


# ---------------------------------------------------------------------------------
# Prometheus rules.

SEVERITIES = {"critical", "warning", "info"}


def check_rules(names: NameCheck, promtool: str | None) -> None:
    section = "rules"
    if promtool:
        for args in (["check", "rules", str(RULES)], ["test", "rules", str(RULES_TEST)]):
            r = subprocess.run([promtool, *args], capture_output=True, text=True, cwd=RULES.parent)
            label = f"promtool {' '.join(args[:2])} {rel(Path(args[2]))}"
            if r.returncode == 0:
                ok(section, label)
            else:
                fail(section, f"{label} exited {r.returncode}:\n    " + (r.stdout + r.stderr).strip().replace("\n", "\n    "))
    try:
        doc = yaml.safe_load(RULES.read_text())
        tests = yaml.safe_load(RULES_TEST.read_text())
    except (OSError, yaml.YAMLError) as e:
        fail(section, str(e))
        return
    exprs: list[tuple[str, str]] = []
    alerts: list[str] = []
    for group in doc.get("groups") or []:
        for rule in group.get("rules") or []:
            name = rule.get("alert") or rule.get("record")
            exprs.append((f"rule {name}", str(rule.get("expr", ""))))
            if "alert" not in rule:
                continue
            alerts.append(name)
            if "for" not in rule:
                fail(section, f"alert {name}: no `for:`")
            if (rule.get("labels") or {}).get("severity") not in SEVERITIES:
                fail(section, f"alert {name}: severity label not one of {sorted(SEVERITIES)}")
            for a in ("summary", "description"):
                if not (rule.get("annotations") or {}).get(a):
                    fail(section, f"alert {name}: no {a} annotation")
    before = len(problems)
    # Every alert is tested both firing and silent.
    cases: dict[str, set[bool]] = {}
    for test in tests.get("tests") or []:
        for case in test.get("alert_rule_test") or []:
            cases.setdefault(case.get("alertname"), set()).add(bool(case.get("exp_alerts")))
    for name in alerts:
        if cases.get(name) != {True, False}:
            fail(section, f"alert {name}: {rel(RULES_TEST)} must test it both firing and not firing")
    if len(problems) == before:
        ok(section, f"{len(alerts)} alerts have for:, severity, summary and description, and firing/silent tests")
    names.check(section, exprs)


# ---------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regenerate", action="store_true", help="rewrite deploy/kubernetes/cachet.toml from config/cachet.toml")
    args = parser.parse_args()
    started = time.monotonic()

    promtool = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if not promtool:
        fail("tools", "promtool not found (deploy/check installs it: apt-get install prometheus)")
    else:
        version = subprocess.run([promtool, "--version"], capture_output=True, text=True)
        print(f"tools: promtool {(version.stdout + version.stderr).split()[2] if version.returncode == 0 else '?'}, "
              f"kubernetes-validate {kubernetes_validate.__version__} (schemas {MIN_KUBERNETES} to {kubernetes_validate.latest_version()}), "
              f"PyYAML {yaml.__version__}, Python {sys.version.split()[0]}")

    check_sidecar_config(args.regenerate)
    binary = cachet_binary()
    check_config_files(binary)
    check_kubernetes()
    documented = documented_metrics()
    if not documented:
        fail("metrics", "no metrics reference rows (| `cachet_...` | ... |) in README.md or docs/*.md")
    types = exposed_metric_types(binary)
    names = NameCheck(documented, types)
    print(f"metrics: {len(documented)} names in the reference, "
          + (f"{len(types)} families exposed by {rel(binary)}" if types is not None else "no exposition to read types from"))
    check_dashboard(names, promtool)
    check_rules(names, promtool)

    elapsed = time.monotonic() - started
    if problems:
        print(f"\ndeploy/check: {len(problems)} problem(s) in {elapsed:.1f}s:")
        for p in problems:
            print("  - " + p.splitlines()[0])
        return 1
    print(f"\ndeploy/check: all checks passed in {elapsed:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
