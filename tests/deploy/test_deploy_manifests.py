"""deploy/ as Ray, KubeRay, Kubernetes and Docker Compose will read it, without a cluster.

Every YAML parses; each manifest has the fields its consumer requires (Ray's own cluster-config validation for
``ray up``, KubeRay's and Kubernetes' rules for the rest); the files agree with each other (one image reference,
the RayJob's cluster is the RayCluster, MLflow addresses the server accepts); every ``celltune`` command line in
them is a real command of the CLI; the image lock pins only celltune's dependency closure; nothing listens beyond
private addresses and no credential is committed. Pure parsing: no network, no containers, a few seconds.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import importlib.util
import ipaddress
import re
import shlex
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from celltune.platform.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CLUSTER_YAML = DEPLOY / "ray" / "cluster.yaml"
RAYCLUSTER = DEPLOY / "kuberay" / "raycluster.yaml"
RAYJOB = DEPLOY / "kuberay" / "rayjob-search.yaml"
COMPOSE = DEPLOY / "mlflow" / "docker-compose.yaml"
ENV_EXAMPLE = DEPLOY / "mlflow" / ".env.example"
MLFLOW_K8S = DEPLOY / "mlflow" / "k8s"
DOCKERFILE = DEPLOY / "image" / "Dockerfile"
MLFLOW_DOCKERFILE = DEPLOY / "mlflow" / "Dockerfile"
LOCK = DEPLOY / "image" / "requirements.lock"
README = DEPLOY / "README.md"

EXPECTED_YAML = {
    "ray/cluster.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob-search.yaml", "kuberay/storage.yaml",
    "mlflow/docker-compose.yaml", "mlflow/k8s/namespace.yaml", "mlflow/k8s/deployment.yaml",
    "mlflow/k8s/service.yaml", "mlflow/k8s/networkpolicy.yaml",
}
# Kubernetes: names of most objects are DNS-1123 labels; KubeRay wants DNS-1035 labels of at most 53 characters
# for a RayCluster and 47 for a RayJob (it appends 6 characters to name the RayJob's cluster).
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$")
# Environment variables whose values are credentials (a store URI carries the database password).
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|CREDENTIAL|STORE_URI", re.IGNORECASE)


def _load_all(path: Path) -> list:
    return list(yaml.safe_load_all(path.read_text()))


def _load(path: Path) -> dict:
    docs = _load_all(path)
    assert len(docs) == 1, f"{path}: expected one YAML document, found {len(docs)}"
    return docs[0]


def _deploy_yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yaml", ".yml"})


def _k8s_objects() -> list[tuple[Path, dict]]:
    """Every Kubernetes object in deploy/ (documents with apiVersion and kind)."""
    return [(path, doc) for path in _deploy_yaml_files() for doc in _load_all(path)
            if isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc]


def _lock_pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name] = version
    return pins


def _documented_image(dockerfile: Path) -> str:
    """The tag of the documented ``docker build ... -t REF`` line in a Dockerfile's header."""
    for line in dockerfile.read_text().splitlines():
        if line.startswith("#") and "docker build" in line:
            words = shlex.split(line.lstrip("#"))
            return words[words.index("-t") + 1]
    raise AssertionError(f"{dockerfile}: no documented `docker build ... -t IMAGE` line")


def _pyproject() -> dict:
    with (ROOT / "pyproject.toml").open("rb") as handle:
        return tomllib.load(handle)["project"]


# ----------------------------------------------------------------------------------------------------------------
# Everything parses


def test_deploy_has_every_manifest():
    assert {str(p.relative_to(DEPLOY)) for p in _deploy_yaml_files()} == EXPECTED_YAML


@pytest.mark.parametrize("path", _deploy_yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses_into_mappings(path):
    docs = [doc for doc in _load_all(path) if doc is not None]
    assert docs, f"{path} is empty"
    assert all(isinstance(doc, dict) for doc in docs), f"{path}: every document must be a mapping"


# ----------------------------------------------------------------------------------------------------------------
# ray up: deploy/ray/cluster.yaml


def test_cluster_yaml_passes_rays_own_config_validation():
    # What `ray up` runs: the JSON schema of ray/autoscaler/ray-schema.json plus the cross-field checks, on the file
    # as written and after the AWS defaults are filled in.
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _load(CLUSTER_YAML)
    validate_config(config)
    validate_config(prepare_config(config))


def test_validation_used_above_rejects_a_broken_config():
    from jsonschema import ValidationError
    from ray.autoscaler._private.util import validate_config

    config = _load(CLUSTER_YAML)
    del config["available_node_types"]["gpu_worker"]["node_config"]
    with pytest.raises(ValidationError):
        validate_config(config)
    config = _load(CLUSTER_YAML)
    config["head_node_type"] = "no-such-type"
    with pytest.raises(ValueError, match="head_node_type"):
        validate_config(config)


def test_cluster_yaml_has_a_cpu_head_and_autoscaling_gpu_workers():
    config = _load(CLUSTER_YAML)
    assert isinstance(config["cluster_name"], str) and config["cluster_name"]
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert "GPU" not in head["resources"]
    assert not head["node_config"]["InstanceType"].startswith(("g", "p")), "the head should be a CPU instance"
    workers = {name: spec for name, spec in types.items() if name != config["head_node_type"]}
    gpu = [spec for spec in workers.values() if spec["resources"].get("GPU", 0) >= 1]
    assert gpu, "no worker type advertises a GPU"
    for spec in gpu:
        assert spec["node_config"]["InstanceType"].startswith(("g", "p")), "GPU worker on a non-GPU instance type"
        assert spec.get("min_workers", 0) < spec["max_workers"] <= config["max_workers"], "not autoscaling"


def _docker_run_env(config: dict) -> dict[str, str]:
    env = {}
    for option in config["docker"]["run_options"]:
        words = shlex.split(option)
        if words[0] in {"--env", "-e"}:
            key, _, value = words[1].partition("=")
            env[key] = value
    return env


def test_cluster_yaml_passes_mlflow_token_and_shared_storage_to_every_container():
    config = _load(CLUSTER_YAML)
    env = _docker_run_env(config)
    tracking = urlsplit(env["MLFLOW_TRACKING_URI"])
    assert tracking.scheme == "http" and ipaddress.ip_address(tracking.hostname).is_private
    assert env["RAY_AUTH_MODE"] == "token"
    assert "RAY_AUTH_TOKEN" not in env, "the token itself must not be in the config, only the path to it"
    token_dir = str(Path(env["RAY_AUTH_TOKEN_PATH"]).parent)
    assert token_dir in config["file_mounts"], "the token file is not copied to the nodes"
    volumes = [shlex.split(o)[1] for o in config["docker"]["run_options"] if shlex.split(o)[0] in {"--volume", "-v"}]
    assert "/mnt/efs:/mnt/efs" in volumes
    mounts = " ".join(config["initialization_commands"])
    assert re.search(r"mount -t nfs4 .* /mnt/efs", mounts), "the shared file system is not mounted on the hosts"


def test_cluster_yaml_dashboard_is_on_localhost_only():
    config = _load(CLUSTER_YAML)
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "0.0.0.0" not in CLUSTER_YAML.read_text()
    gcs_port = re.search(r"--port=(\d+)", head_start).group(1)
    assert f"$RAY_HEAD_IP:{gcs_port}" in " ".join(config["worker_start_ray_commands"])


# ----------------------------------------------------------------------------------------------------------------
# KubeRay


def _kube_containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def _check_ray_cluster_spec(spec: dict, where: str) -> None:
    """The fields KubeRay needs (and the rules its validation applies) for a head and GPU worker groups."""
    ray_version = spec["rayVersion"]
    assert tuple(int(x) for x in ray_version.split(".")) >= (2, 52, 0), f"{where}: token auth needs Ray >= 2.52"
    assert ray_version == _lock_pins()["ray"], f"{where}: rayVersion differs from the image's Ray"
    assert spec["authOptions"]["mode"] == "token"
    head = spec["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP" and not head.get("enableIngress", False)
    groups = [("head", head), *((g["groupName"], g) for g in spec["workerGroupSpecs"])]
    for name, group in groups:
        params = group["rayStartParams"]
        assert isinstance(params, dict) and all(isinstance(v, str) for v in params.values()), (
            f"{where}: {name} rayStartParams values must be strings (a map of strings in the CRD)")
        assert "labels" not in params, f"{where}: {name}: rayStartParams labels are rejected by KubeRay"
        containers = _kube_containers(group["template"])
        assert containers, f"{where}: {name} has no container"
        pod_spec = group["template"]["spec"]
        assert pod_spec.get("restartPolicy", "Never") == "Never", "autoscaler v2 needs restartPolicy Never or unset"
        for container in containers:
            for section in ("requests", "limits"):
                for resource, quantity in container["resources"][section].items():
                    assert QUANTITY.match(str(quantity)), f"{where}: {name} {resource}={quantity!r}"
    assert spec["workerGroupSpecs"], f"{where}: no worker group"
    gpu_groups = 0
    for group in spec["workerGroupSpecs"]:
        assert DNS_1035.match(group["groupName"])
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], (
            f"{where}: {group['groupName']} needs minReplicas <= replicas <= maxReplicas")
        resources = _kube_containers(group["template"])[0]["resources"]
        gpus = int(resources["limits"].get("nvidia.com/gpu", 0))
        if gpus:
            gpu_groups += 1
            # Extended resources cannot be overcommitted: a request, if given, must equal the limit.
            assert resources["requests"].get("nvidia.com/gpu", str(gpus)) == resources["limits"]["nvidia.com/gpu"]
    assert gpu_groups, f"{where}: no worker group has an nvidia.com/gpu limit"
    assert spec["enableInTreeAutoscaling"] is True


# Field names of the ray.io/v1 API (KubeRay 1.6 CRD reference); a misspelt field is dropped or rejected.
KUBERAY_FIELDS = {
    "RayClusterSpec": {"authOptions", "autoscalerOptions", "enableInTreeAutoscaling", "gcsFaultToleranceOptions",
                       "headGroupSpec", "headServiceAnnotations", "managedBy", "rayVersion", "suspend",
                       "workerGroupSpecs"},
    "AuthOptions": {"mode", "secretName", "enableK8sTokenAuth"},
    "AutoscalerOptions": {"resources", "image", "imagePullPolicy", "securityContext", "idleTimeoutSeconds",
                          "upscalingMode", "version", "env", "envFrom", "volumeMounts"},
    "HeadGroupSpec": {"template", "headService", "enableIngress", "rayStartParams", "serviceType", "resources",
                      "labels"},
    "WorkerGroupSpec": {"groupName", "replicas", "minReplicas", "maxReplicas", "numOfHosts", "rayStartParams",
                        "template", "scaleStrategy", "suspend", "idleTimeoutSeconds", "resources", "labels"},
    "RayJobSpec": {"activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
                   "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy", "entrypoint",
                   "runtimeEnvYAML", "jobId", "submissionMode", "entrypointResources", "entrypointNumCpus",
                   "entrypointNumGpus", "entrypointMemory", "ttlSecondsAfterFinished", "shutdownAfterJobFinishes",
                   "suspend", "schedule"},
}


def _unknown_kuberay_fields(spec: dict) -> list[str]:
    unknown = [f"spec.{k}" for k in set(spec) - KUBERAY_FIELDS["RayClusterSpec"]]
    unknown += [f"authOptions.{k}" for k in set(spec.get("authOptions", {})) - KUBERAY_FIELDS["AuthOptions"]]
    unknown += [f"autoscalerOptions.{k}"
                for k in set(spec.get("autoscalerOptions", {})) - KUBERAY_FIELDS["AutoscalerOptions"]]
    unknown += [f"headGroupSpec.{k}" for k in set(spec["headGroupSpec"]) - KUBERAY_FIELDS["HeadGroupSpec"]]
    for group in spec["workerGroupSpecs"]:
        unknown += [f"workerGroupSpecs.{k}" for k in set(group) - KUBERAY_FIELDS["WorkerGroupSpec"]]
    return unknown


def test_kuberay_manifests_use_only_fields_of_the_api():
    assert _unknown_kuberay_fields(_load(RAYCLUSTER)["spec"]) == []
    job = _load(RAYJOB)["spec"]
    assert sorted(set(job) - KUBERAY_FIELDS["RayJobSpec"]) == []
    assert _unknown_kuberay_fields(job["rayClusterSpec"]) == []
    misspelt = dict(_load(RAYCLUSTER)["spec"], enableInTreeAutoscalling=True)
    assert _unknown_kuberay_fields(misspelt) == ["spec.enableInTreeAutoscalling"]


def test_raycluster_is_what_kuberay_expects():
    cluster = _load(RAYCLUSTER)
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    name = cluster["metadata"]["name"]
    assert DNS_1035.match(name) and len(name) <= 53
    _check_ray_cluster_spec(cluster["spec"], "raycluster.yaml")
    assert cluster["spec"]["authOptions"]["secretName"], "the token Secret must be named so clients can read it"


def test_rayjob_runs_a_search_on_the_same_cluster_and_shuts_it_down():
    job = _load(RAYJOB)
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    name = job["metadata"]["name"]
    assert DNS_1035.match(name) and len(name) <= 47
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec.get("ttlSecondsAfterFinished", 0) >= 0 and spec.get("backoffLimit", 0) >= 0
    assert spec.get("activeDeadlineSeconds", 1) > 0
    assert "clusterSelector" not in spec, "a selected cluster is never shut down by the RayJob"
    assert spec["rayClusterSpec"] == _load(RAYCLUSTER)["spec"], "the RayJob's cluster differs from raycluster.yaml"
    _check_ray_cluster_spec(spec["rayClusterSpec"], "rayjob-search.yaml")
    words = shlex.split(spec["entrypoint"])
    assert words[:2] == ["celltune", "search"]


def test_rayjob_search_uses_the_shared_volume_and_fits_the_gpu_group():
    spec = _load(RAYJOB)["spec"]
    args = build_parser().parse_args(shlex.split(spec["entrypoint"])[1:])
    head = _kube_containers(spec["rayClusterSpec"]["headGroupSpec"]["template"])[0]
    shared = {mount["mountPath"] for mount in head["volumeMounts"]}
    for group in spec["rayClusterSpec"]["workerGroupSpecs"]:
        worker_mounts = {m["mountPath"] for m in _kube_containers(group["template"])[0]["volumeMounts"]}
        shared &= worker_mounts
    assert any(str(args.stores).startswith(path + "/") for path in shared), f"--stores {args.stores} not shared"
    assert any(args.storage.startswith(path + "/") for path in shared), f"--storage {args.storage} not shared"
    gpu = spec["rayClusterSpec"]["workerGroupSpecs"][0]
    assert args.max_concurrent == gpu["maxReplicas"], "an autoscaling cluster starts empty: give the concurrency"
    limits = _kube_containers(gpu["template"])[0]["resources"]["limits"]
    overrides = dict(item.split("=", 1) for item in args.overrides)
    assert float(overrides["resources.gpus_per_worker"]) <= float(limits["nvidia.com/gpu"])
    assert float(overrides["resources.cpus_per_worker"]) <= float(limits["cpu"])


def test_pvc_used_by_the_ray_pods_is_shared_read_write():
    claims = {doc["metadata"]["name"]: doc for _, doc in _k8s_objects() if doc["kind"] == "PersistentVolumeClaim"}
    spec = _load(RAYCLUSTER)["spec"]
    volumes = [v for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
               for v in group["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v]
    assert volumes
    for volume in volumes:
        claim = claims[volume["persistentVolumeClaim"]["claimName"]]
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


# ----------------------------------------------------------------------------------------------------------------
# Kubernetes objects and the MLflow server


@pytest.mark.parametrize("path,doc", _k8s_objects(), ids=lambda x: x.name if isinstance(x, Path) else x["kind"])
def test_kubernetes_object_has_required_fields(path, doc):
    name = doc["metadata"]["name"]
    assert re.match(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", name) and len(name) <= 63, f"{path}: bad name {name!r}"
    kind = doc["kind"]
    if kind == "Deployment":
        assert doc["apiVersion"] == "apps/v1"
        selector = doc["spec"]["selector"]["matchLabels"]
        labels = doc["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), f"{path}: the selector does not match the pod labels"
        for container in doc["spec"]["template"]["spec"]["containers"]:
            assert container["name"] and container["image"]
    elif kind == "Service":
        assert doc["apiVersion"] == "v1"
        assert doc["spec"]["type"] == "ClusterIP"
        assert doc["spec"]["selector"] and doc["spec"]["ports"]
        for port in doc["spec"]["ports"]:
            assert "nodePort" not in port and isinstance(port["port"], int)
    elif kind == "NetworkPolicy":
        assert doc["apiVersion"] == "networking.k8s.io/v1" and "podSelector" in doc["spec"]
    elif kind == "Namespace" or kind == "PersistentVolumeClaim":
        assert doc["apiVersion"] == "v1"
    else:
        assert kind in {"RayCluster", "RayJob"}, f"{path}: unexpected kind {kind}"


def _mlflow_objects() -> dict[str, dict]:
    return {doc["kind"]: doc for _, doc in _k8s_objects() if doc["metadata"].get("namespace") == "mlflow"}


def _flags(args: list[str]) -> dict[str, str]:
    """``--name=value`` / ``--name value`` flags of a command line."""
    flags, key = {}, None
    for word in args:
        if word.startswith("--"):
            key, sep, value = word[2:].partition("=")
            flags[key] = value if sep else ""
            key = None if sep else key
        elif key is not None:
            flags[key], key = word, None
    return flags


def test_mlflow_service_deployment_and_networkpolicy_fit_together():
    objects = _mlflow_objects()
    deployment, service, policy = objects["Deployment"], objects["Service"], objects["NetworkPolicy"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    port_names = {p["name"]: p["containerPort"] for p in container["ports"]}
    target = port_names[service["spec"]["ports"][0]["targetPort"]]
    assert int(_flags(container["command"][2:] + container["args"])["port"]) == target
    # The Ray pods are the clients the policy lets in.
    allowed = policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    spec = _load(RAYCLUSTER)["spec"]
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        assert allowed.items() <= group["template"]["metadata"]["labels"].items()


def is_allowed_host_header(allowed_hosts: list[str], host: str) -> bool:
    """MLflow's Host-header rule (mlflow.server.security_utils.is_allowed_host_header, MLflow 3.5+): an exact
    host:port match, or a match of a pattern with ``*``; ``*`` alone allows all. Re-stated here because importing
    mlflow costs seconds."""
    return bool(host) and ("*" in allowed_hosts or any(
        fnmatch.fnmatch(host, allowed) if "*" in allowed else host == allowed for allowed in allowed_hosts))


def test_host_rule_matches_mlflows_documented_examples():
    assert is_allowed_host_header(["mlflow.company.com", "192.168.1.100"], "mlflow.company.com")
    assert is_allowed_host_header(["*.company.com", "192.168.*"], "192.168.1.7:5000")
    assert not is_allowed_host_header(["mlflow.company.com"], "mlflow.company.com:5000")
    assert is_allowed_host_header(["*"], "anything:1")


def test_mlflow_server_restricts_hosts_and_origins_and_the_ray_nodes_are_allowed():
    # Kubernetes: the URI every Ray pod gets must name the Service, and the server must accept its Host header.
    objects = _mlflow_objects()
    container = objects["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    flags = _flags(container["args"])
    hosts, origins = flags["allowed-hosts"].split(","), flags["cors-allowed-origins"].split(",")
    assert "*" not in hosts and "*" not in origins and "disable-security-middleware" not in flags
    service = objects["Service"]
    uris = {env["value"] for group in [_load(RAYCLUSTER)["spec"]["headGroupSpec"],
                                       *_load(RAYCLUSTER)["spec"]["workerGroupSpecs"]]
            for env in _kube_containers(group["template"])[0]["env"] if env["name"] == "MLFLOW_TRACKING_URI"}
    assert len(uris) == 1
    uri = urlsplit(uris.pop())
    assert uri.hostname == f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    assert uri.port == service["spec"]["ports"][0]["port"]
    assert is_allowed_host_header(hosts, uri.netloc)
    assert is_allowed_host_header(hosts, f"localhost:{uri.port}"), "the port-forwarded UI would be refused"
    assert not is_allowed_host_header(hosts, "attacker.example:5000")

    # One VM: the address cluster.yaml gives the Ray nodes must be accepted with .env.example's settings.
    env = dict(line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if "=" in line
               and not line.startswith("#"))
    vm_hosts = env["MLFLOW_ALLOWED_HOSTS"].split(",")
    assert "*" not in vm_hosts and "*" not in env["MLFLOW_CORS_ALLOWED_ORIGINS"].split(",")
    vm_uri = urlsplit(_docker_run_env(_load(CLUSTER_YAML))["MLFLOW_TRACKING_URI"])
    assert is_allowed_host_header(vm_hosts, vm_uri.netloc)
    assert is_allowed_host_header(vm_hosts, "localhost:5000")


def test_compose_publishes_only_mlflow_and_only_on_a_private_address():
    compose = _load(COMPOSE)
    services = compose["services"]
    assert set(services) >= {"postgres", "minio", "mlflow"}
    published = {name: svc.get("ports", []) for name, svc in services.items()}
    assert published.pop("mlflow"), "mlflow publishes no port"
    assert not any(published.values()), f"only mlflow may publish a port: {published}"
    for port in services["mlflow"]["ports"]:
        host = str(port).rsplit(":", 2)[0]
        assert host in {"127.0.0.1", "${MLFLOW_BIND_ADDRESS:-127.0.0.1}"}, f"port {port} binds beyond localhost"
    env = dict(line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if "=" in line
               and not line.startswith("#"))
    assert env["MLFLOW_BIND_ADDRESS"] == "127.0.0.1"
    assert compose["networks"]["backend"]["internal"] is True
    for name in ("postgres", "minio"):
        assert services[name]["networks"] == ["backend"]
    flags = _flags(services["mlflow"]["command"][2:])
    assert flags["artifacts-destination"].startswith("s3://")
    assert services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
    assert flags["allowed-hosts"] and flags["cors-allowed-origins"]


def test_nothing_is_exposed_outside_the_cluster_network():
    for path, doc in _k8s_objects():
        assert doc["kind"] != "Ingress", f"{path}: Ingress"
        text = yaml.safe_dump(doc)
        assert "LoadBalancer" not in text and "NodePort" not in text, f"{path}: exposed Service type"
        assert "hostNetwork: true" not in text and "hostPort" not in text, f"{path}: binds on the node's network"


def test_every_wildcard_bind_is_inside_a_container_and_says_why():
    # 0.0.0.0 is only acceptable where the listener lives in a pod or container whose port a ClusterIP Service,
    # a port-forward or a localhost-bound published port keeps private; the line above it must say so.
    allowed = {RAYCLUSTER, RAYJOB, COMPOSE, MLFLOW_K8S / "deployment.yaml"}
    found = 0
    for path in sorted(DEPLOY.rglob("*")):
        if not path.is_file():
            continue
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines):
            if "0.0.0.0" not in line:
                continue
            found += 1
            assert path in allowed, f"{path}:{number + 1}: binds 0.0.0.0"
            above = [lines[i] for i in range(max(0, number - 3), number) if lines[i].strip().startswith("#")]
            assert any("Inside the" in comment for comment in above), f"{path}:{number + 1}: unexplained 0.0.0.0"
    assert found == 4  # dashboard (RayCluster, RayJob), MLflow (compose, Kubernetes)


# ----------------------------------------------------------------------------------------------------------------
# One image everywhere


def test_one_image_reference_everywhere():
    image = _documented_image(DOCKERFILE)
    version = _pyproject()["version"]
    assert image.rsplit(":", 1)[1] == version, "the image tag should be the celltune version it contains"
    assert f'org.opencontainers.image.version="{version}"' in DOCKERFILE.read_text()
    assert _load(CLUSTER_YAML)["docker"]["image"] == image
    for path in (RAYCLUSTER, RAYJOB):
        doc = _load(path)
        spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            for container in _kube_containers(group["template"]):
                assert container["image"] == image, f"{path}: {container['name']} runs {container['image']}"
    assert f"-t {image} ." in README.read_text()


def test_mlflow_server_image_is_one_reference_with_the_clients_mlflow():
    image = _documented_image(MLFLOW_DOCKERFILE)
    assert _load(COMPOSE)["services"]["mlflow"]["image"] == image
    assert _mlflow_objects()["Deployment"]["spec"]["template"]["spec"]["containers"][0]["image"] == image
    # The [auth] extra brings what `--app-name basic-auth` needs (Flask-WTF).
    server_mlflow = re.search(r"mlflow\[auth\]==([0-9.]+)", MLFLOW_DOCKERFILE.read_text()).group(1)
    assert server_mlflow == _lock_pins()["mlflow"] == image.rsplit(":", 1)[1]


# ----------------------------------------------------------------------------------------------------------------
# Every celltune command line in deploy/ is a real command


def _celltune_commands(text: str) -> list[list[str]]:
    """``celltune ...`` argument lists in shell text: at a line start or after ``--`` (``ray job submit -- ...``)."""
    commands = []
    for line in text.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        for index, word in enumerate(words):
            if word == "celltune" and (index == 0 or words[index - 1] == "--"):
                rest = words[index + 1:]
                end = next((i for i, w in enumerate(rest) if w in {"&&", "||", ";", "|", "&"}), len(rest))
                commands.append(rest[:end])
    return commands


def _readme_shell_blocks() -> str:
    return "\n".join(re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.DOTALL))


def _manifest_commands() -> list[tuple[str, list[str]]]:
    found = [("rayjob entrypoint", cmd) for cmd in _celltune_commands(_load(RAYJOB)["spec"]["entrypoint"])]
    config = _load(CLUSTER_YAML)
    shell = [c for key, value in config.items() if key.endswith("_commands") for c in value]
    found += [("cluster.yaml", cmd) for cmd in _celltune_commands("\n".join(shell))]
    found += [("README", cmd) for cmd in _celltune_commands(_readme_shell_blocks())]
    return found


def test_commands_are_found():
    sources = [source for source, _ in _manifest_commands()]
    assert sources.count("rayjob entrypoint") == 1
    assert sources.count("README") >= 12
    assert _celltune_commands("ray job submit --no-wait -- celltune data info /x && echo ok\ncelltune --debug \\\n"
                              "  search --space demo  # note") == [["data", "info", "/x"],
                                                                   ["--debug", "search", "--space", "demo"]]


@pytest.mark.parametrize("source,argv", _manifest_commands(), ids=lambda x: x if isinstance(x, str) else " ".join(x))
def test_celltune_command_parses_with_the_real_cli(source, argv):
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{source}: `celltune {shlex.join(argv)}` is not a valid command (argparse exit {exc.code})")
    assert args.handler is not None


def test_the_cli_parser_really_rejects_bad_commands():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["search", "--stores", "/data/stores"])  # --space is required
    with pytest.raises(SystemExit):
        build_parser().parse_args(["search", "--space", "demo", "--no-such-flag"])


def test_cluster_searches_in_the_readme_use_shared_storage():
    searches = [build_parser().parse_args(cmd) for _, cmd in _manifest_commands() if cmd[:1] == ["search"]]
    assert len(searches) >= 3
    for args in searches:
        shared = "/mnt/efs/" if str(args.stores).startswith("/mnt/efs/") else "/data/"
        assert str(args.stores).startswith(shared) and args.storage.startswith(shared), (
            "stores and Tune storage must both be on the shared file system of that cluster")
        # A fresh search on an autoscaling cluster needs --max-concurrent; a resumed one restores its own.
        assert args.address == "auto" and (args.max_concurrent or args.resume)


# ----------------------------------------------------------------------------------------------------------------
# The lock: celltune's dependency closure, pinned


def _installed_closure(roots: list[str], exclude: set[str]) -> set[str]:
    """Names of every installed distribution ``roots`` need (extras and markers honoured), not entering ``exclude``."""
    seen: set[tuple[str, str]] = set()
    names: set[str] = set()
    pending = [Requirement(root) for root in roots]
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        if name in exclude:
            continue
        for extra in ["", *requirement.extras]:
            if (name, extra) in seen:
                continue
            seen.add((name, extra))
            names.add(name)
            for child in importlib.metadata.requires(name) or []:
                child_requirement = Requirement(child)
                if child_requirement.marker is None or child_requirement.marker.evaluate({"extra": extra}):
                    pending.append(child_requirement)
    return names


def _celltune_roots() -> list[str]:
    # The installed celltune's requirements (with the image's [cluster] extra, if declared) and pyproject's: an
    # editable install's metadata is as old as its last `pip install -e`, and the image follows pyproject.
    project = _pyproject()
    installed = [r for r in importlib.metadata.requires("celltune") or []
                 if Requirement(r).marker is None or Requirement(r).marker.evaluate({"extra": "cluster"})]
    return [*installed, *project["dependencies"], *project.get("optional-dependencies", {}).get("cluster", [])]


def test_lock_pins_every_package_exactly():
    lines = [line for line in LOCK.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert lines
    for line in lines:
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*==[0-9A-Za-z.+!]+", line), f"not an exact pin: {line!r}"
    names = [line.split("==")[0] for line in lines]
    assert names == sorted(set(names)), "duplicate or unsorted names"


def test_lock_names_only_celltunes_dependency_closure():
    closure = _installed_closure(_celltune_roots(), exclude={"celltune", "torch"})
    extra = set(_lock_pins()) - closure
    assert not extra, f"requirements.lock pins packages celltune does not need: {sorted(extra)}"
    assert not {"torch", "celltune", "pytest", "ruff"} & set(_lock_pins())


def test_lock_covers_every_declared_dependency_but_torch():
    declared = {canonicalize_name(Requirement(r).name) for r in _pyproject()["dependencies"]}
    missing = declared - {"torch"} - set(_lock_pins())
    assert not missing, f"declared but not pinned (rerun deploy/image/make_lock.py): {sorted(missing)}"


def _declares_ray_default() -> bool:
    project = _pyproject()
    roots = [*project["dependencies"], *project.get("optional-dependencies", {}).get("cluster", [])]
    return any(canonicalize_name(Requirement(r).name) == "ray" and "default" in Requirement(r).extras for r in roots)


@pytest.mark.xfail(not _declares_ray_default(), strict=True,
                   reason="pyproject.toml declares no ray[default] (e.g. a [cluster] extra): no dashboard in the image")
def test_lock_has_rays_dashboard_for_ray_job_submit_and_kuberay():
    dashboard = {canonicalize_name(Requirement(r).name) for r in importlib.metadata.requires("ray") or []
                 if Requirement(r).marker is not None and Requirement(r).marker.evaluate({"extra": "default"})
                 and not Requirement(r).marker.evaluate({"extra": ""})}
    assert dashboard
    assert dashboard <= set(_lock_pins()), f"missing from the lock: {sorted(dashboard - set(_lock_pins()))}"


def _make_lock():
    spec = importlib.util.spec_from_file_location("_celltune_make_lock", DEPLOY / "image" / "make_lock.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


GRAPH = {
    "app": ['lib[fast]>=1', "torch>=2", 'winonly; sys_platform == "win32"', 'devtool; extra == "dev"'],
    "lib": ["base", 'accel; extra == "fast"', 'gui; extra == "gui"', "app"],  # a cycle back to app
    "torch": ["sympy", "base"],
    "base": [], "accel": ["base"], "gui": [], "sympy": [], "winonly": [], "devtool": [],
}


def _versions(graph: dict[str, list[str]]):
    """A ``version`` look-up for a hand-made graph: 1.<length of the name>, or not installed."""
    def version(name: str) -> str:
        if name not in graph:
            raise importlib.metadata.PackageNotFoundError(name)
        return f"1.{len(name)}"
    return version


def test_make_lock_closure_follows_extras_and_markers_and_skips_torchs_own_deps():
    make_lock = _make_lock()
    pins = make_lock.closure(["app"], exclude={"torch"}, requires=GRAPH.get, version=_versions(GRAPH))
    # sympy only torch needs: left out with torch; base is kept (lib needs it too); extras only when asked.
    assert pins == {"app": "1.3", "lib": "1.3", "base": "1.4", "accel": "1.5"}
    # lib is walked first without extras; when "other" asks for lib[gui] later, gui's requirements are added.
    graph = {"lib": ["base", 'gui; extra == "gui"'], "other": ["lib[gui]"], "base": [], "gui": []}
    assert set(make_lock.closure(["lib"], requires=graph.get, version=_versions(graph))) == {"lib", "base"}
    pins = make_lock.closure(["other", "lib"], requires=graph.get, version=_versions(graph))
    assert set(pins) == {"other", "lib", "base", "gui"}
    assert make_lock.lock_text({"b": "2", "a": "1"}).endswith("a==1\nb==2\n")


def test_make_lock_names_a_missing_distribution():
    make_lock = _make_lock()
    graph = {"app": ["ghost>=1"]}
    with pytest.raises(make_lock.LockError, match=r"ghost \(required by app\) is not installed"):
        make_lock.closure(["app"], requires=graph.get, version=_versions(graph))


def test_make_lock_on_this_environment_stays_inside_the_closure():
    make_lock = _make_lock()
    pins = make_lock.closure(make_lock.declared_dependencies())
    assert pins["ray"] == importlib.metadata.version("ray") and "torch" not in pins
    assert set(pins) <= _installed_closure(_celltune_roots(), exclude={"celltune", "torch"})


# ----------------------------------------------------------------------------------------------------------------
# No credentials committed


CREDENTIAL_PATTERNS = {
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
    "Slack token": re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    "password in a URI": re.compile(r"://[^/\s:@]+:(?!\$\{|PASSWORD@|<)[^@\s/]+@"),
    "long hex or base64 secret": re.compile(r"(?<![A-Za-z0-9/+_-])[A-Za-z0-9+/]{40,}={0,2}(?![A-Za-z0-9/+_-])"),
}


def test_credential_scan_catches_what_it_looks_for():
    samples = ["AKIAABCDEFGHIJKLMNOP", "-----BEGIN OPENSSH PRIVATE KEY-----", "ghp_" + "a1" * 18,
               "postgresql://mlflow:hunter2@db:5432/mlflow", "token: " + "Zm9vYmFy" * 6]
    for sample in samples:
        assert any(p.search(sample) for p in CREDENTIAL_PATTERNS.values()), sample
    for fine in ["postgresql://${POSTGRES_USER}:${POSTGRES_PASSWORD}@postgres:5432/${POSTGRES_DB}",
                 "postgresql://mlflow:PASSWORD@your-db.example.internal:5432/mlflow", "fs-0123456789abcdef0"]:
        assert not any(p.search(fine) for p in CREDENTIAL_PATTERNS.values()), fine


@pytest.mark.parametrize("path", sorted(p for p in DEPLOY.rglob("*") if p.is_file() and "__pycache__" not in p.parts),
                         ids=lambda p: str(p.relative_to(DEPLOY)))
def test_no_credentials_in_deploy_files(path):
    if path == LOCK:
        return  # package names and versions only (pinned format checked above)
    text = path.read_text()
    for what, pattern in CREDENTIAL_PATTERNS.items():
        match = pattern.search(text)
        assert match is None, f"{path}: looks like a {what}: {match.group(0)[:12]}..."


def test_secrets_come_from_secret_stores_not_from_the_manifests():
    assert not [p for p, doc in _k8s_objects() if doc["kind"] == "Secret"], "a Secret object is committed"
    for path, doc in _k8s_objects():
        for node in _walk(doc):
            if isinstance(node, dict) and "name" in node and ("value" in node or "valueFrom" in node):
                if SECRET_NAME.search(node["name"]):
                    assert "valueFrom" in node, f"{path}: {node['name']} is given literally"
    compose = _load(COMPOSE)
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key) or "URI" in key:
                assert "${" in str(value), f"compose {name}: {key} must come from .env"
    env_example = [line for line in ENV_EXAMPLE.read_text().splitlines() if "=" in line and not line.startswith("#")]
    for line in env_example:
        key, value = line.split("=", 1)
        if SECRET_NAME.search(key) or (key.startswith("MINIO") and key.endswith("_USER")):
            assert re.fullmatch(r"<[-a-z]+>", value), f".env.example: {key} must be a <placeholder>"
    assert ".env" in (DEPLOY / "mlflow" / ".gitignore").read_text().split(), "deploy/mlflow/.env must be ignored"


def _walk(node):
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)
