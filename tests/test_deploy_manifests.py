"""deploy/ applies as it is: every overlay renders with the real kustomize, passes the KubeRay
v1.7.0 CRD and the Kubernetes schemas strictly, builds its Serve apps from the code named in
serveConfigV2, fits its worker groups, and names only Secrets that exist. Broken copies prove
the checks can fail. How rendering and validation work: tests/kube_checks.py. The Secrets ship
`CHANGE-ME` placeholders, which the apps and the gateway refuse; checks that build or load
config first fill them in, as an operator does (README "Operators", step 2).
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import os
import re
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from kube_checks import (
    build_application, container_env, containers, core_errors, kustomize_command, named, of_kind, pod_templates,
    podmonitor_errors, quantity, ray_capacity, rayservice_errors, render, secret_ref_errors, secret_values,
    serve_config, serve_config_errors,
)

ROOT = Path(__file__).resolve().parents[1]
DEPLOY, DASHBOARDS = ROOT / "deploy", ROOT / "dashboards"
TARGETS = {"base": DEPLOY / "base", "gpu-nvlink": DEPLOY / "overlays" / "gpu-nvlink",
           "gpu-moshi": DEPLOY / "overlays" / "gpu-moshi", "cpu-dev": DEPLOY / "overlays" / "cpu-dev"}
APPS = ("foreground", "background")
CORE_KINDS = {"Namespace", "Secret", "ConfigMap", "Service", "Deployment", "StatefulSet", "PersistentVolumeClaim",
              "NetworkPolicy"}
FILLED_IN = hashlib.sha256(b"an operator's real value").hexdigest()  # fits every Secret, an API-key hash too

pytestmark = pytest.mark.skipif(kustomize_command() is None,
                                reason="needs kubectl (built-in kustomize) or kustomize on PATH")


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: render(path) for name, path in TARGETS.items()}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Only what a manifest sets may reach the config under test."""
    for key in list(os.environ):
        if key.startswith("MICROTURN_") or key == "RAY_ADDRESS":
            monkeypatch.delenv(key)
    return monkeypatch


def rayservice(docs: list[dict]) -> dict:
    return named(docs, "RayService", "microturn")


def groups(docs: list[dict]) -> dict[str, dict]:
    return {g["groupName"]: g for g in rayservice(docs)["spec"]["rayClusterConfig"]["workerGroupSpecs"]}


def filled_in(env: dict[str, str]) -> dict[str, str]:
    """The env once an operator has replaced every CHANGE-ME in the Secrets."""
    return {key: re.sub(r"CHANGE-ME[\w-]*", FILLED_IN, value) for key, value in env.items()}


def built_app(docs: list[dict], name: str, monkeypatch: pytest.MonkeyPatch, secrets_filled_in: bool = True):
    """Serve's config deploy, minus Ray: the head's env (Serve builds there or on any Ray pod:
    test_ray_pods_share_the_microturn_env) plus the app's runtime_env, then the builder. Returns
    the bound Deployment; its placement and autoscaling options are only on private fields."""
    app = next(a for a in serve_config(rayservice(docs))["applications"] if a["name"] == name)
    head = rayservice(docs)["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]
    env = container_env(docs, head["spec"]["containers"][0])
    env.update((app.get("runtime_env") or {}).get("env_vars") or {})
    for key, value in (filled_in(env) if secrets_filled_in else env).items():
        monkeypatch.setenv(key, value)
    return build_application(app["import_path"], app.get("args") or {})._bound_deployment


@pytest.mark.parametrize("target", TARGETS)
def test_rayservice_passes_the_kuberay_crd_strictly(rendered, target):
    assert [doc["kind"] for doc in rendered[target]].count("RayService") == 1
    assert rayservice_errors(rayservice(rendered[target])) == []


@pytest.mark.parametrize("target", TARGETS)
def test_core_kinds_pass_the_kubernetes_schemas_strictly(rendered, target):
    kinds = {doc["kind"] for doc in rendered[target]}
    assert kinds <= CORE_KINDS | {"RayService", "PodMonitor"}, f"unvalidated kinds: {kinds - CORE_KINDS}"
    for doc in rendered[target]:
        if doc["kind"] in CORE_KINDS:
            assert core_errors(doc) == [], f"{doc['kind']}/{doc['metadata']['name']}"
    assert {doc["metadata"].get("namespace") for doc in rendered[target] if doc["kind"] != "Namespace"} == {"microturn"}


@pytest.mark.parametrize("target", TARGETS)
def test_podmonitors_scrape_named_ports_of_real_pods(rendered, target):
    docs = rendered[target]
    pods = [t for doc in docs for _, t in pod_templates(doc)]
    assert {m["metadata"]["name"] for m in of_kind(docs, "PodMonitor")} == {"microturn-ray", "microturn-gateway"}
    for monitor in of_kind(docs, "PodMonitor"):
        assert podmonitor_errors(monitor) == []
        wanted = monitor["spec"]["selector"]["matchLabels"].items()
        selected = [t for t in pods if wanted <= (t["metadata"].get("labels") or {}).items()]
        assert selected, f"PodMonitor {monitor['metadata']['name']} selects no pod"
        ports = {p.get("name") for t in selected for c in containers(t) for p in c.get("ports", [])}
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            assert endpoint["port"] in ports, f"no selected pod names a port {endpoint['port']!r}"


@pytest.mark.parametrize("target", TARGETS)
def test_serve_config_is_what_serve_accepts(rendered, target):
    config = serve_config(rayservice(rendered[target]))
    assert serve_config_errors(config) == []
    assert [a["name"] for a in config["applications"]] == list(APPS)


@pytest.mark.parametrize("app", APPS)
@pytest.mark.parametrize("target", TARGETS)
def test_import_paths_build_the_apps_without_starting_anything(rendered, target, app, clean_env):
    import ray
    from ray.serve.deployment import Deployment

    was_running = ray.is_initialized()
    deployment = built_app(rendered[target], app, clean_env)
    assert isinstance(deployment, Deployment) and deployment.name == app
    assert ray.is_initialized() == was_running, "building an app must not start Ray"


@pytest.mark.parametrize("target", TARGETS)
def test_ray_pods_share_the_microturn_env_and_it_loads(rendered, target, clean_env):
    from cluster.config import load_config

    docs = rendered[target]
    envs = {}
    for doc in docs:
        for where, template in pod_templates(doc):
            for container in containers(template):
                env = {k: v for k, v in filled_in(container_env(docs, container)).items()
                       if k.startswith("MICROTURN_")}
                for key, value in env.items():
                    clean_env.setenv(key, value)
                load_config()  # an unknown MICROTURN_<SECTION>_<KEY> would raise ConfigError
                for key in env:
                    clean_env.delenv(key)
                if doc["kind"] == "RayService":
                    envs[where] = env
    assert len({json.dumps(env, sort_keys=True) for env in envs.values()}) == 1, envs
    assert {"MICROTURN_REDIS_URL", "MICROTURN_AUTH_API_KEY_HASHES"} <= next(iter(envs.values())).keys()


@pytest.mark.parametrize("target", TARGETS)
def test_placeholder_secrets_stop_the_apps_from_building(rendered, target, clean_env):
    from cluster.config import ConfigError

    for app in APPS:
        with pytest.raises(ConfigError, match="CHANGE-ME placeholder") as err:
            built_app(rendered[target], app, clean_env, secrets_filled_in=False)
        assert "MICROTURN_REDIS_URL" in str(err.value) and "redis://" not in str(err.value)


RAY_INTERNAL_PORTS = {"gcs-server", "client"}  # what no one outside the namespace may reach
OBSERVER_PORTS = {"dashboard", "serve", "metrics", "as-metrics", "dash-metrics"}  # KubeRay, Prometheus


def _pod_labels(doc: dict, where: str, template: dict) -> dict[str, str]:
    labels = dict(template["metadata"].get("labels") or {})
    if doc["kind"] == "RayService":  # KubeRay labels the pods it creates
        labels["ray.io/node-type"] = "head" if where.endswith("/head") else "worker"
    return labels


def exposure_errors(docs: list[dict]) -> list[str]:
    """What the NetworkPolicies let in from outside the namespace beyond the gateway Service's
    ports (to anyone) and the observers' ports (to named namespaces or pods)."""
    policies, errors = of_kind(docs, "NetworkPolicy"), []
    gateway = named(docs, "Service", "microturn-gateway")["spec"]
    served = {p["targetPort"] for p in gateway["ports"]}
    for doc in docs:
        for where, template in pod_templates(doc):
            labels = _pod_labels(doc, where, template)
            if not any(p["spec"]["podSelector"].get("matchLabels", {}).items() <= labels.items() for p in policies):
                errors.append(f"{where}: no NetworkPolicy selects it, so anyone may connect")
    for policy in policies:
        name, spec = policy["metadata"]["name"], policy["spec"]
        for rule in spec.get("ingress", []):
            peers = rule.get("from") or [{}]  # no `from`: every source
            ports = {p.get("port") for p in rule.get("ports", [])}
            for peer in peers:
                if set(peer) == {"podSelector"}:
                    continue  # pods of this namespace
                if not peer or "ipBlock" in peer:
                    to_gateway = spec["podSelector"].get("matchLabels") == gateway["selector"]
                    if not (to_gateway and ports and ports <= served):
                        errors.append(f"{name}: open to anyone beyond the gateway Service's ports")
                elif not ports or not ports <= OBSERVER_PORTS:
                    errors.append(f"{name}: another namespace reaches {sorted(map(str, ports)) or 'every port'}")
    return errors


@pytest.mark.parametrize("target", TARGETS)
def test_only_the_gateway_is_reachable_from_outside_the_namespace(rendered, target):
    docs = rendered[target]
    assert exposure_errors(docs) == []
    same = named(docs, "NetworkPolicy", "microturn-same-namespace")["spec"]
    assert same["podSelector"] == {} and same["ingress"] == [{"from": [{"podSelector": {}}]}]
    named_ports = {p["name"] for doc in docs for _, t in pod_templates(doc) for c in containers(t)
                   for p in c.get("ports", [])}
    for policy in of_kind(docs, "NetworkPolicy"):  # a named port no pod has would let nothing in
        for rule in policy["spec"].get("ingress", []):
            assert {p["port"] for p in rule.get("ports", [])} <= named_ports, policy["metadata"]["name"]
    assert not RAY_INTERNAL_PORTS & OBSERVER_PORTS


@pytest.mark.parametrize("target", TARGETS)
def test_every_named_secret_exists_with_its_key(rendered, target):
    assert secret_ref_errors(rendered[target]) == []
    assert set(secret_values(rendered[target])) == {"microturn-redis", "microturn-api-keys", "microturn-ray-auth"}


@pytest.mark.parametrize("target", TARGETS)
def test_worker_groups_give_ray_what_their_pods_request(rendered, target):
    for name, group in groups(rendered[target]).items():
        params = group["rayStartParams"]
        resources = group["template"]["spec"]["containers"][0]["resources"]
        assert "num-cpus" in params, f"{name}: say num-cpus, whatever the pod's limits"
        assert float(params["num-cpus"]) <= quantity(resources["requests"]["cpu"]), name
        gpus = resources.get("limits", {}).get("nvidia.com/gpu")
        assert ray_capacity(group)["GPU"] == float(gpus or 0), name
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], name
    assert rayservice(rendered[target])["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is True


@pytest.mark.parametrize("target", TARGETS)
def test_foreground_replicas_fit_the_groups_their_labels_select(rendered, target, clean_env):
    deployment = built_app(rendered[target], "foreground", clean_env)
    options, replica = deployment.ray_actor_options, deployment._replica_config
    selector = options.get("label_selector") or {}
    fitting = [g for g in groups(rendered[target]).values() if selector.items() <= (g.get("labels") or {}).items()]
    assert fitting, f"no worker group has the Ray labels {selector}"
    alone = {"CPU": options.get("num_cpus", 1), "GPU": options.get("num_gpus", 0)}
    bundles = replica.placement_group_bundles or [alone]
    need = {r: sum(b.get(r, 0) for b in bundles) for r in ("CPU", "GPU")}  # STRICT_PACK: one node
    room = 0
    for group in fitting:
        capacity = ray_capacity(group)
        assert all(need[r] <= capacity[r] for r in need), f"{group['groupName']}: {need} > {capacity}"
        room += group["maxReplicas"] * min(capacity[r] // need[r] for r in need if need[r])
    assert deployment.num_replicas <= room, "more replicas than the groups hold at their max"


@pytest.mark.parametrize("target", TARGETS)
def test_background_pool_fits_its_autoscaled_cpu_group(rendered, target, clean_env):
    deployment = built_app(rendered[target], "background", clean_env)
    autoscaling = deployment._deployment_config.autoscaling_config
    group = groups(rendered[target])["background"]
    capacity = ray_capacity(group)
    assert capacity["GPU"] == 0
    assert deployment.ray_actor_options["num_cpus"] <= capacity["CPU"]
    assert autoscaling.max_replicas * deployment.ray_actor_options["num_cpus"] <= group["maxReplicas"] * capacity["CPU"]


def test_gpu_nvlink_pins_the_foreground_to_nvlink_gpus(rendered, clean_env):
    docs = rendered["gpu-nvlink"]
    group = groups(docs)["foreground"]
    spec = group["template"]["spec"]
    assert spec["nodeSelector"] == {"microturn.io/nvlink": "true"}
    assert group["labels"]["microturn.io/nvlink"] == "true"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    deployment = built_app(docs, "foreground", clean_env)
    replica = deployment._replica_config
    assert deployment.ray_actor_options["num_gpus"] >= 1
    assert deployment.ray_actor_options["label_selector"]["microturn.io/nvlink"] == "true"
    assert replica.placement_group_strategy == "STRICT_PACK"
    assert all(b.get("GPU", 0) >= 1 for b in replica.placement_group_bundles)
    assert replica.placement_group_bundle_label_selector == [deployment.ray_actor_options["label_selector"]]
    assert ray_capacity(groups(docs)["background"])["GPU"] == 0


def test_cpu_dev_is_all_cpu_with_one_of_everything(rendered, clean_env):
    docs = rendered["cpu-dev"]
    assert "nvidia.com/gpu" not in yaml.safe_dump_all(docs)
    for group in groups(docs).values():
        assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 1
    assert named(docs, "Deployment", "microturn-gateway")["spec"]["replicas"] == 1
    foreground = built_app(docs, "foreground", clean_env)
    assert foreground.num_replicas == 1 and foreground.ray_actor_options["num_gpus"] == 0
    background = built_app(docs, "background", clean_env)
    scaling = background._deployment_config.autoscaling_config
    assert scaling.min_replicas == scaling.max_replicas == 1


@pytest.mark.parametrize("target", TARGETS)
def test_gateway_is_exposed_and_joins_the_rayservice(rendered, target):
    from cluster.cli import build_parser

    docs = rendered[target]
    deployment, service = named(docs, "Deployment", "microturn-gateway"), named(docs, "Service", "microturn-gateway")
    template = deployment["spec"]["template"]
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    container = template["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert service["spec"]["ports"][0]["targetPort"] == "grpc"
    args = build_parser().parse_args(container["command"][1:])  # the CLI accepts what the pod runs
    assert container["command"][0] == "microturn" and args.command == "gateway"
    assert args.port == ports["grpc"] and args.metrics_port == ports["metrics"]
    env = container_env(docs, container)
    ray = rayservice(docs)
    head = ray["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    client_port = next(p["containerPort"] for p in head["ports"] if p["name"] == "client")
    assert env["RAY_ADDRESS"] == f"ray://{ray['metadata']['name']}-head-svc:{client_port}"
    auth = ray["spec"]["rayClusterConfig"]["authOptions"]
    ref = next(e for e in container["env"] if e["name"] == "RAY_AUTH_TOKEN")["valueFrom"]["secretKeyRef"]
    assert env["RAY_AUTH_MODE"] == auth["mode"] == "token" and ref["name"] == auth["secretName"]
    hashes = next(e for e in container["env"] if e["name"] == "MICROTURN_AUTH_API_KEY_HASHES")
    assert hashes["valueFrom"]["secretKeyRef"] == {"name": "microturn-api-keys", "key": "client-api-key-hashes"}


@pytest.mark.parametrize("target", TARGETS)
def test_redis_keeps_an_aof_on_its_volume_behind_the_secret_url(rendered, target):
    docs = rendered[target]
    redis = named(docs, "StatefulSet", "microturn-redis")
    container = redis["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    data_dir = args[args.index("--dir") + 1]
    claims = {c["metadata"]["name"] for c in redis["spec"]["volumeClaimTemplates"]}
    assert any(m["mountPath"] == data_dir and m["name"] in claims for m in container["volumeMounts"])
    secret = secret_values(docs)["microturn-redis"]
    url = urlparse(secret["url"])
    service = named(docs, "Service", url.hostname)
    assert service["spec"]["selector"].items() <= redis["spec"]["template"]["metadata"]["labels"].items()
    assert url.port == service["spec"]["ports"][0]["port"]
    assert url.password == secret["password"], "the bundled Redis's password and the URL's must agree"


def test_external_redis_component_leaves_only_the_url(tmp_path):
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(TARGETS["gpu-nvlink"], tmp_path)],  # kustomize wants relative roots
        "components": [os.path.relpath(DEPLOY / "components" / "external-redis", tmp_path)]}))
    docs = render(tmp_path)
    assert not of_kind(docs, "StatefulSet")
    assert not [s for s in of_kind(docs, "Service") if s["metadata"]["name"].startswith("microturn-redis")]
    assert secret_ref_errors(docs) == [] and "url" in secret_values(docs)["microturn-redis"]


def test_tls_component_mounts_one_certificate_wherever_tls_is_served(tmp_path, clean_env):
    from cluster.config import load_config

    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(TARGETS["gpu-moshi"], tmp_path)],  # an overlay with volumes of its own
        "components": [os.path.relpath(DEPLOY / "components" / "tls", tmp_path)]}))
    docs = render(tmp_path)
    assert rayservice_errors(rayservice(docs)) == [] and secret_ref_errors(docs) == []
    assert [error for doc in docs if doc["kind"] in CORE_KINDS for error in core_errors(doc)] == []
    gateway = named(docs, "Deployment", "microturn-gateway")
    pods = [("gateway", gateway["spec"]["template"]), *pod_templates(rayservice(docs))]
    for where, template in pods:
        container = containers(template)[0]
        env = {k: v for k, v in filled_in(container_env(docs, container)).items() if k.startswith("MICROTURN_")}
        for key, value in env.items():
            clean_env.setenv(key, value)
        tls = load_config().tls
        for key in env:
            clean_env.delenv(key)
        assert tls.on and not tls.require_client_cert and tls.server_name == "microturn-gateway.microturn.svc", where
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        files = {f"{mounts['tls']}/{item['path']}" for item in volumes["tls"]["secret"]["items"]}
        assert {str(tls.cert_file), str(tls.key_file), str(tls.ca_file)} == files, where
    assert "models" in {v["name"] for v in groups(docs)["foreground"]["template"]["spec"]["volumes"]}
    probes = [gateway["spec"]["template"]["spec"]["containers"][0][p] for p in ("startupProbe", "readinessProbe",
                                                                                "livenessProbe")]
    assert all("grpc" not in probe and probe["tcpSocket"] == {"port": "grpc"} for probe in probes)
    settings = built_app(docs, "foreground", clean_env).init_args[0]  # what each replica serves with
    assert settings.tls.on and str(settings.tls.cert_file) == "/etc/microturn/tls/tls.crt"


@pytest.mark.parametrize("target", TARGETS)
def test_every_dashboard_is_provisioned(rendered, target):
    files = sorted(p.name for p in DASHBOARDS.glob("*.json"))
    listed = yaml.safe_load((DASHBOARDS / "kustomization.yaml").read_text())["configMapGenerator"][0]["files"] or []
    assert sorted(listed) == files, "list every dashboards/*.json in dashboards/kustomization.yaml"
    config_map = named(rendered[target], "ConfigMap", "microturn-dashboards")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    data = config_map.get("data") or {}
    assert sorted(data) == files
    for name, text in data.items():
        assert isinstance(json.loads(text), dict), name
    assert sum(len(t.encode()) for t in data.values()) < 1_000_000, "a ConfigMap holds at most 1 MiB"


def _get(doc, dotted: str):
    for part in dotted.split(".") if dotted else []:
        doc = doc[int(part) if re.fullmatch(r"\d+", part) else part]
    return doc


def _set_in(doc: dict, dotted: str, value) -> dict:
    parent, _, last = dotted.rpartition(".")
    _get(doc, parent)[int(last) if last.isdigit() else last] = value
    return doc


def _renamed(doc: dict, parent: str, old: str, new: str) -> dict:
    node = _get(doc, parent)
    node[new] = node.pop(old)
    return doc


def _build_edited(docs: list[dict], monkeypatch, edit) -> list[str]:
    """Deploy an edited serveConfigV2 the way Serve would; its failure is the finding."""
    config = edit(serve_config(rayservice(docs)))
    rayservice(docs)["spec"]["serveConfigV2"] = yaml.safe_dump(config)
    try:
        built_app(docs, "foreground", monkeypatch)
    except Exception as e:
        return [f"{type(e).__name__}: {e}"]
    return []


def _misspell_secret_key(docs: list[dict]) -> list[str]:
    gateway = named(docs, "Deployment", "microturn-gateway")["spec"]["template"]["spec"]["containers"][0]
    next(e for e in gateway["env"] if e["name"] == "MICROTURN_REDIS_URL")["valueFrom"]["secretKeyRef"]["key"] = "uri"
    return secret_ref_errors(docs)


def _open_to_all(docs: list[dict]) -> list[dict]:
    same = named(docs, "NetworkPolicy", "microturn-same-namespace")
    same["spec"]["ingress"][0]["from"][0]["namespaceSelector"] = {}  # pods of any namespace
    return docs


BROKEN = {
    "misspelled RayService field": lambda docs, mp: rayservice_errors(_renamed(
        rayservice(docs), "spec.rayClusterConfig.workerGroupSpecs.0", "rayStartParams", "rayStartParam")),
    "RayService field of the wrong type": lambda docs, mp: rayservice_errors(_set_in(
        rayservice(docs), "spec.rayClusterConfig.workerGroupSpecs.1.maxReplicas", "four")),
    "misspelled Serve config key": lambda docs, mp: serve_config_errors(_renamed(
        serve_config(rayservice(docs)), "applications.0", "route_prefix", "route_prefx")),
    "import_path naming no builder": lambda docs, mp: _build_edited(docs, mp, lambda c: _set_in(
        c, "applications.0.import_path", "cluster.serve_entrypoints:foregrund_app")),
    "args key the config does not have": lambda docs, mp: _build_edited(docs, mp, lambda c: _renamed(
        c, "applications.0.args.foreground", "max_sessions", "max_session")),
    "Secret key that does not exist": lambda docs, mp: _misspell_secret_key(docs),
    "Secret that is not in the manifests": lambda docs, mp: secret_ref_errors(
        [d for d in docs if not (d["kind"] == "Secret" and d["metadata"]["name"] == "microturn-ray-auth")]),
    "misspelled PodMonitor field": lambda docs, mp: podmonitor_errors(_renamed(
        named(docs, "PodMonitor", "microturn-ray"), "spec", "podMetricsEndpoints", "podMetricEndpoints")),
    "NetworkPolicy that opens Ray pods to every namespace": lambda docs, mp: exposure_errors(_open_to_all(docs)),
    "misspelled Deployment field": lambda docs, mp: core_errors(_set_in(
        named(docs, "Deployment", "microturn-gateway"), "spec.template.spec.containers.0.imagePullPolicyy",
        "IfNotPresent")),
}


@pytest.mark.parametrize("breakage", BROKEN)
def test_validation_catches_a_broken_copy(rendered, breakage, clean_env):
    docs = copy.deepcopy(rendered["gpu-nvlink"])
    assert BROKEN[breakage](docs, clean_env), f"{breakage}: not caught"


def test_gateway_command_needs_the_cluster_redis_and_ray(clean_env, capsys):
    from cluster.cli import main

    assert main(["gateway"]) == 2
    assert "MICROTURN_REDIS_URL" in capsys.readouterr().err
    clean_env.setenv("MICROTURN_REDIS_URL", "redis://127.0.0.1:1/0")
    assert main(["gateway"]) == 2
    assert "RAY_ADDRESS" in capsys.readouterr().err
    clean_env.setenv("RAY_ADDRESS", "ray://127.0.0.1:1")
    assert main(["gateway"]) == 2
    assert "MICROTURN_AUTH_API_KEY_HASHES" in capsys.readouterr().err  # keys, or auth.disabled
    clean_env.setenv("RAY_AUTH_TOKEN", "CHANGE-ME-ray-auth-token-at-least-32-chars")
    assert main(["gateway"]) == 2
    assert "RAY_AUTH_TOKEN: still the CHANGE-ME placeholder" in capsys.readouterr().err


def test_gateway_watchdog_gives_up_on_a_gone_cluster(monkeypatch):
    from types import SimpleNamespace

    import cluster.gateway_command as command

    monkeypatch.setattr(command, "WATCH_EVERY_S", 0.01)
    monkeypatch.setattr(command.serve, "status", lambda: SimpleNamespace(applications={"foreground": object()}))
    with pytest.raises(asyncio.TimeoutError):  # a healthy cluster keeps it watching
        asyncio.run(asyncio.wait_for(command._watch_cluster("foreground"), 0.3))

    def gone():
        raise ConnectionError("Ray Client: connection lost")

    monkeypatch.setattr(command.serve, "status", gone)
    asyncio.run(asyncio.wait_for(command._watch_cluster("foreground"), 5))


def test_the_moshi_overlay_serves_a_mounted_checkpoint_on_gpus(rendered, clean_env):
    docs = rendered["gpu-moshi"]
    args = next(a for a in serve_config(rayservice(docs))["applications"] if a["name"] == "foreground")["args"]
    fg = args["foreground"]
    assert fg["device"] == "cuda" and fg["dtype"] == "bfloat16" and fg["num_gpus"] == 1
    pod = groups(docs)["foreground"]["template"]["spec"]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "models")
    assert fg["checkpoint"].startswith(mount["mountPath"] + "/") and mount["readOnly"]
    claim = next(v for v in pod["volumes"] if v["name"] == "models")["persistentVolumeClaim"]["claimName"]
    assert named(docs, "PersistentVolumeClaim", claim)
    built_app(docs, "foreground", clean_env)  # the args are valid config
