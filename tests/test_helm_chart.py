"""The Helm chart, linted and rendered by Helm's own Go SDK (helm-python-sdk;
no `helm` binary, no cluster), with the default values and with the
production example; every rendered manifest is then parsed and checked the
way a reviewer would: kinds, probes on real paths and ports, security
context, resources, hooks, selectors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import helm_python  # the dev extra: Helm's Go SDK bound for Python
import jsonschema
import pytest
import yaml

from tests.test_deploy_compose import settings_env_names

CHART = Path(__file__).resolve().parent.parent / "helm" / "agent-orchestrator"
PROD = yaml.safe_load((CHART / "values-production.yaml").read_text())
PROBE_PATHS = {
    "api": {"/healthz", "/readyz"},
    "worker": {"/healthz", "/readyz"},
    "flower": {"/healthcheck", "/flower/healthcheck"},
}


def render(values: dict[str, Any] | None) -> list[dict[str, Any]]:
    with helm_python.Chart.load(CHART) as chart:
        out = chart.render(values, name="orch", namespace="orchestrator", is_install=True)
    docs = []
    for path, text in out.items():
        if path.endswith("NOTES.txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_templates(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        d["metadata"]["name"]: d["spec"]["template"]
        for d in docs
        if d["kind"] in ("Deployment", "Job")
    }


@pytest.fixture(scope="module", params=["default", "production"])
def rendered(request) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(None if request.param == "default" else PROD)


@pytest.mark.parametrize("values", [None, PROD], ids=["default", "production"])
def test_helm_lint_strict_finds_nothing(values):
    report = helm_python.lint(CHART, values, strict=True)
    assert report["errors"] == [] and report["messages"] == []


def test_the_default_values_render_every_component():
    kinds = sorted(d["kind"] for d in render(None))
    assert kinds == sorted(
        [
            "ConfigMap",
            "Secret",
            "Secret",
            "ServiceAccount",
            "Deployment",
            "Deployment",
            "Deployment",
            "Service",
            "Service",
            "Service",
            "Job",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "PodDisruptionBudget",
            "NetworkPolicy",
            "NetworkPolicy",
            "NetworkPolicy",
        ]
    )


def test_the_production_example_scales_on_queue_length_with_an_existing_secret():
    docs = render(PROD)
    kinds = {d["kind"] for d in docs}
    assert "ScaledObject" in kinds and "HorizontalPodAutoscaler" not in kinds
    assert "Secret" not in kinds  # existingSecret: managed outside the chart
    assert "PersistentVolumeClaim" in kinds
    (so,) = by_kind(docs, "ScaledObject").values()
    assert so["spec"]["scaleTargetRef"]["name"] == "orch-agent-orchestrator-worker"
    assert so["spec"]["triggers"][0]["metadata"]["listName"] == "orchestrator"
    secret_vols = [
        v["secret"]["secretName"]
        for t in pod_templates(docs).values()
        for v in t["spec"]["volumes"]
        if "secret" in v
    ]
    assert set(secret_vols) == {"agent-orchestrator-secrets"}


def test_the_migration_runs_as_a_pre_install_and_pre_upgrade_hook(rendered):
    _, docs = rendered
    (job,) = by_kind(docs, "Job").values()
    notes = job["metadata"]["annotations"]
    assert notes["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "orchestrator",
        "db",
        "upgrade",
    ]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    # Its settings and secrets exist before the release's own resources do.
    assert "envFrom" not in job["spec"]["template"]["spec"]["containers"][0]
    for vol in job["spec"]["template"]["spec"]["volumes"]:
        if "secret" in vol:
            name = vol["secret"]["secretName"]
            hooked = by_kind(docs, "Secret").get(name)
            assert hooked is None or "helm.sh/hook" in hooked["metadata"].get("annotations", {})


def test_probes_point_at_real_paths_and_container_ports(rendered):
    _, docs = rendered
    for name, tpl in pod_templates(docs).items():
        component = tpl["metadata"]["labels"]["app.kubernetes.io/component"]
        for c in tpl["spec"]["containers"]:
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            probes = {
                k: c[k] for k in ("startupProbe", "livenessProbe", "readinessProbe") if k in c
            }
            if component == "migration":
                assert probes == {}
                continue
            assert {"livenessProbe", "readinessProbe"} <= set(probes), name
            for kind, probe in probes.items():
                get = probe["httpGet"]
                assert get["path"] in PROBE_PATHS[component], (name, kind)
                assert get["port"] in ports or get["port"] in ports.values(), (name, kind)
            if component in ("api", "worker"):
                assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
                assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
            if component == "worker":
                env = {e["name"]: e.get("value") for e in c["env"]}
                assert int(env["ORCH_WORKER_PROBE_PORT"]) == ports["probe"]


def test_services_select_pods_and_target_their_ports(rendered):
    _, docs = rendered
    templates = list(pod_templates(docs).values())
    for name, svc in by_kind(docs, "Service").items():
        sel = svc["spec"]["selector"]
        pods = [t for t in templates if sel.items() <= t["metadata"]["labels"].items()]
        assert pods, name
        for port in svc["spec"]["ports"]:
            names = {
                p["name"] for t in pods for c in t["spec"]["containers"] for p in c.get("ports", [])
            }
            assert port["targetPort"] in names, name
    for name, pdb in by_kind(docs, "PodDisruptionBudget").items():
        sel = pdb["spec"]["selector"]["matchLabels"]
        assert any(sel.items() <= t["metadata"]["labels"].items() for t in templates), name


def test_every_pod_runs_restricted_with_resources(rendered):
    variant, docs = rendered
    for name, tpl in pod_templates(docs).items():
        spec = tpl["spec"]
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0
        bwrap_worker = variant == "production" and name.endswith("-worker")
        if bwrap_worker:
            # The documented switch: user namespaces and a profile that allows them.
            assert spec["hostUsers"] is False
            assert psc["seccompProfile"] == {
                "type": "Localhost",
                "localhostProfile": "profiles/orchestrator-bwrap.json",
            }
        else:
            assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
            assert "hostUsers" not in spec
        assert spec["automountServiceAccountToken"] is False
        volumes = {v["name"]: v for v in spec["volumes"]}
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert sc.get("procMount", "Default") == ("Unmasked" if bwrap_worker else "Default")
            res = c["resources"]
            assert {"cpu", "memory"} <= set(res["requests"]) and "memory" in res["limits"]
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            for path in ("/tmp", "/var/lib/orchestrator"):
                vol = volumes[mounts[path]]
                assert "emptyDir" in vol or "persistentVolumeClaim" in vol, (name, path)
            assert set(mounts.values()) <= set(volumes), name
            if "/run/secrets" in mounts:
                assert volumes[mounts["/run/secrets"]]["secret"]["defaultMode"] == 0o440


def test_workers_autoscale_and_drain_one_at_a_time():
    docs = render(None)
    (hpa,) = by_kind(docs, "HorizontalPodAutoscaler").values()
    worker = by_kind(docs, "Deployment")["orch-agent-orchestrator-worker"]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": worker["metadata"]["name"],
    }
    assert "replicas" not in worker["spec"]  # the HPA owns it
    assert worker["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pdb = by_kind(docs, "PodDisruptionBudget")["orch-agent-orchestrator-worker"]
    assert pdb["spec"]["maxUnavailable"] == 1


def test_network_policies_open_only_the_service_ports(rendered):
    _, docs = rendered
    templates = pod_templates(docs)
    for name, pol in by_kind(docs, "NetworkPolicy").items():
        sel = pol["spec"]["podSelector"]["matchLabels"]
        (tpl,) = [t for n, t in templates.items() if sel.items() <= t["metadata"]["labels"].items()]
        ports = {p["name"] for c in tpl["spec"]["containers"] for p in c.get("ports", [])}
        for rule in pol["spec"]["ingress"]:
            assert {p["port"] for p in rule["ports"]} <= ports, name


def test_rendered_manifests_name_only_real_settings(rendered):
    _, docs = rendered
    known = settings_env_names()
    names = set()
    for d in docs:
        if d["kind"] == "ConfigMap":
            names |= set(d["data"])
        for tpl in [d["spec"]["template"]] if d["kind"] in ("Deployment", "Job") else []:
            names |= {e["name"] for c in tpl["spec"]["containers"] for e in c.get("env", [])}
    orch = {n for n in names if n.startswith("ORCH_")}
    assert orch and orch - known == set()
    assert names - orch <= {"ORCHESTRATOR_SANDBOX"}


def test_every_values_file_validates_against_the_schema():
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.validate(defaults, schema)
    with helm_python.Chart.load(CHART) as chart:
        for path in CHART.glob("values-*.yaml"):
            values = yaml.safe_load(path.read_text())
            jsonschema.validate(chart.merge_values(values), schema)
            chart.validate_schema(values)  # Helm's own validation agrees


@pytest.mark.parametrize(
    "bad",
    [
        {"config": {"orch_log_level": "INFO"}},  # not an ORCH_ variable
        {"podSecurityContext": {"runAsNonRoot": False}},
        {"worker": {"probePort": 0}},
        {"secrets": {"existingSecert": "typo"}},
    ],
    ids=["lowercase-setting", "root", "port", "typo"],
)
def test_the_schema_refuses_values_that_would_deploy_wrongly(bad):
    with helm_python.Chart.load(CHART) as chart:
        with pytest.raises(helm_python.HelmValuesError):
            chart.validate_schema(bad)
