"""deploy/k8s: every manifest parses, and the KubeRay resources use only fields of the ray.io/v1 API with the
values the project needs.

The KubeRay CRD OpenAPI schemas are not vendored (the generated CRDs embed whole pod templates and run to
hundreds of kilobytes each), so the checks below name each field they verify. KUBERAY_FIELDS lists the field names
of the ray.io/v1 types we write (KubeRay v1.6 API reference); a misspelt or invented field fails. Checked:
apiVersion ray.io/v1 and the kinds; rayVersion == the installed ray; token authentication from a Secret; image
tags == the project version, -cuda images exactly on GPU groups, -cpu elsewhere; nvidia.com/gpu limits on GPU
groups (== requests) and none elsewhere; replica bounds; the head's ports and a ClusterIP head service; non-root
pod and container security contexts; secrets referenced by name, never inlined; the RayJob entrypoint is a real
module with valid overrides; serveConfigV2 == serving/serve_config.yaml; the MLflow Deployment, Service and PVC
fit together and are the address the Ray pods use; every PVC and the Ingress backend exist.
"""

from __future__ import annotations

import copy
import functools
import shlex
from pathlib import Path

import pytest
import ray
import yaml

from tests.deploy.deploy_checks import REPO, find_secrets, image_problems

K8S = REPO / "deploy" / "k8s"
NAMESPACE = "dinowm"

KUBERAY_FIELDS = {
    "RayClusterSpec": {"rayVersion", "authOptions", "enableInTreeAutoscaling", "autoscalerOptions",
                       "headGroupSpec", "workerGroupSpecs", "headServiceAnnotations", "suspend", "managedBy",
                       "gcsFaultToleranceOptions", "upgradeStrategy"},
    "AuthOptions": {"mode", "secretName", "enableK8sTokenAuth"},
    "AutoscalerOptions": {"resources", "image", "imagePullPolicy", "securityContext", "idleTimeoutSeconds",
                          "upscalingMode", "version", "env", "envFrom", "volumeMounts"},
    "HeadGroupSpec": {"template", "rayStartParams", "serviceType", "headService", "enableIngress"},
    "WorkerGroupSpec": {"groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds",
                        "rayStartParams", "template", "scaleStrategy", "numOfHosts", "suspend"},
    "RayJobSpec": {"entrypoint", "runtimeEnvYAML", "rayClusterSpec", "clusterSelector", "shutdownAfterJobFinishes",
                   "ttlSecondsAfterFinished", "activeDeadlineSeconds", "submissionMode", "backoffLimit",
                   "submitterPodTemplate", "submitterConfig", "jobId", "metadata", "entrypointNumCpus",
                   "entrypointNumGpus", "entrypointResources", "suspend", "managedBy", "deletionStrategy"},
    "RayServiceSpec": {"serveConfigV2", "rayClusterConfig", "upgradeStrategy", "serveService",
                       "excludeHeadPodFromServeSvc", "deploymentUnhealthySecondThreshold",
                       "serviceUnhealthySecondThreshold", "rayClusterDeletionDelaySeconds"},
}  # fmt: skip
ENUMS = {
    ("AuthOptions", "mode"): {"token", "disabled"},
    ("RayJobSpec", "submissionMode"): {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"},
    ("HeadGroupSpec", "serviceType"): {"ClusterIP", "NodePort", "LoadBalancer"},
}
HEAD_PORTS = {"gcs-server": 6379, "dashboard": 8265, "client": 10001}
SECRET_ENV = {"RAY_AUTH_TOKEN", "DINOWM_API_KEY", "AWS_SECRET_ACCESS_KEY"}


@functools.cache
def _parsed() -> dict[str, list[dict]]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return {
        p.name: [d for d in yaml.load_all(p.read_text(), Loader=loader) if d]
        for p in sorted(K8S.glob("*.yaml"))
    }


def load_all() -> dict[str, list[dict]]:
    """Every manifest of deploy/k8s by file name (a fresh copy: tests may break it)."""
    return copy.deepcopy(_parsed())


def docs_of(manifests: dict[str, list[dict]], kind: str) -> list[dict]:
    return [d for docs in manifests.values() for d in docs if d.get("kind") == kind]


def cluster_specs(manifests) -> list[tuple[str, dict]]:
    """(where, RayClusterSpec) of the RayCluster, the RayJob's cluster and the RayService's cluster."""
    out = [(f"RayCluster/{d['metadata']['name']}", d["spec"]) for d in docs_of(manifests, "RayCluster")]
    out += [(f"RayJob/{d['metadata']['name']}", d["spec"]["rayClusterSpec"]) for d in docs_of(manifests, "RayJob")
            if "rayClusterSpec" in d["spec"]]  # fmt: skip
    out += [(f"RayService/{d['metadata']['name']}", d["spec"]["rayClusterConfig"])
            for d in docs_of(manifests, "RayService")]  # fmt: skip
    return out


def _fields(obj: dict, type_name: str, where: str) -> list[str]:
    problems = [
        f"{where}: unknown {type_name} field {k!r}" for k in obj if k not in KUBERAY_FIELDS[type_name]
    ]
    for (t, field), allowed in ENUMS.items():
        if t == type_name and field in obj and obj[field] not in allowed:
            problems.append(f"{where}: {type_name}.{field} = {obj[field]!r}, not one of {sorted(allowed)}")
    return problems


def _pod_problems(template: dict, where: str, *, gpu: bool) -> list[str]:
    problems = []
    spec = template.get("spec", {})
    pod_sc = spec.get("securityContext", {})
    if pod_sc.get("runAsNonRoot") is not True or pod_sc.get("runAsUser", 0) == 0:
        problems.append(f"{where}: pod securityContext must set runAsNonRoot: true and a non-zero runAsUser")
    for c in spec.get("containers", []):
        cw = f"{where}/{c.get('name')}"
        sc = c.get("securityContext", {})
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{cw}: securityContext.allowPrivilegeEscalation must be false")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            problems.append(f"{cw}: securityContext.capabilities.drop must include ALL")
        image = c.get("image", "")
        if gpu != image.endswith("-cuda"):
            problems.append(
                f"{cw}: image {image} ({'GPU' if gpu else 'CPU'} group needs the -{'cuda' if gpu else 'cpu'} image)"
            )
        res = c.get("resources", {})
        limit, request = (
            res.get("limits", {}).get("nvidia.com/gpu"),
            res.get("requests", {}).get("nvidia.com/gpu"),
        )
        if gpu and not (isinstance(limit, int) and limit > 0 and request in (None, limit)):
            problems.append(
                f"{cw}: a GPU group needs an nvidia.com/gpu limit (== request), got {limit}/{request}"
            )
        if not gpu and limit:
            problems.append(f"{cw}: a CPU group asks for nvidia.com/gpu")
        for env in c.get("env", []):
            if env.get("name") in SECRET_ENV and "value" in env:
                problems.append(
                    f"{cw}: {env['name']} must come from a Secret (valueFrom), never a literal value"
                )
    return problems


def check_cluster_spec(spec: dict, where: str, *, serve: bool = False) -> list[str]:
    problems = _fields(spec, "RayClusterSpec", where)
    if spec.get("rayVersion") != ray.__version__:
        problems.append(f"{where}: rayVersion {spec.get('rayVersion')!r} != installed ray {ray.__version__}")
    auth = spec.get("authOptions", {})
    problems += _fields(auth, "AuthOptions", where)
    if auth.get("mode") != "token" or not auth.get("secretName"):
        problems.append(f"{where}: authOptions must be mode: token with a secretName")
    problems += _fields(spec.get("autoscalerOptions", {}), "AutoscalerOptions", where)
    head = spec.get("headGroupSpec", {})
    problems += _fields(head, "HeadGroupSpec", where)
    if head.get("serviceType", "ClusterIP") != "ClusterIP":
        problems.append(f"{where}: the head service must stay ClusterIP (port-forward to reach it)")
    head_c = (head.get("template", {}).get("spec", {}).get("containers") or [{}])[0]
    ports = {p.get("name"): p.get("containerPort") for p in head_c.get("ports", [])}
    wanted = {**HEAD_PORTS, **({"serve": 8000} if serve else {})}
    for name, port in wanted.items():
        if ports.get(name) != port:
            problems.append(f"{where}: head port {name} should be {port}, got {ports.get(name)}")
    problems += _pod_problems(head.get("template", {}), f"{where}/head", gpu=False)
    for group in spec.get("workerGroupSpecs", []):
        gw = f"{where}/{group.get('groupName')}"
        problems += _fields(group, "WorkerGroupSpec", gw)
        lo, n, hi = group.get("minReplicas"), group.get("replicas"), group.get("maxReplicas")
        if None in (lo, n, hi) or not 0 <= lo <= n <= hi:
            problems.append(f"{gw}: needs 0 <= minReplicas <= replicas <= maxReplicas, got {lo}, {n}, {hi}")
        problems += _pod_problems(group.get("template", {}), gw, gpu="gpu" in group.get("groupName", ""))
    return problems


def check_manifests(manifests: dict[str, list[dict]]) -> list[str]:
    problems = []
    for name, docs in manifests.items():
        for d in docs:
            meta = d.get("metadata", {})
            if meta.get("namespace") != NAMESPACE:
                problems.append(f"{name}: {d.get('kind')}/{meta.get('name')} is not in namespace {NAMESPACE}")
            if d.get("kind", "").startswith("Ray") and d.get("apiVersion") != "ray.io/v1":
                problems.append(
                    f"{name}: {d['kind']} must be apiVersion ray.io/v1, got {d.get('apiVersion')}"
                )
    kinds = {d.get("kind") for docs in manifests.values() for d in docs}
    for kind in (
        "RayCluster",
        "RayJob",
        "RayService",
        "Deployment",
        "Service",
        "PersistentVolumeClaim",
        "Ingress",
    ):
        if kind not in kinds:
            problems.append(f"no {kind} among the manifests")
    for job in docs_of(manifests, "RayJob"):
        problems += _fields(job["spec"], "RayJobSpec", f"RayJob/{job['metadata']['name']}")
    for svc in docs_of(manifests, "RayService"):
        problems += _fields(svc["spec"], "RayServiceSpec", f"RayService/{svc['metadata']['name']}")
    for where, spec in cluster_specs(manifests):
        problems += check_cluster_spec(spec, where, serve=where.startswith("RayService"))
    images = [
        c["image"]
        for _, s in cluster_specs(manifests)
        for t in _templates(s)
        for c in t["spec"]["containers"]
    ]
    images += [
        c["image"]
        for d in docs_of(manifests, "Deployment")
        for c in d["spec"]["template"]["spec"]["containers"]
    ]
    problems += image_problems(images, where="deploy/k8s")
    # Every claim a pod mounts is defined here.
    claims = {d["metadata"]["name"] for d in docs_of(manifests, "PersistentVolumeClaim")}
    for name, docs in manifests.items():
        for claim in _values(docs, "claimName"):
            if claim not in claims:
                problems.append(f"{name}: mounts PVC {claim}, which no manifest defines")
    return problems


def _values(tree, key: str) -> list:
    """Every value stored under ``key`` anywhere in a parsed manifest."""
    if isinstance(tree, dict):
        return [v for k, v in tree.items() if k == key] + [x for v in tree.values() for x in _values(v, key)]
    if isinstance(tree, list):
        return [x for v in tree for x in _values(v, key)]
    return []


def _templates(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"]["template"], *(g["template"] for g in spec.get("workerGroupSpecs", []))]


# --- the tests ---------------------------------------------------------------------------------------------------


def test_every_manifest_parses_and_names_its_kind():
    manifests = load_all()
    assert {"raycluster.yaml", "rayjob.yaml", "rayservice.yaml", "mlflow.yaml"} <= set(manifests)
    for name, docs in manifests.items():
        assert docs, name
        for d in docs:
            assert d.get("apiVersion") and d.get("kind") and d.get("metadata", {}).get("name"), name


def test_manifests_meet_the_checks():
    assert check_manifests(load_all()) == []


def _cluster(m):
    return docs_of(m, "RayCluster")[0]["spec"]


def _gpu8(m):
    return next(g for g in _cluster(m)["workerGroupSpecs"] if g["groupName"] == "gpu-8x")


def _container(group):
    return group["template"]["spec"]["containers"][0]


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda m: docs_of(m, "RayCluster")[0].update(apiVersion="ray.io/v1alpha1"), "ray.io/v1"),
        (lambda m: _cluster(m).update(rayVersion="2.9.0"), "rayVersion"),
        (lambda m: _cluster(m).update(enableInTreeAutoScaling=True), "unknown RayClusterSpec field"),
        (lambda m: _cluster(m)["authOptions"].update(mode="disabled"), "mode: token"),
        (lambda m: _container(_gpu8(m))["resources"]["limits"].pop("nvidia.com/gpu"), "nvidia.com/gpu limit"),
        (lambda m: _container(_gpu8(m)).update(image="registry.example.com/dinowm:0.1.0-cpu"), "-cuda image"),
        (
            lambda m: _container(_gpu8(m)).update(image="registry.example.com/dinowm:9.9.9-cuda"),
            "tagged 9.9.9",
        ),
        (lambda m: _gpu8(m).update(minReplicas=3), "minReplicas"),
        (lambda m: _cluster(m)["headGroupSpec"].update(serviceType="LoadBalancer"), "ClusterIP"),
        (lambda m: _container(_cluster(m)["headGroupSpec"])["ports"].pop(1), "head port dashboard"),
        (lambda m: _gpu8(m)["template"]["spec"]["securityContext"].update(runAsUser=0), "runAsUser"),
        (
            lambda m: _container(_gpu8(m))["securityContext"].pop("allowPrivilegeEscalation"),
            "PrivilegeEscalation",
        ),
        (
            lambda m: _container(_gpu8(m))["env"].append({"name": "RAY_AUTH_TOKEN", "value": "x"}),
            "from a Secret",
        ),
        (lambda m: docs_of(m, "RayJob")[0]["spec"].update(submissionMode="Batch"), "submissionMode"),
        (lambda m: docs_of(m, "RayService")[0]["metadata"].update(namespace="default"), "namespace"),
        (lambda m: m.pop("shared-storage.yaml"), "no manifest defines"),
    ],
    ids=[
        "api-version",
        "ray-version",
        "misspelt-field",
        "auth-off",
        "no-gpu-limit",
        "cpu-image-on-gpu",
        "image-version",
        "replica-bounds",
        "exposed-head",
        "missing-port",
        "root-user",
        "privilege-escalation",
        "inline-token",
        "bad-enum",
        "namespace",
        "missing-pvc",
    ],  # fmt: skip
)
def test_checks_reject_a_broken_copy(breakage, message):
    manifests = load_all()
    breakage(manifests)
    problems = check_manifests(manifests)
    assert any(message in p for p in problems), problems


def test_no_secrets_in_manifests():
    for path in sorted(K8S.glob("*.yaml")):
        assert find_secrets(path.read_text()) == [], path


def test_secrets_are_referenced_by_name_and_documented():
    manifests = list(load_all().values())
    referenced = set(_values(manifests, "secretName")) | {
        ref["name"] for ref in _values(manifests, "secretKeyRef")
    }
    assert {"dinowm-ray-auth", "dinowm-api-key", "dinowm-serve-tls"} <= referenced
    readme = (K8S / "README.md").read_text()
    for name in referenced:
        assert f"create secret generic {name}" in readme or f"create secret tls {name}" in readme, name


# --- the service: serveConfigV2 is serving/serve_config.yaml ------------------------------------------------------


def serve_parity(rayservice: dict) -> list[str]:
    ours = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    ref = yaml.safe_load((REPO / "serving" / "serve_config.yaml").read_text())
    problems = []
    if ours.get("applications") != ref["applications"]:
        problems.append(
            "serveConfigV2.applications differs from serving/serve_config.yaml: edit both together"
        )
    for key in ("proxy_location", "logging_config"):
        if ours.get(key) != ref.get(key):
            problems.append(f"serveConfigV2.{key} differs from serving/serve_config.yaml")
    http = ours.get("http_options", {})
    if http.get("port") != ref["http_options"]["port"] or http.get("host") != "0.0.0.0":
        problems.append(
            "serveConfigV2.http_options: the file's port on 0.0.0.0 (the pod's Service reaches it)"
        )
    return problems


def test_rayservice_serves_the_serve_config_applications():
    (svc,) = docs_of(load_all(), "RayService")
    assert serve_parity(svc) == []


def test_serve_parity_notices_a_drift():
    (svc,) = docs_of(load_all(), "RayService")
    drifted = copy.deepcopy(svc)
    drifted["spec"]["serveConfigV2"] = svc["spec"]["serveConfigV2"].replace(
        "max_batch_size: 32", "max_batch_size: 64"
    )
    assert drifted["spec"]["serveConfigV2"] != svc["spec"]["serveConfigV2"]
    assert any("applications differs" in p for p in serve_parity(drifted))


def test_ingress_routes_to_the_rayservice():
    m = load_all()
    (svc,) = docs_of(m, "RayService")
    (ing,) = docs_of(m, "Ingress")
    backend = ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    # KubeRay names the Serve Service <RayService name>-serve-svc.
    assert backend == {"name": f"{svc['metadata']['name']}-serve-svc", "port": {"number": 8000}}
    assert ing["spec"]["tls"][0]["secretName"]


# --- the training job ----------------------------------------------------------------------------------------------


def test_rayjob_runs_the_training_module_with_valid_overrides():
    from ray_jobs.job_config import load_run_config

    (job,) = docs_of(load_all(), "RayJob")
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "ray_jobs.train"]  # what `ray job submit` runs (README, tests/ray)
    assert "__main__" in (REPO / "ray_jobs" / "train.py").read_text()
    cfg, job_cfg = load_run_config(argv[3:])  # raises ConfigError naming a bad key
    assert job_cfg.ray.use_gpu and job_cfg.ray.num_workers == 8
    assert cfg.data.path.startswith("/shared/") and job_cfg.ray.storage_path.startswith("/shared/")


# --- MLflow -------------------------------------------------------------------------------------------------------


def test_mlflow_deployment_service_and_claim_fit_together():
    m = load_all()
    docs = {d["kind"]: d for d in m["mlflow.yaml"]}
    assert set(docs) == {"PersistentVolumeClaim", "Deployment", "Service"}
    dep, svc, pvc = docs["Deployment"], docs["Service"], docs["PersistentVolumeClaim"]
    pod = dep["spec"]["template"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert svc["spec"]["type"] == "ClusterIP"
    (c,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    (sp,) = svc["spec"]["ports"]
    assert ports[sp["targetPort"]] == 5000 and f"--port={sp['port']}" in c["args"]
    assert pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert dep["spec"]["strategy"]["type"] == "Recreate"  # sqlite on a ReadWriteOnce volume: one writer
    assert _pod_problems(pod, "mlflow", gpu=False) == []
    # Every Ray pod records to this Service.
    url = f"http://{svc['metadata']['name']}.{NAMESPACE}.svc.cluster.local:{sp['port']}"
    for where, spec in cluster_specs(m):
        for t in _templates(spec):
            env = {e["name"]: e.get("value") for e in t["spec"]["containers"][0].get("env", [])}
            assert env.get("MLFLOW_TRACKING_URI") == url, where


def test_readme_lists_every_manifest():
    readme = (K8S / "README.md").read_text()
    for path in K8S.glob("*.yaml"):
        assert f"`{path.name}`" in readme, path.name
    assert Path(REPO / "docs" / "operations.md").is_file()
