"""Offline checks of the Helm chart, for tests/deploy.rs.

Usage: check_chart.py CHART_DIR OUT_DIR

For several values combinations: `helm lint --strict` (Helm v4 through
helm-python-sdk), render, validate every manifest with `kubernetes-validate
--strict`, and collect the command line and environment of every sluice
container (ConfigMap and Secret references resolved from the rendered
manifests) so the test can run them through `sluice --check-config`. Bad
values must be refused by values.schema.json. Prints a JSON report.
"""

import json
import os
import subprocess
import sys

import yaml
from helm_python import chart as helm_chart

COMBINATIONS = {
    "defaults": {"storage": {"uri": "s3://bucket/lake"}},
    "external-etcd": {
        "storage": {"uri": "s3://bucket/lake", "existingSecret": "lake-credentials"},
        "etcd": {"bundled": False, "external": {"endpoints": ["http://etcd-0.etcd:2379", "http://etcd-1.etcd:2379"]}},
        "tls": {"enabled": True, "existingSecret": "sluice-tls"},
    },
    "hpa": {
        "storage": {"uri": "s3://bucket/lake", "accessKeyId": "AKIA", "secretAccessKey": "secret"},
        "worker": {"autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 40}},
        "auth": {"tokens": ["a-long-enough-token-1"]},
        "sources": {
            "credentialsSecret": "source-stores",
            "allowedRoots": ["/data"],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "shared-data"}}],
            "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": True}],
        },
    },
    "etcd-3-nodes": {
        "storage": {"uri": "s3://bucket/lake", "endpoint": "http://minio:9000", "allowHttp": True},
        "etcd": {"replicas": 3},
        "metrics": {"serviceMonitor": {"enabled": True}},
        "worker": {"replicas": 50},
    },
}

BAD_VALUES = {
    "replicas as text": {"worker": {"replicas": "many"}},
    "two etcd members": {"etcd": {"replicas": 2}},
    "external etcd without endpoints": {"etcd": {"bundled": False}},
    "storage uri without scheme": {"storage": {"uri": "bucket/lake"}},
    "unknown key": {"wroker": {"replicas": 3}},
    "short token": {"auth": {"tokens": ["abc"]}},
    "relative allowed root": {"sources": {"allowedRoots": ["data"]}},
    "tls without a secret": {"tls": {"enabled": True}},
}

# CRDs have no schema in kubernetes-validate; they are checked by hand.
CRD_KINDS = {"ServiceMonitor"}


def containers(doc):
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    return spec.get("containers", [])


def resolve_env(container, configmaps, secrets):
    env = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef")
        if ref:
            env.update(configmaps[ref["name"]])
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
            continue
        ref = e.get("valueFrom", {})
        if "secretKeyRef" in ref:
            name = ref["secretKeyRef"]["name"]
            env[e["name"]] = secrets.get(name, {}).get(ref["secretKeyRef"]["key"], "from-existing-secret")
        elif "fieldRef" in ref:
            env[e["name"]] = "pod-" + ref["fieldRef"]["fieldPath"].replace(".", "-")
    return env


def check(chart_dir, out_dir, name, values):
    report = {"name": name, "lint": None, "invalid": [], "containers": [], "kinds": []}
    lint = helm_chart.lint(chart_dir, values, strict=True)
    problems = [m for m in lint.get("messages", []) if m.get("severity", 0) >= 2] + lint.get("errors", [])
    report["lint"] = problems
    rendered = helm_chart.Chart.load(chart_dir).render(values, name="sluice", namespace="ingest", is_install=True)
    docs = []
    for path, text in sorted(rendered.items()):
        if not path.endswith(".yaml") or not text.strip():
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append(doc)
    configmaps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    secrets = {d["metadata"]["name"]: d.get("stringData", {}) for d in docs if d["kind"] == "Secret"}
    os.makedirs(os.path.join(out_dir, name), exist_ok=True)
    for i, doc in enumerate(docs):
        report["kinds"].append(doc["kind"])
        if doc["kind"] in CRD_KINDS:
            if not doc.get("spec", {}).get("endpoints"):
                report["invalid"].append(f"{doc['kind']} has no endpoints")
            continue
        path = os.path.join(out_dir, name, f"{i:02d}-{doc['kind']}.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(doc, f)
        validator = os.path.join(os.path.dirname(sys.executable), "kubernetes-validate")
        run = subprocess.run([validator, "--strict", "--no-warn", path], capture_output=True, text=True)
        if run.returncode != 0 or "passed" not in run.stdout:
            report["invalid"].append(f"{doc['kind']} {doc['metadata']['name']}: {run.stdout} {run.stderr}")
        for c in containers(doc):
            if not c["image"].startswith("ghcr.io/sluice/"):
                continue
            report["containers"].append(
                {
                    "workload": doc["metadata"]["name"],
                    "args": c.get("args", []),
                    "env": resolve_env(c, configmaps, secrets),
                    "env_secrets": [f["secretRef"]["name"] for f in c.get("envFrom", []) if "secretRef" in f],
                }
            )
    return report


def main():
    chart_dir, out_dir = sys.argv[1], sys.argv[2]
    reports = [check(chart_dir, out_dir, name, values) for name, values in COMBINATIONS.items()]
    refused = {}
    for what, values in BAD_VALUES.items():
        try:
            helm_chart.Chart.load(chart_dir).render(values, name="sluice", namespace="ingest")
            refused[what] = None
        except Exception as e:  # the schema error is the point
            refused[what] = str(e)
    json.dump({"combinations": reports, "bad_values": refused}, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
