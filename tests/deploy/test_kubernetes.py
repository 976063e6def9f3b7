"""Offline checks of the Kubernetes and KServe manifests (and their probe paths and metrics against a running server).

No Docker engine or cluster is needed: hadolint lints the Dockerfile, kubernetes-validate checks the
manifests against the Kubernetes 1.30 schemas, the KServe resources against a schema of the fields we
rely on (their containers and resources against the Kubernetes definitions), and the commands, probe
paths, ports and settings they name are checked against the real CLI, settings and a running server.
"""

from __future__ import annotations

import copy
import importlib.resources
import json
import re
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import kubernetes_validate
import pytest
from referencing import Registry, Resource

from tests.deploy.files import (
    K8S_DIR, K8S_VERSION, MANIFESTS, ROOT, check_serve_command, check_settings_env, container_env, load_docs,
)



# ---- Kubernetes ----------------------------------------------------------------------------------

K8S_DEFS = "https://kubernetes.io/api/_definitions.json#/$defs/io.k8s."
_OBJECT_META = {"$ref": K8S_DEFS + "apimachinery.pkg.apis.meta.v1.ObjectMeta"}
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
# The KServe fields these manifests use (kubernetes-validate knows no CRDs); containers, resources and
# probes are checked against the Kubernetes definitions themselves.
KSERVE_SCHEMAS = {
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
        "properties": {
            "apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": _OBJECT_META,
            "spec": {
                "type": "object", "required": ["supportedModelFormats", "protocolVersions", "containers"],
                "additionalProperties": False,
                "properties": {
                    "annotations": _STRINGS, "labels": _STRINGS, "multiModel": {"type": "boolean"},
                    "disabled": {"type": "boolean"},
                    "supportedModelFormats": {"type": "array", "minItems": 1, "items": {
                        "type": "object", "required": ["name"], "additionalProperties": False,
                        "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                                       "autoSelect": {"type": "boolean"}, "priority": {"type": "integer", "minimum": 1}}}},
                    "protocolVersions": {"type": "array", "minItems": 1,
                                         "items": {"enum": ["v1", "v2", "grpc-v1", "grpc-v2"]}},
                    "containers": {"type": "array", "minItems": 1,
                                   "items": {"$ref": K8S_DEFS + "api.core.v1.Container"}},
                    "nodeSelector": _STRINGS,
                    "tolerations": {"type": "array", "items": {"$ref": K8S_DEFS + "api.core.v1.Toleration"}},
                    "volumes": {"type": "array", "items": {"$ref": K8S_DEFS + "api.core.v1.Volume"}},
                },
            },
        },
    },
    ("serving.kserve.io/v1beta1", "InferenceService"): {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
        "properties": {
            "apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": _OBJECT_META,
            "spec": {"type": "object", "required": ["predictor"], "additionalProperties": False, "properties": {
                "predictor": {
                    "type": "object", "required": ["model"], "additionalProperties": False,
                    "properties": {
                        "minReplicas": {"type": "integer", "minimum": 0},
                        "maxReplicas": {"type": "integer", "minimum": 1},
                        "timeout": {"type": "integer", "minimum": 1},
                        "model": {
                            "type": "object", "additionalProperties": False,
                            "required": ["modelFormat", "runtime", "protocolVersion", "storageUri"],
                            "properties": {
                                "modelFormat": {"type": "object", "required": ["name"], "additionalProperties": False,
                                                "properties": {"name": {"type": "string"}, "version": {"type": "string"}}},
                                "runtime": {"type": "string"},
                                "protocolVersion": {"enum": ["v1", "v2", "grpc-v2"]},
                                "storageUri": {"type": "string", "pattern": r"^(s3|gs|https?|pvc|hdfs|webhdfs|oci|hf)://"},
                                "resources": {"$ref": K8S_DEFS + "api.core.v1.ResourceRequirements"},
                                "env": {"type": "array", "items": {"$ref": K8S_DEFS + "api.core.v1.EnvVar"}},
                            },
                        },
                    },
                },
            }},
        },
    },
}


def validate_kserve(doc: dict[str, Any]) -> None:
    schema = KSERVE_SCHEMAS[(doc["apiVersion"], doc["kind"])]
    definitions = importlib.resources.files("kubernetes_validate").joinpath(
        f"kubernetes-json-schema/v{K8S_VERSION}-local-strict/_definitions.json")
    contents = json.loads(definitions.read_text())
    registry = Registry().with_resource(contents["$id"], Resource.from_contents(contents))
    jsonschema.Draft202012Validator(schema, registry=registry).validate(doc)


@pytest.mark.parametrize("path", MANIFESTS, ids=[str(p.relative_to(K8S_DIR)) for p in MANIFESTS])
def test_manifest_validates(path: Path) -> None:
    docs = load_docs(path)
    assert docs
    for doc in docs:
        if doc["apiVersion"].startswith("serving.kserve.io/"):
            validate_kserve(doc)
        else:
            assert kubernetes_validate.validate(doc, K8S_VERSION, strict=True) == "1.30"


def test_schemas_catch_mistakes(manifests) -> None:
    deployment = copy.deepcopy(manifests["Deployment"])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pth"] = "/v2/health/ready"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    runtime = copy.deepcopy(manifests["ServingRuntime"])
    runtime["spec"]["containers"][0]["ports"][0]["containerPort"] = "8080"  # Container schema: integer
    with pytest.raises(jsonschema.ValidationError):
        validate_kserve(runtime)
    service = copy.deepcopy(manifests["InferenceService"])
    service["spec"]["predictor"]["model"]["protocolVersion"] = "v3"
    with pytest.raises(jsonschema.ValidationError):
        validate_kserve(service)


def test_deployment(manifests) -> None:
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "ServingRuntime", "InferenceService"} <= set(manifests)
    pod = manifests["Deployment"]["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    check_serve_command(container["command"])
    settings = check_settings_env(container_env(container))
    assert settings.device == "cuda" and settings.host == "0.0.0.0"
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["spec"]["terminationGracePeriodSeconds"] > settings.grace_period_s + int(pre_stop[1])

    port, grpc_port = container["ports"]
    assert port["containerPort"] == settings.port
    assert grpc_port["containerPort"] == settings.grpc_port == 8001
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": port["name"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": port["name"]}
    for kind in ("requests", "limits"):
        assert container["resources"][kind]["nvidia.com/gpu"] == 1
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == "/metrics"
    assert annotations["prometheus.io/port"] == str(settings.port)
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True

    service = manifests["Service"]
    assert service["spec"]["selector"] == manifests["Deployment"]["spec"]["selector"]["matchLabels"]
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [port["name"], grpc_port["name"]]

    hpa = manifests["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": manifests["Deployment"]["metadata"]["name"]}
    (metric,) = hpa["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == "eca_serve_inflight_requests"


def test_kserve_runtime_and_inference_service(manifests) -> None:
    runtime, isvc = manifests["ServingRuntime"], manifests["InferenceService"]
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["protocolVersion"] == "v2" and runtime["spec"]["protocolVersions"] == ["v2"]
    assert model["resources"]["limits"]["nvidia.com/gpu"] == 1

    (container,) = runtime["spec"]["containers"]
    assert container["name"] == "kserve-container"
    check_serve_command(container["command"])
    settings = check_settings_env(container_env(container))
    # KServe's conventions: the predictor listens on 8080; storageUri's content is mounted at /mnt/models.
    assert settings.port == 8080 == container["ports"][0]["containerPort"] == container["readinessProbe"]["httpGet"]["port"]
    assert settings.grpc_port == 8081 and settings.model_repository == Path("/mnt/models")
    assert settings.host == "0.0.0.0"
    assert runtime["spec"]["annotations"]["prometheus.kserve.io/port"] == "8080"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert isvc["spec"]["predictor"]["timeout"] > settings.grace_period_s



def test_probe_paths_and_metrics_exist(server, manifests) -> None:
    base, _ = server
    containers = [manifests["Deployment"]["spec"]["template"]["spec"]["containers"][0],
                  manifests["ServingRuntime"]["spec"]["containers"][0]]
    paths = {probe["httpGet"]["path"] for c in containers for key in ("startupProbe", "livenessProbe", "readinessProbe")
             if (probe := c.get(key))}
    assert paths == {"/v2/health/live", "/v2/health/ready"}
    for path in paths:
        assert httpx.get(base + path, timeout=10).status_code == 200, path

    metrics = httpx.get(base + "/metrics", timeout=10).text
    exposed = set(re.findall(r"^# TYPE (\w+)", metrics, flags=re.M))
    hpa_metric = manifests["HorizontalPodAutoscaler"]["spec"]["metrics"][0]["pods"]["metric"]["name"]
    assert {hpa_metric, "eca_serve_queue_depth"} <= exposed
    # Every metric docs/deploy.md tells operators to watch is exposed (GPU memory only on a CUDA host).
    documented = set(re.findall(r"`(eca_serve_\w+)", (ROOT / "docs" / "deploy.md").read_text())) - {"eca_serve_gpu_memory_bytes"}
    exposition_names = exposed | {n + "_total" for n in exposed}
    assert documented and documented <= exposition_names, documented - exposition_names
