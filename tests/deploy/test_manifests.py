"""deploy/: the image recipe, docker-compose and Kubernetes manifests, checked offline against their
schemas and against the settings code, so that a variable, a port or a path that drifts fails here rather
than in a user's cluster (docs/deploy.md)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

from chiefofstate.config.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
KUBERNETES_VERSION = "1.31"  # the oldest version whose schema has every field used (preStop sleep)


def _settings(environ: dict[str, str]) -> Settings:
    """The node's settings from a manifest's environment, with no variable set but unused."""
    settings = load_settings(environ)
    assert settings.warnings == (), settings.warnings
    return settings


def _default_ports() -> dict[str, int]:
    settings = load_settings({"COS_WRITE_SIDE_HOST": "h", "COS_WRITE_SIDE_PORT": "1"})
    return {
        "grpc": settings.server.port,
        "http": settings.server.http_port,
        "management": settings.server.management_port,
        "metrics": settings.server.prometheus_port,
        "cluster": settings.cluster.port,
    }


# ------------------------------------------------------------------------------------------ Dockerfile


def test_the_dockerfile_passes_hadolint() -> None:
    done = subprocess.run(
        [str(BIN / "hadolint"), str(DEPLOY / "Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_image_exposes_the_node_ports_runs_unprivileged_and_checks_alive() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    (exposed,) = re.findall(r"^EXPOSE (.+)$", text, re.M)
    assert sorted(int(port) for port in exposed.split()) == sorted(_default_ports().values())
    assert re.search(r"^USER 10001", text, re.M)
    assert f"127.0.0.1:{_default_ports()['management']}/alive" in text
    assert 'ENTRYPOINT ["cos"]' in text and 'CMD ["serve"]' in text
    # Only the last stage is the image: no compiler or build tool is installed in it.
    final_stage = text.split("\nFROM ")[-1]
    assert "apt-get" not in final_stage and "pip install" not in final_stage


# ------------------------------------------------------------------------------------------ compose


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def _host_path(service: dict[str, Any], container_path: str) -> Path:
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if target == container_path:
            return (DEPLOY / source).resolve()
    raise AssertionError(f"{container_path} is not mounted")


def test_compose_matches_the_compose_specification() -> None:
    done = subprocess.run(
        [
            str(BIN / "check-jsonschema"),
            "--builtin-schema",
            "vendor.compose-spec",
            str(DEPLOY / "compose.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_nodes_form_one_cluster_with_settings_the_node_accepts_and_uses() -> None:
    services = _compose()["services"]
    nodes = {name: service for name, service in services.items() if service.get("command") == ["serve"]}
    assert len(nodes) == 3
    addresses = set()
    for name, service in nodes.items():
        environment = {key: str(value) for key, value in service["environment"].items()}
        read_sides = environment["COS_READ_SIDE_CONFIG"]
        environment["COS_READ_SIDE_CONFIG"] = str(_host_path(service, read_sides))
        settings = _settings(environment)
        assert settings.cluster.enabled and settings.cluster.replica_count == len(nodes)
        addresses.add(settings.cluster.host)
        assert settings.cluster.host == service["hostname"] == name
        assert settings.store.postgres is not None and settings.store.postgres.host in services
        # the write handler and every read handler named are services listening where the node dials
        handler = services[settings.write_side.host]
        assert str(settings.write_side.port) in handler["command"]
        for read_side in settings.read_sides.read_sides:
            assert str(read_side.port) in services[read_side.host]["command"]
        assert settings.tracing.enabled
    assert len(addresses) == 3


def test_compose_ports_are_the_nodes_ports() -> None:
    compose = _compose()
    ports = _default_ports()
    published = [entry.split(":") for entry in compose["services"]["cos-1"]["ports"]]
    assert {int(inside) for _, inside in published} == {ports["grpc"], ports["http"], ports["management"]}
    scraped = yaml.safe_load((DEPLOY / "compose/prometheus.yml").read_text())
    targets = scraped["scrape_configs"][0]["static_configs"][0]["targets"]
    assert sorted(targets) == [f"cos-{i}:{ports['metrics']}" for i in (1, 2, 3)]
    collector = yaml.safe_load((DEPLOY / "compose/otel-collector.yaml").read_text())
    endpoint = collector["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    node_environment = compose["x-cos-environment"]
    assert node_environment["OTEL_EXPORTER_OTLP_ENDPOINT"].endswith(":" + endpoint.split(":")[1])


# ------------------------------------------------------------------------------------------ Kubernetes


def _documents(path: Path) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


def _resources(folder: Path) -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    found: list[dict[str, Any]] = []
    for entry in kustomization["resources"]:
        target = (folder / entry).resolve()
        assert target.exists(), f"{folder}/kustomization.yaml names {entry}, which does not exist"
        found += _resources(target) if target.is_dir() else _documents(target)
    return found


def _one(resources: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (match,) = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    return match


def test_every_kubernetes_manifest_is_valid_against_the_api_schema() -> None:
    for overlay in (DEPLOY / "kubernetes/base", DEPLOY / "kubernetes/overlays/demo"):
        for resource in _resources(overlay):
            kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


def test_the_kubernetes_deployment_runs_members_the_node_accepts(tmp_path: Path) -> None:
    resources = _resources(DEPLOY / "kubernetes/overlays/demo")
    deployment = _one(resources, "Deployment", "chiefofstate")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    environment: dict[str, str] = {}
    for source in container["envFrom"]:
        kind, name = (
            ("ConfigMap", source["configMapRef"]["name"])
            if "configMapRef" in source
            else (
                "Secret",
                source["secretRef"]["name"],
            )
        )
        resource = _one(resources, kind, name)
        environment.update(resource.get("data") or resource.get("stringData"))
    for variable in container["env"]:
        assert variable["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
        environment[variable["name"]] = "10.1.2.3"
    # the read sides' ConfigMap, written out where the node reads it
    (mount,) = container["volumeMounts"]
    assert environment["COS_READ_SIDE_CONFIG"] == mount["mountPath"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    read_sides = _one(resources, "ConfigMap", volume["configMap"]["name"])
    for file_name, text in read_sides["data"].items():
        (tmp_path / file_name).write_text(text)
    settings = _settings({**environment, "COS_READ_SIDE_CONFIG": str(tmp_path)})
    assert settings.deployment_mode == "kubernetes" and settings.cluster.host == "10.1.2.3"
    assert settings.cluster.replica_count == deployment["spec"]["replicas"]
    assert settings.read_sides.read_sides
    for read_side in settings.read_sides.read_sides:
        handler = _one(resources, "Service", read_side.host)
        assert read_side.port in [port["port"] for port in handler["spec"]["ports"]]
    write_handler = _one(resources, "Service", settings.write_side.host)
    assert settings.write_side.port in [port["port"] for port in write_handler["spec"]["ports"]]

    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == _default_ports()
    assert container["livenessProbe"]["httpGet"] == {"path": "/alive", "port": "management"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "management"}
    pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] >= pause + settings.server.shutdown_timeout_s + 5
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_the_kubernetes_services_rbac_and_budget_select_the_members() -> None:
    resources = _resources(DEPLOY / "kubernetes/base")
    labels = _one(resources, "Deployment", "chiefofstate")["spec"]["template"]["metadata"]["labels"]
    peers = _one(resources, "Service", "chiefofstate-peers")["spec"]
    assert peers["clusterIP"] == "None" and peers["selector"].items() <= labels.items()
    assert {"name": "cluster", "port": _default_ports()["cluster"], "targetPort": "cluster"} in peers["ports"]
    clients = _one(resources, "Service", "chiefofstate")["spec"]
    assert clients["selector"].items() <= labels.items()
    budget = _one(resources, "PodDisruptionBudget", "chiefofstate")["spec"]
    assert budget["selector"]["matchLabels"].items() <= labels.items() and budget["maxUnavailable"] == 1
    (rule,) = _one(resources, "Role", "chiefofstate-pod-reader")["rules"]
    assert rule["resources"] == ["pods"] and sorted(rule["verbs"]) == ["get", "list", "watch"]
