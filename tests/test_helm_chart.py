"""The Helm chart: rendered by real Helm v4 (helm-python-sdk, no helm binary), validated against the
Kubernetes schemas (kubernetes-validate), and checked against the application's own contracts."""

from __future__ import annotations

import base64
import configparser
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml
from helm_crd_schemas import CRD_SCHEMAS
from kubernetes_validate import utils as kv_utils

from remediator import create_app, defaults
from remediator.config import ENV_VARS, SECRET_VARS, Settings

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "ringrift-remediator"
CI_DIR = CHART / "ci"
RELEASE = "rr"
NAMESPACE = "remediation"

# A recent Kubernetes, and the oldest one the chart declares (Chart.yaml kubeVersion).
RECENT_KUBE = "1.35.0"
OLDEST_KUBE = "1.27.0"
HA_KUBE = "1.31.0"  # the release the HA objects (HPA autoscaling/v2, rollout strategy) were checked on
REQUIRED_CI_FILES = {
    "bundled-redis-values.yaml",
    "ha-values.yaml",
    "external-redis-values.yaml",
    "everything-on-values.yaml",
    "existing-secrets-values.yaml",
}
HARDENED = {
    "runAsNonRoot": True,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
}
# Variables the chart may set beyond the application's own: prometheus_client's multiprocess dir.
EXTRA_ENV = {"PROMETHEUS_MULTIPROC_DIR"}
# Variables naming a file mounted from the application Secret.
SECRET_FILE_VARS = {f"{name}_FILE" for name in SECRET_VARS} | {
    "REMEDIATOR_SSH_KEY_FILE",
    "REMEDIATOR_SSH_KNOWN_HOSTS",
}
POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "Pod"}


# --- rendering ---------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """A YAML loader that refuses duplicate keys (Kubernetes rejects them; PyYAML keeps the last)."""


def _no_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def _ci_values(name: str) -> dict[str, Any]:
    return yaml.safe_load((CI_DIR / name).read_text(encoding="utf-8")) or {}


CASES: dict[str, dict[str, Any] | None] = {"default": None} | {
    path.name: _ci_values(path.name) for path in sorted(CI_DIR.glob("*-values.yaml"))
}


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(chart: helm.Chart, values: dict[str, Any] | None) -> dict[str, str]:
    """Template path -> rendered text, exactly as `helm template` would produce it."""
    return chart.render(values=values, name=RELEASE, namespace=NAMESPACE)


def manifests(chart: helm.Chart, values: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Every rendered Kubernetes object (NOTES.txt left out)."""
    objects: list[dict[str, Any]] = []
    for path, text in sorted(render(chart, values).items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.load_all(text, Loader=_StrictLoader):
            if doc:
                objects.append(doc)
    return objects


@pytest.fixture(scope="module")
def rendered(chart: helm.Chart) -> dict[str, list[dict[str, Any]]]:
    return {case: manifests(chart, values) for case, values in CASES.items()}


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def only(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def pod_specs(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for obj in objects:
        if obj["kind"] == "Pod":
            yield f"Pod/{obj['metadata']['name']}", obj["spec"]
        elif obj["kind"] in POD_KINDS:
            yield f"{obj['kind']}/{obj['metadata']['name']}", obj["spec"]["template"]["spec"]


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def remediator_containers(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(component, container, pod spec) for the receiver and the worker."""
    out = []
    for component in ("receiver", "worker"):
        deployment = only(objects, "Deployment", f"{RELEASE}-ringrift-remediator-{component}")
        spec = deployment["spec"]["template"]["spec"]
        out.extend((component, c, spec) for c in containers(spec))
    return out


def secret_strings(values: dict[str, Any]) -> list[str]:
    """Every secret value a values file sets (application secrets and the Redis password)."""
    found = [v for v in (values.get("secrets") or {}).values() if isinstance(v, str) and v]
    password = ((values.get("redis") or {}).get("auth") or {}).get("password")
    if password:
        found.append(password)
    return found


# --- the chart renders and lints ---------------------------------------------------------------


def test_ci_directory_covers_the_required_scenarios() -> None:
    names = {path.name for path in CI_DIR.glob("*-values.yaml")}
    assert names >= REQUIRED_CI_FILES, f"missing CI values files: {sorted(REQUIRED_CI_FILES - names)}"


def test_renders_with_real_helm_v4_for_each_case(rendered: dict[str, list[dict[str, Any]]]) -> None:
    assert helm.helm_sdk_version().startswith("v4."), helm.helm_sdk_version()
    for case, objects in rendered.items():
        kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
        for component in ("receiver", "worker"):
            assert ("Deployment", f"{RELEASE}-ringrift-remediator-{component}") in kinds, case
        assert ("Service", f"{RELEASE}-ringrift-remediator-receiver") in kinds, case


@pytest.mark.parametrize("case", list(CASES))
def test_helm_lint_reports_no_errors(case: str) -> None:
    report = helm.lint(CHART, CASES[case], strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [], report["errors"]
    assert problems == [], problems


# --- schema validation -------------------------------------------------------------------------


def _kube_validate(obj: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(obj, version, strict=True)


def _object_meta_validator(version: str) -> jsonschema.protocols.Validator:
    """kubernetes-validate's strict ObjectMeta schema, for the metadata of custom resources."""
    from referencing import Registry, Resource

    folder = f"kubernetes-json-schema/v{version}-local-strict"
    schema = kv_utils.schema_contents(f"{folder}/objectmeta-meta-v1.json", version)
    definitions = kv_utils.schema_contents(f"{folder}/_definitions.json", version)
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


@pytest.mark.parametrize("kube_version", [RECENT_KUBE, HA_KUBE, OLDEST_KUBE])
def test_every_manifest_validates_against_kubernetes_schemas(
    rendered: dict[str, list[dict[str, Any]]], kube_version: str
) -> None:
    meta = _object_meta_validator(kube_version)
    checked = 0
    for case, objects in rendered.items():
        for obj in objects:
            where = f"{case}: {obj['kind']}/{obj['metadata']['name']}"
            key = (obj["apiVersion"], obj["kind"])
            if key in CRD_SCHEMAS:
                # Prometheus Operator resources: the Kubernetes ObjectMeta schema for metadata,
                # the fields this chart uses (from the operator's API reference) for the rest.
                meta.validate(obj["metadata"])
                jsonschema.Draft202012Validator(CRD_SCHEMAS[key]).validate(obj)
            else:
                try:
                    _kube_validate(obj, kube_version)
                except kubernetes_validate.ValidationError as exc:
                    pytest.fail(f"{where}: {'.'.join(map(str, exc.path))}: {exc.message}")
                except kubernetes_validate.SchemaNotFoundError as exc:
                    pytest.fail(f"{where}: no schema to validate against: {exc.message}")
            checked += 1
    assert checked > 0


def test_values_yaml_opens_with_its_schema_line_and_validates() -> None:
    text = (CHART / "values.yaml").read_text(encoding="utf-8")
    assert text.splitlines()[0] == "# yaml-language-server: $schema=values.schema.json"
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(yaml.safe_load(text))


@pytest.mark.parametrize("case", [c for c in CASES if c != "default"])
def test_ci_values_merged_with_defaults_validate(chart: helm.Chart, case: str) -> None:
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    jsonschema.Draft7Validator(schema).validate(chart.merge_values(CASES[case]))


def _schema_properties(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    for name, prop in schema.get("properties", {}).items():
        yield f"{path}.{name}", prop
        yield from _schema_properties(prop, f"{path}.{name}")


def test_every_schema_property_has_a_description() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    missing = [path for path, prop in _schema_properties(schema) if not prop.get("description")]
    assert missing == []


def test_every_values_key_has_a_comment() -> None:
    """Every key the chart defines (a schema property) has a comment line right above it."""
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    lines = (CHART / "values.yaml").read_text(encoding="utf-8").splitlines()
    stack: list[tuple[int, str, dict[str, Any] | None]] = []  # (indent, key, schema of the key)
    uncommented = []
    for number, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z][A-Za-z0-9_]*):", line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][2] if stack else schema
        prop = (parent or {}).get("properties", {}).get(key) if parent is not None else None
        stack.append((indent, key, prop))
        if prop is None:
            continue  # data under a free-form key (e.g. a securityContext), not a chart key
        previous = lines[number - 1].strip() if number else ""
        if not previous.startswith("#"):
            uncommented.append(".".join(k for _, k, _ in stack))
    assert uncommented == []


def test_wrong_value_type_is_rejected_by_helms_schema_validation(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmError, match="replicas"):
        render(chart, {"worker": {"replicas": "three"}})
    with pytest.raises(helm.HelmError, match="recevier"):
        render(chart, {"recevier": {"replicas": 2}})


# --- hardening ---------------------------------------------------------------------------------


def test_every_container_is_hardened(rendered: dict[str, list[dict[str, Any]]]) -> None:
    seen = set()
    for case, objects in rendered.items():
        for owner, spec in pod_specs(objects):
            pod_ctx = spec.get("securityContext", {})
            for container in containers(spec):
                where = f"{case}: {owner}/{container['name']}"
                ctx = container.get("securityContext", {})
                for field, wanted in HARDENED.items():
                    assert ctx.get(field, pod_ctx.get(field)) is wanted, f"{where}: {field}"
                assert ctx.get("capabilities", {}).get("drop") == ["ALL"], where
                assert not ctx.get("capabilities", {}).get("add"), where
                assert not ctx.get("privileged", False), where
                seccomp = ctx.get("seccompProfile", pod_ctx.get("seccompProfile", {}))
                assert seccomp.get("type") == "RuntimeDefault", where
                assert spec.get("automountServiceAccountToken") is False, where
                seen.add(container["name"])
    # The check really covered the app, the bundled Redis and the helm test hook.
    assert {"receiver", "worker", "redis", "readyz"} <= seen


def test_writable_paths_are_volumes_under_a_read_only_root(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for component, container, _ in remediator_containers(rendered["default"]):
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert {"/tmp", "/home/remediator", env["PROMETHEUS_MULTIPROC_DIR"]} <= mounts, component


# --- rules -------------------------------------------------------------------------------------


def _checksums(objects: list[dict[str, Any]]) -> set[str]:
    return {
        d["spec"]["template"]["metadata"]["annotations"]["checksum/rules"]
        for d in find(objects, "Deployment")
    }


def test_rules_checksum_follows_the_rules_content_and_nothing_else(chart: helm.Chart) -> None:
    base = manifests(chart, None)
    (checksum,) = _checksums(base)  # receiver and worker agree
    configmap = only(base, "ConfigMap", f"{RELEASE}-ringrift-remediator-rules")
    assert checksum == hashlib.sha256(configmap["data"]["rules.yaml"].encode()).hexdigest()

    changed = manifests(chart, {"rules": {"content": "version: 1\n# tightened thresholds\n"}})
    assert _checksums(changed) != {checksum}

    unrelated = manifests(
        chart, {"worker": {"replicas": 2}, "config": {"logLevel": "DEBUG"}, "receiver": {"replicas": 4}}
    )
    assert _checksums(unrelated) == {checksum}


def test_rules_are_mounted_where_the_app_reads_them(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for case, objects in rendered.items():
        for component, container, spec in remediator_containers(objects):
            env = {e["name"]: e.get("value") for e in container["env"]}
            rules_file = Path(env["REMEDIATOR_RULES_FILE"])
            mount = next(m for m in container["volumeMounts"] if m["name"] == "rules")
            assert rules_file.parent == Path(mount["mountPath"]), (case, component)
            assert "subPath" not in mount, "a subPath mount never sees ConfigMap updates"
            volume = next(v for v in spec["volumes"] if v["name"] == "rules")
            configmap = volume["configMap"]["name"]
            created = find(objects, "ConfigMap", configmap)
            if created:
                assert rules_file.name in created[0]["data"], (case, component)
            else:
                assert configmap == CASES[case]["rules"]["existingConfigMap"], (case, component)


def test_chart_default_rules_are_the_repository_default_rules() -> None:
    shipped = REPO / "rules" / "default.yaml"
    if not shipped.exists():
        pytest.fail("rules/default.yaml does not exist; the chart's copy cannot be checked against it")
    copy_in_chart = CHART / "files" / "default-rules.yaml"
    assert copy_in_chart.read_bytes() == shipped.read_bytes(), (
        "helm/ringrift-remediator/files/default-rules.yaml differs from rules/default.yaml: "
        "cp rules/default.yaml helm/ringrift-remediator/files/default-rules.yaml"
    )


def test_default_rules_configmap_carries_the_shipped_file_byte_for_byte(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    configmap = only(rendered["default"], "ConfigMap", f"{RELEASE}-ringrift-remediator-rules")
    expected = (CHART / "files" / "default-rules.yaml").read_text(encoding="utf-8")
    assert configmap["data"]["rules.yaml"] == expected


# --- secrets and configuration -----------------------------------------------------------------


def test_no_secret_value_leaks_outside_secrets(rendered: dict[str, list[dict[str, Any]]]) -> None:
    case = "everything-on-values.yaml"
    values = CASES[case]
    assert values is not None
    secrets = secret_strings(values)
    assert len(secrets) >= 9, "the everything-on values must set every secret"
    objects = rendered[case]
    stored = "\n".join(
        base64.b64decode(v).decode() for s in find(objects, "Secret") for v in s.get("data", {}).values()
    )
    for value in secrets:
        # The value is really used (in a Secret), so its absence elsewhere means something.
        assert value.strip() in stored, value
        for obj in objects:
            if obj["kind"] == "Secret":
                continue
            text = json.dumps(obj)
            for fragment in {value.strip(), *value.strip().splitlines()}:
                assert fragment not in text, f"{obj['kind']}/{obj['metadata']['name']} holds a secret"


@pytest.mark.parametrize("case", list(CASES))
def test_env_literals_carry_no_secrets(rendered: dict[str, list[dict[str, Any]]], case: str) -> None:
    for component, container, _ in remediator_containers(rendered[case]):
        for entry in container["env"]:
            if entry["name"] in SECRET_VARS:
                pytest.fail(f"{component}: {entry['name']} is set directly; use {entry['name']}_FILE")
            value = entry.get("value", "")
            assert not re.search(r"://[^/@]*:[^/@]+@", value), f"{component}: {entry['name']} has a password"
        for configmap in find(rendered[case], "ConfigMap"):
            assert not re.search(r"://[^/@\s]*:[^/@\s]+@", json.dumps(configmap["data"]))


@pytest.mark.parametrize("case", list(CASES))
def test_chart_sets_only_variables_the_application_reads(
    rendered: dict[str, list[dict[str, Any]]], case: str
) -> None:
    allowed = set(ENV_VARS) | {f"{name}_FILE" for name in SECRET_VARS} | EXTRA_ENV
    for component, container, _ in remediator_containers(rendered[case]):
        names = [e["name"] for e in container["env"]]
        assert len(names) == len(set(names)), f"{component}: duplicate variables"
        unknown = set(names) - allowed
        assert not unknown, f"{case}: {component} sets variables the app does not read: {sorted(unknown)}"
        for extra in container.get("envFrom", []):
            pytest.fail(f"{component}: envFrom {extra} sets names the test cannot check")


def test_every_config_setting_reaches_the_application(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """The everything-on values set every `config` key, and each becomes one application variable."""
    defaults = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))["config"]
    values = CASES["everything-on-values.yaml"]
    assert values is not None
    assert set(values["config"]) == set(defaults)
    _, container, _ = remediator_containers(rendered["everything-on-values.yaml"])[0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    settings = Settings.from_env(
        {k: v for k, v in env.items() if v is not None and k not in SECRET_FILE_VARS}
    )
    assert settings.coordinator_url == values["config"]["coordinatorUrl"]
    assert settings.max_body_bytes == values["config"]["maxBodyBytes"]
    assert settings.dry_run is True
    assert settings.network_probes == tuple(values["config"]["networkProbes"])
    # Set by the chart from other values, not from `config`.
    computed = {"REDIS_URL", "REMEDIATOR_RULES_FILE", "REMEDIATOR_ALLOWED_HOSTS"}
    config_vars = set(env) - EXTRA_ENV - SECRET_FILE_VARS - computed
    assert len(config_vars) == len(defaults)


@pytest.mark.parametrize("case", list(CASES))
def test_secret_files_point_at_mounted_secret_keys(
    rendered: dict[str, list[dict[str, Any]]], case: str
) -> None:
    for component, container, spec in remediator_containers(rendered[case]):
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        files = {e["name"]: e["value"] for e in container["env"] if e["name"] in SECRET_FILE_VARS}
        for name, path in files.items():
            assert mounts.get("secrets") == str(Path(path).parent), (case, component, name)
            items = {i["path"] for i in volumes["secrets"]["secret"]["items"]}
            assert Path(path).name in items, (case, component, name)
        assert "REMEDIATOR_WEBHOOK_TOKEN_FILE" in files or component == "worker", (case, component)


def test_ssh_credentials_reach_the_worker_only(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for case in ("everything-on-values.yaml", "existing-secrets-values.yaml"):
        for component, container, _ in remediator_containers(rendered[case]):
            names = {e["name"] for e in container["env"]}
            has_ssh = {"REMEDIATOR_SSH_KEY_FILE", "REMEDIATOR_SSH_KNOWN_HOSTS"} <= names
            assert has_ssh is (component == "worker"), (case, component)


def test_existing_secret_is_used_and_none_is_created(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["existing-secrets-values.yaml"]
    assert find(objects, "Secret") == []
    for _, _, spec in remediator_containers(objects):
        volume = next(v for v in spec["volumes"] if v["name"] == "secrets")
        assert volume["secret"]["secretName"] == "ringrift-remediator-secrets"
    _, receiver, _ = remediator_containers(objects)[0]
    redis_url = next(e for e in receiver["env"] if e["name"] == "REDIS_URL")
    assert redis_url["valueFrom"]["secretKeyRef"] == {"name": "ringrift-redis-url", "key": "url"}


def _receiver_app(objects: list[dict[str, Any]]) -> Any:
    """The application as the rendered receiver container configures it (secrets left out)."""
    _, receiver, _ = remediator_containers(objects)[0]
    env = {
        e["name"]: e["value"] for e in receiver["env"] if "value" in e and e["name"] not in SECRET_FILE_VARS
    }
    env["REDIS_URL"] = "redis://127.0.0.1:9/0"  # never reached: the requests below need no Redis
    env.pop("REMEDIATOR_RULES_FILE")  # the ConfigMap's mount path: the packaged rules here
    return create_app({"SETTINGS": Settings.from_env(env), "TESTING": True})


@pytest.mark.parametrize("case", list(CASES))
def test_receiver_answers_for_its_service_names_and_port_forwards_and_refuses_other_hosts(
    rendered: dict[str, list[dict[str, Any]]], case: str
) -> None:
    objects = rendered[case]
    client = _receiver_app(objects).test_client()
    service = only(objects, "Service", f"{RELEASE}-ringrift-remediator-receiver")["metadata"]["name"]
    domain = (CASES[case] or {}).get("clusterDomain", "cluster.local")
    names = [
        f"{service}:8080",
        f"{service}.{NAMESPACE}",
        f"{service}.{NAMESPACE}.svc:8080",
        f"{service}.{NAMESPACE}.svc.{domain}",
        "localhost:8080",  # kubectl port-forward
        "127.0.0.1:8080",
        *(((CASES[case] or {}).get("receiver") or {}).get("allowedHosts") or []),
    ]
    for host in names:
        # /openapi.json needs no Redis: 200 means the Host was accepted.
        assert client.get("/openapi.json", headers={"Host": host}).status_code == 200, (case, host)
    for host in ("attacker.example", f"{service}.attacker.example", "10.244.0.9:8080"):
        assert client.get("/openapi.json", headers={"Host": host}).status_code == 421, (case, host)
    # Probes and scrapes by pod IP are answered whatever the Host.
    assert client.get("/healthz", headers={"Host": "10.244.0.9:8080"}).status_code == 200
    worker = [c for comp, c, _ in remediator_containers(objects) if comp == "worker"]
    assert all("REMEDIATOR_ALLOWED_HOSTS" not in {e["name"] for e in c["env"]} for c in worker)


def test_the_read_token_reaches_the_receiver_as_a_mounted_file(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for case in ("everything-on-values.yaml", "existing-secrets-values.yaml"):
        _, receiver, spec = remediator_containers(rendered[case])[0]
        env = {e["name"]: e.get("value") for e in receiver["env"]}
        assert env["REMEDIATOR_READ_TOKEN_FILE"] == "/etc/remediator/secrets/read-token", case
        items = {i["key"] for v in spec["volumes"] if v["name"] == "secrets" for i in v["secret"]["items"]}
        assert "read-token" in items, case
    objects = rendered["everything-on-values.yaml"]
    (secret,) = [s for s in find(objects, "Secret") if "read-token" in s.get("data", {})]
    assert base64.b64decode(secret["data"]["read-token"]).decode() == "SECRET-read-token-5ee5"
    # Not set: nothing mounted, and the admin token still reads.
    _, receiver, _ = remediator_containers(rendered["default"])[0]
    assert "REMEDIATOR_READ_TOKEN_FILE" not in {e["name"] for e in receiver["env"]}


@pytest.mark.parametrize(
    "secrets",
    [
        {"webhookToken": "same-token-1", "adminToken": "same-token-1"},
        {"adminToken": "same-token-2", "readToken": "same-token-2"},
        {"webhookToken": "same-token-3", "readToken": "same-token-3"},
    ],
)
def test_equal_tokens_fail_the_render_naming_the_values_keys(
    chart: helm.Chart, secrets: dict[str, str]
) -> None:
    with pytest.raises(helm.HelmError, match="must differ") as failed:
        render(chart, {"secrets": secrets})
    assert next(iter(secrets.values())) not in str(failed.value)


def test_an_allowed_host_with_a_port_is_rejected_by_the_values_schema(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmError, match="allowedHosts"):
        render(chart, {"receiver": {"allowedHosts": ["remediator.example.com:443"]}})


# --- probes, routes and workloads --------------------------------------------------------------


def _app_routes() -> dict[str, set[str]]:
    app = create_app({"SETTINGS": Settings()})
    return {rule.rule: set(rule.methods or ()) for rule in app.url_map.iter_rules()}


def test_probes_point_at_the_contract_routes(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for case, objects in rendered.items():
        for component, container, _ in remediator_containers(objects):
            if component != "receiver":
                assert "livenessProbe" not in container
                continue
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", case
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", case
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            assert container["readinessProbe"]["httpGet"]["port"] in ports
            bind = container["args"][container["args"].index("--bind") + 1]
            assert bind.endswith(f":{ports['http']}"), case


def test_probe_and_scrape_paths_are_real_routes_of_the_app(rendered: dict[str, list[dict[str, Any]]]) -> None:
    routes = _app_routes()
    objects = rendered["everything-on-values.yaml"]
    _, receiver, _ = remediator_containers(objects)[0]
    monitor = only(objects, "ServiceMonitor", f"{RELEASE}-ringrift-remediator")
    amc = only(objects, "AlertmanagerConfig", f"{RELEASE}-ringrift-remediator")
    webhook = amc["spec"]["receivers"][0]["webhookConfigs"][0]["url"]
    wanted = {
        receiver["livenessProbe"]["httpGet"]["path"]: "GET",
        receiver["readinessProbe"]["httpGet"]["path"]: "GET",
        monitor["spec"]["endpoints"][0]["path"]: "GET",
        "/" + webhook.split("/", 3)[3]: "POST",
    }
    for path, method in wanted.items():
        assert path in routes, f"{path} is not a route of remediator.create_app()"
        assert method in routes[path], f"{path} does not accept {method}"


def test_helm_test_hook_checks_readyz_on_the_receiver_service(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objects = rendered["default"]
    (pod,) = find(objects, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    service = only(objects, "Service", f"{RELEASE}-ringrift-remediator-receiver")
    port = service["spec"]["ports"][0]["port"]
    url = pod["spec"]["containers"][0]["command"][-1]
    assert url == f"http://{service['metadata']['name']}.{NAMESPACE}.svc:{port}/readyz"


def test_worker_keeps_recovered_data_on_a_volume(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for case, objects in rendered.items():
        worker = [c for c in remediator_containers(objects) if c[0] == "worker"]
        _, container, spec = worker[0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        mount = next(m for m in container["volumeMounts"] if m["name"] == "recovered")
        assert mount["mountPath"] == env["REMEDIATOR_RECOVERY_DIR"] == "/data/recovered", case
        volume = next(v for v in spec["volumes"] if v["name"] == "recovered")
        claim = volume["persistentVolumeClaim"]["claimName"]
        values = CASES[case] or {}
        existing = (values.get("persistence") or {}).get("existingClaim")
        if existing:
            assert claim == existing
        else:
            pvc = only(objects, "PersistentVolumeClaim", claim)
            assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_worker_replicas_and_rollout_follow_the_volume_access_mode(chart: helm.Chart) -> None:
    name = f"{RELEASE}-ringrift-remediator-worker"
    rwo = only(manifests(chart, {"worker": {"replicas": 1}}), "Deployment", name)
    assert rwo["spec"]["strategy"]["type"] == "Recreate"
    rwx = only(
        manifests(chart, {"worker": {"replicas": 3}, "persistence": {"accessModes": ["ReadWriteMany"]}}),
        "Deployment",
        name,
    )
    assert rwx["spec"]["replicas"] == 3
    assert rwx["spec"]["strategy"]["type"] == "RollingUpdate"


def test_bundled_redis_persists_with_aof_and_keeps_its_password_in_a_file(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objects = rendered["everything-on-values.yaml"]
    redis_set = only(objects, "StatefulSet", f"{RELEASE}-ringrift-remediator-redis")
    (container,) = redis_set["spec"]["template"]["spec"]["containers"]
    script = " ".join(container["command"] + container["args"])
    assert "--appendonly yes" in script
    assert "/run/secrets/redis/redis-password" in script
    assert "env" not in container
    (claim,) = redis_set["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
    _, receiver, _ = remediator_containers(objects)[0]
    redis_url = next(e for e in receiver["env"] if e["name"] == "REDIS_URL")
    assert redis_url["valueFrom"]["secretKeyRef"]["key"] == "redis-url"


def test_external_redis_needs_a_url(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmError, match=r"redis\.external\.url"):
        render(chart, {"redis": {"enabled": False}})
    objects = manifests(chart, {"redis": {"enabled": False, "external": {"url": "redis://r.example:6379/1"}}})
    assert find(objects, "StatefulSet") == []
    _, receiver, _ = remediator_containers(objects)[0]
    assert {"name": "REDIS_URL", "value": "redis://r.example:6379/1"} in receiver["env"]


def test_disruption_budgets_and_network_policies_select_real_pods(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objects = rendered["default"]
    pod_labels = {
        obj["metadata"]["name"]: obj["spec"]["template"]["metadata"]["labels"]
        for obj in objects
        if obj["kind"] in {"Deployment", "StatefulSet"}
    }
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        selected = find(objects, kind)
        assert selected, kind
        for obj in selected:
            selector = obj["spec"]["selector" if kind == "PodDisruptionBudget" else "podSelector"]
            wanted = selector["matchLabels"].items()
            matches = [n for n, labels in pod_labels.items() if wanted <= labels.items()]
            assert len(matches) == 1, f"{kind}/{obj['metadata']['name']} selects {matches}"
    worker_policy = only(objects, "NetworkPolicy", f"{RELEASE}-ringrift-remediator-worker")
    assert "Ingress" in worker_policy["spec"]["policyTypes"]
    assert not worker_policy["spec"].get("ingress")


# --- Prometheus Operator extras ----------------------------------------------------------------


def test_prometheus_operator_objects_are_off_by_default(rendered: dict[str, list[dict[str, Any]]]) -> None:
    assert [o for o in rendered["default"] if o["apiVersion"].startswith("monitoring.coreos.com/")] == []


def test_service_monitor_scrapes_the_receiver_service(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["everything-on-values.yaml"]
    monitor = only(objects, "ServiceMonitor", f"{RELEASE}-ringrift-remediator")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    service = only(objects, "Service", f"{RELEASE}-ringrift-remediator-receiver")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_prometheus_rule_carries_the_prevention_and_self_alerts(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    rule = only(rendered["everything-on-values.yaml"], "PrometheusRule", f"{RELEASE}-ringrift-remediator")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    expected_metric = {
        "SyncLagWarning": "ringrift_host_last_sync_timestamp_seconds",
        "CriticalSyncHosts": 'ringrift_sync_hosts{state="critical"',
        "HighRecoveryFailureRate": "remediator_ladders_total",
        "RemediatorQueueBacklog": "remediator_queue_depth",
        "RemediatorWebhookErrors": 'code=~"5.."',
        "RemediatorNoWorker": "remediator_workers",
        "RemediatorFrozen": 'remediator_automation_frozen{namespace="',
        "RingRiftHostUnreachable": "remediator_host_reachable",
        "RingRiftSyncAgentDown": "remediator_host_agent_running",
        "RemediatorProbeStale": "remediator_probe_last_run_timestamp_seconds",
    }
    assert set(alerts) == set(expected_metric)
    for name, metric in expected_metric.items():
        assert metric in alerts[name]["expr"], name
        assert alerts[name]["labels"]["severity"] in {"warning", "critical"}, name
        assert alerts[name]["annotations"]["runbook_url"], name
        assert alerts[name]["expr"].count("(") == alerts[name]["expr"].count(")"), name
    # The warning comes before the critical state: it is a warning, on lag, not on the critical state.
    assert alerts["SyncLagWarning"]["labels"]["severity"] == "warning"
    assert "critical" not in alerts["SyncLagWarning"]["expr"]
    assert 'outcome=~"failed|escalated"' in alerts["HighRecoveryFailureRate"]["expr"]
    assert alerts["RemediatorFrozen"]["for"] == "4h" and 'host_id=""' in alerts["RemediatorFrozen"]["expr"]


def test_alertmanager_config_routes_critical_sync_hosts_with_the_bearer_token(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objects = rendered["everything-on-values.yaml"]
    amc = only(objects, "AlertmanagerConfig", f"{RELEASE}-ringrift-remediator")
    assert amc["apiVersion"] == "monitoring.coreos.com/v1alpha1"
    route = amc["spec"]["route"]
    (matcher,) = route["matchers"]
    assert matcher["name"] == "alertname"
    assert re.fullmatch(matcher["value"], "CriticalSyncHosts")
    (receiver,) = amc["spec"]["receivers"]
    assert route["receiver"] == receiver["name"]
    (hook,) = receiver["webhookConfigs"]
    service = only(objects, "Service", f"{RELEASE}-ringrift-remediator-receiver")
    port = service["spec"]["ports"][0]["port"]
    assert hook["url"] == f"http://{service['metadata']['name']}.{NAMESPACE}.svc:{port}/webhook/alertmanager"
    assert hook["sendResolved"] is True
    auth = hook["httpConfig"]["authorization"]
    assert auth["type"] == "Bearer"
    secret = only(objects, "Secret", auth["credentials"]["name"])
    token = base64.b64decode(secret["data"][auth["credentials"]["key"]]).decode()
    values = CASES["everything-on-values.yaml"]
    assert values is not None
    assert token == values["secrets"]["webhookToken"]


def test_notes_explain_alertmanager_wiring(chart: helm.Chart) -> None:
    notes = render(chart, None)["ringrift-remediator/templates/NOTES.txt"]
    assert "webhook_configs" in notes
    assert "send_resolved: true" in notes
    assert "authorization" in notes
    assert "/webhook/alertmanager" in notes
    operator_notes = render(chart, {"alertmanagerConfig": {"enabled": True}})[
        "ringrift-remediator/templates/NOTES.txt"
    ]
    assert "AlertmanagerConfig" in operator_notes


# --- versions ----------------------------------------------------------------------------------


def test_chart_app_version_tracks_the_package_version(chart: helm.Chart) -> None:
    import remediator

    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg", encoding="utf-8")
    assert parser["metadata"]["version"] == "attr: remediator.__version__"  # written once, in the package
    assert chart.metadata["appVersion"] == remediator.__version__
    assert chart.metadata["apiVersion"] == "v2"


def test_oldest_validated_kubernetes_is_the_charts_minimum(chart: helm.Chart) -> None:
    assert chart.metadata["kubeVersion"] == f">={OLDEST_KUBE}-0"
    assert RECENT_KUBE in kv_utils.all_versions()


# --- high availability: Sentinel, rollouts, autoscaling ------------------------------------------


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container["env"]}


def test_sentinel_settings_reach_the_application(rendered: dict[str, list[dict[str, Any]]]) -> None:
    values = CASES["ha-values.yaml"]
    assert values is not None
    sentinel = values["redis"]["external"]["sentinel"]
    for component, container, spec in remediator_containers(rendered["ha-values.yaml"]):
        env = _env(container)
        plain = {k: e["value"] for k, e in env.items() if "value" in e and k not in SECRET_FILE_VARS}
        settings = Settings.from_env(plain)
        assert [f"{h}:{p}" for h, p in settings.redis_sentinels] == sentinel["sentinels"], component
        assert settings.redis_sentinel_master == sentinel["masterName"], component
        # The URL (db, the master's password) from its Secret; the sentinels' password from a file.
        assert env["REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "ringrift-redis-url", "key": "url"}
        assert (
            env["REDIS_SENTINEL_PASSWORD_FILE"]["value"] == "/etc/remediator/secrets/redis-sentinel-password"
        )
        items = next(v for v in spec["volumes"] if v["name"] == "secrets")["secret"]["items"]
        assert {"key": "redis-sentinel-password", "path": "redis-sentinel-password"} in items, component
    policy = only(rendered["ha-values.yaml"], "NetworkPolicy", f"{RELEASE}-ringrift-remediator-worker")
    ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule.get("ports", [])}
    assert {6379, 26379} <= ports


def test_sentinel_needs_a_master_name(chart: helm.Chart) -> None:
    values = {"redis": {"enabled": False, "external": {"sentinel": {"sentinels": ["s-0.redis:26379"]}}}}
    with pytest.raises(helm.HelmError, match="masterName"):
        render(chart, values)


def test_receiver_rolls_out_without_ever_having_fewer_ready_pods(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for case, objects in rendered.items():
        receiver = only(objects, "Deployment", f"{RELEASE}-ringrift-remediator-receiver")
        strategy = receiver["spec"]["strategy"]
        assert strategy["type"] == "RollingUpdate", case
        assert strategy["rollingUpdate"]["maxUnavailable"] == 0, case
        spec = receiver["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        sleep = container["lifecycle"]["preStop"]["exec"]["command"]
        assert sleep[0] == "sleep" and int(sleep[1]) > 0, case
        # The grace period covers the preStop pause and gunicorn's own graceful stop.
        from remediator.web.server import gunicorn_options

        graceful = gunicorn_options(bind="x", workers=1, threads=1, timeout=1)["graceful_timeout"]
        assert spec["terminationGracePeriodSeconds"] >= int(sleep[1]) + graceful, case


def test_worker_grace_period_lets_the_longest_job_finish(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """SIGTERM is rq's warm shutdown: the worker finishes its job in hand, which may be recover_data."""
    text = (CHART / "values.yaml").read_text(encoding="utf-8")
    assert "JOB_TIMEOUT" in text  # the default says where it comes from
    for case, objects in rendered.items():
        worker = only(objects, "Deployment", f"{RELEASE}-ringrift-remediator-worker")
        spec = worker["spec"]["template"]["spec"]
        assert spec["terminationGracePeriodSeconds"] > defaults.JOB_TIMEOUT, case
        (container,) = spec["containers"]
        assert "lifecycle" not in container, case  # nothing to drain: SIGTERM itself is the drain
        args = container["args"]
        values = CASES[case] or {}
        processes = (values.get("worker") or {}).get("processes", 1)
        assert args == ["worker", "--processes", str(processes)], case


def test_autoscalers_are_off_by_default(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["default"]
    assert find(objects, "HorizontalPodAutoscaler") == [] and find(objects, "ScaledObject") == []
    for component in ("receiver", "worker"):
        assert "replicas" in only(objects, "Deployment", f"{RELEASE}-ringrift-remediator-{component}")["spec"]


def test_hpa_scales_the_receiver_deployment(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["ha-values.yaml"]
    receiver = only(objects, "Deployment", f"{RELEASE}-ringrift-remediator-receiver")
    hpa = only(objects, "HorizontalPodAutoscaler", f"{RELEASE}-ringrift-remediator-receiver")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", receiver["metadata"]["name"])
    assert "replicas" not in receiver["spec"]  # the HPA owns it: a helm upgrade must not reset it
    (container,) = receiver["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["requests"]["cpu"]  # a CPU target needs a request


def _scaled_object(objects: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    worker = only(objects, "Deployment", f"{RELEASE}-ringrift-remediator-worker")
    scaled = only(objects, "ScaledObject", f"{RELEASE}-ringrift-remediator-worker")
    assert scaled["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    assert "replicas" not in worker["spec"]
    (trigger,) = scaled["spec"]["triggers"]
    auth = only(objects, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    return worker, trigger, {r["parameter"]: r for r in auth["spec"]["secretTargetRef"]}


def test_keda_scales_workers_on_the_rq_queue_through_the_sentinels(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    from rq import Queue

    values = CASES["ha-values.yaml"]
    assert values is not None
    objects = rendered["ha-values.yaml"]
    _, trigger, refs = _scaled_object(objects)
    meta = trigger["metadata"]
    assert trigger["type"] == "redis-sentinel"
    assert meta["addresses"].split(",") == values["redis"]["external"]["sentinel"]["sentinels"]
    assert meta["sentinelMaster"] == values["redis"]["external"]["sentinel"]["masterName"]
    # The very list the workers pop from: rq's key of the queue the application is configured with.
    assert meta["listName"] == Queue(values["config"]["queue"], connection=object()).key  # type: ignore[arg-type]
    assert meta["databaseIndex"] == "2"
    assert refs["password"]["name"] == "ringrift-redis-url"
    secret = only(objects, "Secret", refs["sentinelPassword"]["name"])
    password = base64.b64decode(secret["data"][refs["sentinelPassword"]["key"]]).decode()
    assert password == values["secrets"]["redisSentinelPassword"]


def test_keda_reads_the_bundled_redis_through_its_network_policy(chart: helm.Chart) -> None:
    from rq import Queue

    objects = manifests(chart, {"worker": {"keda": {"enabled": True}}})
    _, trigger, refs = _scaled_object(objects)
    service = only(objects, "Service", f"{RELEASE}-ringrift-remediator-redis")
    port = service["spec"]["ports"][0]["port"]
    assert trigger["type"] == "redis"
    assert trigger["metadata"]["address"] == f"{service['metadata']['name']}.{NAMESPACE}.svc:{port}"
    assert trigger["metadata"]["listName"] == Queue("remediator", connection=object()).key  # type: ignore[arg-type]
    secret = only(objects, "Secret", refs["password"]["name"])
    assert refs["password"]["key"] in secret["data"]
    policy = only(objects, "NetworkPolicy", f"{RELEASE}-ringrift-remediator-redis")
    peers = [peer for rule in policy["spec"]["ingress"] for peer in rule["from"]]
    assert {"app.kubernetes.io/name": "keda-operator"} in [
        p.get("podSelector", {}).get("matchLabels") for p in peers
    ]
