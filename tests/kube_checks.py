"""How the deploy/ manifests are rendered and judged here, with no Kubernetes API to ask.

- Rendering: the real kustomize, built into `kubectl` (`kubectl kustomize DIR`, what
  `kubectl apply -k DIR` runs first; kustomize v5.5.0 on this machine image) or a standalone
  `kustomize build`. A hand-written renderer would have to reimplement strategic-merge and
  JSON patches, generators and components, and could agree with itself while kubectl disagreed.
- RayService: KubeRay v1.7.0's own CRD `openAPIV3Schema`, made strict the way the API server's
  strict field validation (kubectl's default `--validate=strict`) is: an unknown field is an
  error, not silently pruned. CEL rules (`x-kubernetes-validations`) are not evaluated.
- Core kinds: `kubernetes-validate`'s strict schemas for one Kubernetes version.
- PodMonitor: no CRD schema is vendored, so a subset of the Prometheus Operator API with every
  field this project uses and nothing else allowed; passing it implies passing the real CRD.
- serveConfigV2: Ray Serve's own `ServeDeploySchema` (what KubeRay PUTs to Serve), plus a key
  walk, since those pydantic models ignore unknown keys where the deploy would silently drop them.
"""

from __future__ import annotations

import base64
import copy
import functools
import importlib
import shutil
import subprocess
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from pydantic import BaseModel

KUBERAY_SCHEMAS = Path(__file__).resolve().parents[2] / "shared" / "schemas" / "kuberay-v1.7.0"
KUBERNETES_VERSION = "1.31.0"
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


# --- rendering ------------------------------------------------------------------------------

def kustomize_command() -> list[str] | None:
    """The kustomize this machine has (kubectl's built-in one first), or None."""
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


def render(directory: Path) -> list[dict[str, Any]]:
    """Every document `kubectl apply -k directory` would send, in order."""
    command = kustomize_command()
    if command is None:
        raise RuntimeError("neither kubectl nor kustomize is on PATH")
    done = subprocess.run([*command, str(directory)], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"kustomize failed on {directory}:\n{done.stderr}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [doc for doc in docs if doc.get("kind") == kind]


def named(docs: list[dict], kind: str, name: str) -> dict:
    found = [doc for doc in of_kind(docs, kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name!r}, found {len(found)}"
    return found[0]


# --- RayService against the KubeRay CRD ---------------------------------------------------

def _strict(schema: Any) -> Any:
    """Forbid unknown fields wherever Kubernetes would prune them: objects that list their
    `properties`, are not maps (`additionalProperties`) and do not preserve unknown fields."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if isinstance(out.get("properties"), dict):
        out["properties"] = {name: _strict(sub) for name, sub in out["properties"].items()}
        if "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = _strict(out["additionalProperties"])
    if isinstance(out.get("items"), dict):
        out["items"] = _strict(out["items"])
    for key in ("allOf", "anyOf", "oneOf"):
        if isinstance(out.get(key), list):
            out[key] = [_strict(sub) for sub in out[key]]
    return out


@functools.cache
def crd_schema(kind: str, version: str = "v1") -> dict:
    """The strict `openAPIV3Schema` of a KubeRay kind (`RayService`, `RayCluster`)."""
    path = KUBERAY_SCHEMAS / f"ray.io_{kind.lower()}s.yaml"
    crd = yaml.safe_load(path.read_text())
    schema = next(v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"] if v["name"] == version)
    return _strict(schema)


def schema_errors(doc: dict, schema: dict) -> list[str]:
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))]


def rayservice_errors(doc: dict) -> list[str]:
    return schema_errors(doc, crd_schema("RayService"))


# --- core kinds and PodMonitors ---------------------------------------------------------------

def core_errors(doc: dict) -> list[str]:
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"]
    return []


_LABEL_SELECTOR = {"type": "object", "additionalProperties": False, "properties": {
    "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
    "matchExpressions": {"type": "array", "items": {"type": "object", "additionalProperties": False,
                                                     "required": ["key", "operator"], "properties": {
        "key": {"type": "string"}, "operator": {"type": "string"},
        "values": {"type": "array", "items": {"type": "string"}}}}}}}
_RELABELING = {"type": "object", "additionalProperties": False, "properties": {
    "sourceLabels": {"type": "array", "items": {"type": "string"}}, "separator": {"type": "string"},
    "targetLabel": {"type": "string"}, "regex": {"type": "string"}, "replacement": {"type": "string"},
    "action": {"type": "string"}, "modulus": {"type": "integer"}}}
PODMONITOR_SCHEMA = {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
                     "additionalProperties": False, "properties": {
    "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "PodMonitor"},
    "metadata": {"type": "object"},
    "spec": {"type": "object", "required": ["selector", "podMetricsEndpoints"], "additionalProperties": False,
             "properties": {
        "jobLabel": {"type": "string"},
        "podTargetLabels": {"type": "array", "items": {"type": "string"}},
        "namespaceSelector": {"type": "object", "additionalProperties": False, "properties": {
            "any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}}},
        "selector": _LABEL_SELECTOR,
        "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": {
            "type": "object", "additionalProperties": False, "required": ["port"], "properties": {
                "port": {"type": "string"}, "path": {"type": "string"}, "scheme": {"enum": ["http", "https"]},
                "interval": {"type": "string"}, "scrapeTimeout": {"type": "string"},
                "honorLabels": {"type": "boolean"},
                "relabelings": {"type": "array", "items": _RELABELING},
                "metricRelabelings": {"type": "array", "items": _RELABELING}}}}}}}}


def podmonitor_errors(doc: dict) -> list[str]:
    return schema_errors(doc, PODMONITOR_SCHEMA)


# --- pods, env and Secrets ----------------------------------------------------------------------

def pod_templates(doc: dict) -> Iterator[tuple[str, dict]]:
    """(where, pod template) for every pod a document will create."""
    name = f"{doc['kind']}/{doc['metadata']['name']}"
    if doc["kind"] in WORKLOAD_KINDS:
        yield name, doc["spec"]["template"]
    elif doc["kind"] == "RayService":
        cluster = doc["spec"]["rayClusterConfig"]
        yield f"{name}/head", cluster["headGroupSpec"]["template"]
        for group in cluster.get("workerGroupSpecs", []):
            yield f"{name}/{group['groupName']}", group["template"]


def containers(template: dict) -> list[dict]:
    spec = template["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def secret_values(docs: list[dict]) -> dict[str, dict[str, str]]:
    """name -> key -> value of every Secret in the render (stringData wins, as in the API)."""
    out: dict[str, dict[str, str]] = {}
    for secret in of_kind(docs, "Secret"):
        values = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
        values.update(secret.get("stringData") or {})
        out[secret["metadata"]["name"]] = values
    return out


def secret_ref_errors(docs: list[dict]) -> list[str]:
    """Every Secret a pod, volume or RayService names exists in the render with that key."""
    secrets = secret_values(docs)
    errors = []

    def need(where: str, name: str, key: str | None) -> None:
        if name not in secrets:
            errors.append(f"{where}: Secret {name!r} is not in the manifests")
        elif key is not None and key not in secrets[name]:
            errors.append(f"{where}: Secret {name!r} has no key {key!r}")

    for doc in docs:
        if doc["kind"] == "RayService":
            auth = doc["spec"]["rayClusterConfig"].get("authOptions") or {}
            if auth.get("secretName"):
                need(f"RayService/{doc['metadata']['name']} authOptions", auth["secretName"], "auth_token")
        for where, template in pod_templates(doc):
            for volume in template["spec"].get("volumes", []):
                if "secret" in volume:
                    need(f"{where} volume {volume['name']}", volume["secret"]["secretName"], None)
            for container in containers(template):
                for env in container.get("env", []):
                    ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                    if ref and not ref.get("optional"):
                        need(f"{where}/{container['name']} env {env['name']}", ref["name"], ref["key"])
                for source in container.get("envFrom", []):
                    if "secretRef" in source and not source["secretRef"].get("optional"):
                        need(f"{where}/{container['name']} envFrom", source["secretRef"]["name"], None)
    return errors


def container_env(docs: list[dict], container: dict) -> dict[str, str]:
    """The container's environment as a pod would see it (Secret values resolved)."""
    secrets = secret_values(docs)
    out: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "secretRef" in source:
            out.update(secrets.get(source["secretRef"]["name"], {}))
    for env in container.get("env", []):
        if "value" in env:
            out[env["name"]] = str(env["value"])
        elif ref := (env.get("valueFrom") or {}).get("secretKeyRef"):
            out[env["name"]] = secrets[ref["name"]][ref["key"]]
    return out


# --- serveConfigV2 ------------------------------------------------------------------------------

def serve_config(rayservice: dict) -> dict:
    return yaml.safe_load(rayservice["spec"]["serveConfigV2"])


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        if found := _model_in(arg):
            return found
    return None


def _unknown_keys(model: type[BaseModel], data: dict, where: str) -> Iterator[str]:
    fields = model.model_fields
    names = {alias: name for name, f in fields.items() for alias in (name, f.alias) if alias}
    for key, value in data.items():
        if key not in names:
            yield f"{where}.{key}: not a field of Serve's {model.__name__}"
            continue
        sub = _model_in(fields[names[key]].annotation)
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            if sub is not None and isinstance(item, dict):
                suffix = f"[{i}]" if isinstance(value, list) else ""
                yield from _unknown_keys(sub, item, f"{where}.{key}{suffix}")


def serve_config_errors(config: dict) -> list[str]:
    """What Serve would reject (types, required fields) or silently ignore (unknown keys)."""
    from ray.serve.schema import ServeDeploySchema

    errors = list(_unknown_keys(ServeDeploySchema, config, "serveConfigV2"))
    try:
        ServeDeploySchema.model_validate(config)
    except Exception as e:  # pydantic's ValidationError, whichever pydantic Ray uses
        errors.append(f"serveConfigV2: {e}")
    return errors


def application_builder(import_path: str):
    """What Serve imports for `import_path` (`module:attr` or `module.attr`)."""
    module, _, attr = import_path.partition(":") if ":" in import_path else import_path.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def build_application(import_path: str, args: dict):
    """Build an app exactly as Serve's config deploy does (builder called with the args)."""
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    return call_user_app_builder_with_args_if_necessary(application_builder(import_path), copy.deepcopy(args))


# --- Ray node capacity ------------------------------------------------------------------------

def quantity(value: Any) -> float:
    """A Kubernetes quantity as a number (CPU '500m' -> 0.5; plain numbers as they are)."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def ray_capacity(group: dict) -> dict[str, float]:
    """What Ray schedules on one pod of a group: CPUs and GPUs from rayStartParams (required
    explicit in our manifests), else the container's GPU limit as KubeRay infers it."""
    params = group.get("rayStartParams") or {}
    limits = group["template"]["spec"]["containers"][0].get("resources", {}).get("limits", {})
    gpus = params.get("num-gpus", limits.get("nvidia.com/gpu", 0))
    return {"CPU": float(params.get("num-cpus", 0)), "GPU": float(gpus)}
