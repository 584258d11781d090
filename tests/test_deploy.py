"""The deployment path, as an operator walks it, against a real `prefect server start`.

- deploy/prefect.yaml onto a local `process` pool, run `ratio-study/nightly` with small
  parameters through a real worker against moto S3, and find every output in the bucket
  (`prune-runs/weekly` is registered beside it with its schedule, not run: tests/test_retention.py
  runs the flow);
  the S3 secret, a canary given to the worker alone, shows up in no output, log, artifact,
  file or API record;
- the same file onto a Docker pool, by the command and environment of docker-compose.yml's
  `deploy` service: deployed, not run; the GPU request is followed down to the request body
  the Docker worker would send to the Docker daemon, whose environment gets the credentials
  from the Secret blocks that the pool's template refers to and the deployments do not hold;
- deploy/k8s-gpu-job-template.json and k8s-job-template.json accepted as Kubernetes pools'
  base job templates: the pods they render take the credentials from a Kubernetes Secret,
  and the GPU one asks for a GPU;
- deploy/docker-compose.yml holds together with prefect.yaml (it cannot run here: no Docker).

One Prefect server (SQLite in a temporary PREFECT_HOME, a free loopback port, its scheduler
off so that no nightly run starts by itself) serves the whole session. Every process a test
starts is stopped when it ends, passed or failed.
"""
import asyncio
import json
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import boto3
import pytest
import yaml

from conftest import SMALL_SPLITS
from prefect_server import PREFECT, REPO, Server, start, stop

pytestmark = pytest.mark.slow

PREFECT_YAML = REPO / "deploy" / "prefect.yaml"
K8S_TEMPLATE = REPO / "deploy" / "k8s-gpu-job-template.json"
K8S_STUDY_TEMPLATE = REPO / "deploy" / "k8s-job-template.json"
DOCKER_TEMPLATE = REPO / "deploy" / "docker-job-template.json"
COMPOSE = REPO / "deploy" / "docker-compose.yml"
# The split sizes of the small synthetic dataset, as training option fields.
SMALL_OPTIONS = {flag.removeprefix("--").replace("-", "_"): int(value)
                 for flag, value in zip(SMALL_SPLITS[::2], SMALL_SPLITS[1::2])}
RUN_OUTPUTS = ("report.md", "metrics_by_ratio.png", "roc.png", "pr.png", "run.json")
JOB_OUTPUTS = ("metrics.json", "claim.json", "none/simple/confusion_matrix.png", "none/simple/curves.png",
               *(f"none/simple/seed-{s}/{name}" for s in (0, 1) for name in ("metrics.json", "history.csv",
                                                                           "predictions.csv")),
               "none/simple/seed-0/model.pt")  # the nightly keeps the first seed's weights (save_models: first)
CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
# Where a Docker pool's template finds each credential: a Prefect Secret block, by name.
SECRET_BLOCKS = {"AWS_ACCESS_KEY_ID": "ratio-cnn-aws-access-key-id",
                 "AWS_SECRET_ACCESS_KEY": "ratio-cnn-aws-secret-access-key"}
# Where a Kubernetes pod finds them: keys of the Kubernetes Secret ratio-cnn-s3.
S3_SECRET_ENV = [{"name": name, "valueFrom": {"secretKeyRef": {"name": "ratio-cnn-s3", "key": name}}}
                 for name in CREDENTIALS]


def deploy_env(server: Server, study_pool: str, gpu_pool: str, **extra: str) -> dict:
    """What an operator exports before `prefect deploy` (see docs/deploy.md): no credentials."""
    return server.env(
        RATIO_CNN_STUDY_POOL=study_pool, RATIO_CNN_GPU_POOL=gpu_pool, RATIO_CNN_GPUS="2",
        RATIO_CNN_IMAGE="ratio-cnn:test", RATIO_CNN_DOCKER_NETWORK="ratio-cnn-test", RATIO_CNN_WORKDIR=str(REPO),
        RATIO_CNN_DATA="s3://unused/data", RATIO_CNN_OUT="s3://unused/results",
        AWS_ENDPOINT_URL="http://127.0.0.1:9", AWS_DEFAULT_REGION="us-east-1",
    ) | extra


def deploy(server: Server, env: dict) -> None:
    """The two commands of docs/deploy.md: every deployment, then the GPU count as the limit."""
    server.prefect("deploy", "--all", "--prefect-file", str(PREFECT_YAML), env=env)
    server.prefect("deploy", "--prefect-file", str(PREFECT_YAML), "--name", "gpu",
                   "--concurrency-limit", env["RATIO_CNN_GPUS"], env=env)


def placeholders(path: Path) -> set[str]:
    """The environment variables that `{{ $VAR }}` placeholders of a YAML file read (not its comments)."""
    return set(re.findall(r"\{\{\s*\$(\w+)\s*\}\}", json.dumps(yaml.safe_load(path.read_text()))))


def with_compose_defaults(value: str, **dotenv: str) -> str:
    """Docker Compose's interpolation with only `dotenv`'s variables set (as deploy/.env
    would): `${VAR:-default}` is the variable or its default, `$$` a `$` left for the
    container's shell."""
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: dotenv.get(m[1], m[2]), value).replace("$$", "$")


def worker_pool(compose: dict) -> str:
    return with_compose_defaults(compose["services"]["worker"]["environment"]["RATIO_CNN_POOL"])


def worker_template_mount(compose: dict) -> tuple[Path, str]:
    """Where the compose worker's pool template comes from on the host, and where it sits in
    the worker's container."""
    [mount] = [v for v in compose["services"]["worker"]["volumes"] if v.startswith("./docker-job-template.json:")]
    host_path, container_path = mount.split(":")[:2]
    return (COMPOSE.parent / host_path).resolve(), container_path


def run_service(server: Server, service: dict, **dotenv: str) -> None:
    """A compose service's command with its environment, here against the test server, from
    the repository root, with this virtualenv's `python` and `prefect` first on the PATH."""
    env = {name: with_compose_defaults(str(value), **dotenv) for name, value in service["environment"].items()}
    env |= {"PREFECT_API_URL": server.api_url, "PATH": f"{Path(PREFECT).parent}{os.pathsep}{os.environ['PATH']}"}
    command = [with_compose_defaults(part) for part in service["command"]]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
                            env=server.env() | env)
    assert result.returncode == 0, result.stdout + result.stderr


def render(server: Server, configuration_class, template: dict, values: dict):
    """A worker's job configuration from a pool's template and a deployment's job variables,
    as the worker builds it (talking to this server, not to an ephemeral one)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: server.api_url}):
        return asyncio.run(configuration_class.from_template_and_values(template, values))


# -----------------------------------------------------------------------------
# where a secret could end up


def canary() -> str:
    """A secret no one could mistake: wherever it shows up, it leaked."""
    return f"ratio-cnn-canary-{uuid.uuid4().hex}"


def bucket_contents(s3, bucket: str):
    """Every object in the bucket: its key, then its body (one at a time: models are large)."""
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            yield f"the key s3://{bucket}/{obj['Key']}", obj["Key"].encode()
            yield f"s3://{bucket}/{obj['Key']}", s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()


def files_under(root: Path):
    """Every file below `root`, the server's SQLite database and the logs included."""
    for path in sorted(root.rglob("*")):
        try:
            yield str(path), path.read_bytes()
        except (IsADirectoryError, FileNotFoundError):  # a folder, or a journal the server just removed
            continue


API_LISTS = ("/deployments/filter", "/flow_runs/filter", "/task_runs/filter", "/logs/filter", "/artifacts/filter",
             "/variables/filter", "/work_pools/filter", "/block_documents/filter")


def api_records(server: Server):
    """What the Prefect UI and API show anyone who can read them, one record at a time:
    deployments (job variables, parameters), flow and task runs (parameters, job variables,
    states), logs, artifacts (the report and its table), variables, work pools (their
    templates) and blocks (as the UI lists them)."""
    for path in API_LISTS:
        offset = 0
        while page := server.post(path, {"offset": offset, "limit": 200}):
            for record in page:
                where = f"{path}: {record.get('name') or record.get('key') or ''} {record['id']}"
                yield where, json.dumps(record).encode()
            offset += len(page)


def where_found(secret: str, *places) -> list[str]:
    """The places, from (where, content) pairs, whose content holds `secret`."""
    return [where for pairs in places for where, content in pairs if secret.encode() in content]


# -----------------------------------------------------------------------------
# a. the operator's path, end to end, on a process pool


def test_nightly_study_runs_end_to_end_on_a_process_pool(prefect_server, moto_endpoint, small_dataset, tmp_path,
                                                         tmp_path_factory):
    server = prefect_server
    bucket = f"deploy-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                      region_name="us-east-1")
    s3.create_bucket(Bucket=bucket)
    for path in small_dataset.rglob("*"):
        if path.is_file():
            s3.put_object(Bucket=bucket, Key=f"data/small/{path.relative_to(small_dataset).as_posix()}",
                          Body=path.read_bytes())

    pool = "e2e-process"
    server.prefect("work-pool", "create", pool, "--type", "process")
    env = deploy_env(server, pool, pool, RATIO_CNN_DATA=f"s3://{bucket}/data/small",
                     RATIO_CNN_OUT=f"s3://{bucket}/results", AWS_ENDPOINT_URL=moto_endpoint)
    deploy(server, env)

    nightly = server.get("/deployments/name/ratio-study/nightly")
    [schedule] = nightly["schedules"]
    assert schedule["schedule"]["cron"] == "0 2 * * *" and schedule["schedule"]["timezone"] == "UTC"
    assert schedule["active"]
    nightly_study = {"data": f"s3://{bucket}/data/small", "out": f"s3://{bucket}/results",
                     "launch": "deployments", "train_deployment": "train-ratio/gpu",
                     "options": {"device": "cuda", "save_models": "first"}}
    assert nightly["parameters"] == {"study": nightly_study}
    assert nightly["work_pool_name"] == pool
    gpu = server.get("/deployments/name/train-ratio/gpu")
    assert gpu["work_pool_name"] == pool
    assert gpu["global_concurrency_limit"]["limit"] == 2  # RATIO_CNN_GPUS
    assert gpu["pull_steps"] == [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]
    weekly = server.get("/deployments/name/prune-runs/weekly")
    [schedule] = weekly["schedules"]
    assert schedule["schedule"]["cron"] == "0 4 * * 0" and schedule["schedule"]["timezone"] == "UTC"
    assert schedule["active"]
    assert weekly["parameters"] == {"out": f"s3://{bucket}/results"}  # the policy: PRUNE_DEFAULTS
    assert weekly["work_pool_name"] == pool
    # The process worker keeps what its template names and drops the Docker-only variables.
    from prefect.workers.process import ProcessJobConfiguration

    template = server.get(f"/work_pools/{pool}")["base_job_template"]
    config = render(server, ProcessJobConfiguration, template, gpu["job_variables"])
    assert config.env["PREFECT_LOGGING_EXTRA_LOGGERS"] == "ratio_cnn"
    assert config.env["AWS_ENDPOINT_URL"] == moto_endpoint
    assert not hasattr(config, "image") and not hasattr(config, "container_create_kwargs")

    # The deployments hold where the storage is, never who the jobs are.
    for deployment in (nightly, gpu, weekly):
        assert not set(CREDENTIALS) & set(deployment["job_variables"]["env"]), deployment["name"]

    # The credentials are the worker's own, and its flow runs' processes inherit them (moto
    # takes any). Its limit: the study's run holds one slot while both training runs take theirs.
    secret = canary()
    worker = start([PREFECT, "worker", "start", "--pool", pool, "--type", "process", "--limit", "3",
                    "--name", "e2e-worker"],
                   server.env(PREFECT_WORKER_QUERY_SECONDS="2", AWS_ACCESS_KEY_ID="ratio-cnn-e2e",
                              AWS_SECRET_ACCESS_KEY=secret),
                   tmp_path / "worker.log")
    try:
        # A run's `study` replaces the deployment's whole (Prefect merges parameters by name), so it
        # restates data, out and launch; a field left out keeps StudyConfig's default.
        params = {"study": nightly_study | {"ratios": [1, 2], "run_id": "e2e", "options": {
            "epochs": 1, "batch_size": 16, "workers": 4, "device": "cpu", "seeds": 2, "save_models": "first",
            **SMALL_OPTIONS}}}
        try:
            output = server.prefect("deployment", "run", "ratio-study/nightly", "--params", json.dumps(params),
                                    "--watch", "--watch-timeout", "420", timeout=480)
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- worker log ---\n{(tmp_path / 'worker.log').read_text()[-20000:]}") from None
        assert "Completed" in output, output
    finally:
        stop(worker)

    keys = {o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="results/")
            for o in page.get("Contents", [])}
    expected = {"results/latest.json", *(f"results/e2e/{name}" for name in RUN_OUTPUTS),
                *(f"results/e2e/ratio-{r}/{name}" for r in (1, 2) for name in JOB_OUTPUTS)}
    assert expected <= keys, f"missing: {sorted(expected - keys)}"
    assert not any(k.endswith("seed-1/model.pt") for k in keys)
    latest = json.loads(s3.get_object(Bucket=bucket, Key="results/latest.json")["Body"].read())
    assert latest["run_id"] == "e2e" and latest["report"] == f"s3://{bucket}/results/e2e/report.md"
    run = json.loads(s3.get_object(Bucket=bucket, Key="results/e2e/run.json")["Body"].read())
    assert run["launch"] == "deployments" and run["ratios"] == [1, 2]
    for r in (1, 2):
        metrics = json.loads(s3.get_object(Bucket=bucket, Key=f"results/e2e/ratio-{r}/metrics.json")["Body"].read())
        assert metrics["config"]["epochs"] == 1 and metrics["config"]["train_malignant"] == 12
        assert metrics["data"]["counts"]["train"] == {"malignant": 12, "benign": 12 * r}
    report = s3.get_object(Bucket=bucket, Key="results/e2e/report.md")["Body"].read().decode()
    assert "1:1" in report and "1:2" in report

    # Each ratio ran as its own train-ratio/gpu flow run, child of the study's run.
    runs = server.post("/flow_runs/filter", {"deployments": {"id": {"any_": [gpu["id"]]}}})
    assert sorted(r["parameters"]["job"]["ratio"] for r in runs) == [1, 2]
    assert all(r["state_type"] == "COMPLETED" and r["parent_task_run_id"] for r in runs)

    # The secret went nowhere: not into the bucket, any file of this session (the worker's
    # and the server's logs, the server's database, the Prefect homes, the caches), the
    # CLI's output, or anything the Prefect API shows. The scan does reach the deployments'
    # job variables: it finds the endpoint they hold.
    assert where_found(moto_endpoint, api_records(server))
    leaks = where_found(secret, bucket_contents(s3, bucket), files_under(tmp_path_factory.getbasetemp()),
                        [("the output of `prefect deployment run`", output.encode())], api_records(server))
    assert not leaks, f"the S3 secret leaked into: {leaks}"


# -----------------------------------------------------------------------------
# b. the same file onto a Docker pool, as docker-compose.yml deploys it; not run


class FakeDockerClient:
    """What the Docker worker asks the client before it creates a container."""

    def version(self) -> dict:
        return {"Version": "27.3.1", "ApiVersion": "1.47"}


def test_docker_job_template_is_prefect_dockers_with_the_secret_blocks_as_env():
    """deploy/docker-job-template.json is prefect-docker's own template (the one that passes
    `container_create_kwargs`, the GPU, on; the version the compose worker installs), with
    one change: `env` defaults to references to the two Secret blocks."""
    from importlib.metadata import version

    from prefect_docker.worker import DockerWorker  # the `test` extras

    expected = DockerWorker.get_default_base_job_template()
    expected["variables"]["properties"]["env"]["default"] = {
        name: f"{{{{ prefect.blocks.secret.{block} }}}}" for name, block in SECRET_BLOCKS.items()}
    assert json.loads(DOCKER_TEMPLATE.read_text()) == expected
    worker = yaml.safe_load(COMPOSE.read_text())["services"]["worker"]
    assert worker["environment"]["EXTRA_PIP_PACKAGES"] == f"prefect-docker=={version('prefect-docker')}"


def test_compose_deploy_service_deploys_to_a_docker_pool_with_a_gpu_request(prefect_server):
    """What `docker compose up` and `docker compose run --rm deploy` do, with compose's
    defaults and a canary for MinIO's password, run from the repository instead of the
    image's /app and against the test server instead of prefect-server; then the container
    each deployment's runs would get."""
    from docker.models.containers import _create_container_args
    from prefect_docker.worker import DockerWorker, DockerWorkerJobConfiguration  # the `test` extras

    server = prefect_server
    compose = yaml.safe_load(COMPOSE.read_text())
    service = compose["services"]["deploy"]
    env = {name: with_compose_defaults(str(value)) for name, value in service["environment"].items()}
    pool = env["RATIO_CNN_GPU_POOL"]
    assert env["RATIO_CNN_STUDY_POOL"] == pool == worker_pool(compose)
    assert not set(CREDENTIALS) & set(env), "the deploy service needs no credentials"
    # What `up` does first: secrets-init saves MinIO's credentials as Secret blocks, and the
    # worker creates the pool when it is missing (its command up to `worker start`, with the
    # template's path on this machine); on a later start the pool is there and stays as it is.
    secret = canary()
    run_service(server, compose["services"]["secrets-init"], MINIO_ROOT_PASSWORD=secret)
    worker = compose["services"]["worker"]
    host_path, container_path = worker_template_mount(compose)
    create_pool = worker["command"][-1].split("&& exec prefect worker start")[0].replace(container_path, str(host_path))
    for _ in range(2):
        run_service(server, worker | {"command": ["sh", "-c", create_pool]})
    template = server.get(f"/work_pools/{pool}")["base_job_template"]
    assert template == json.loads(DOCKER_TEMPLATE.read_text())
    # Prefect's bundled copy of the Docker template lacks this variable (the GPU request would
    # be dropped without a word); prefect-docker's own template has it.
    assert "container_create_kwargs" in template["variables"]["properties"]

    run_service(server, service)

    def container_request(job_variables: dict) -> dict:
        """What the worker sends the Docker daemon: it resolves the template's Secret block
        references as it builds each job's configuration."""
        config = render(server, DockerWorkerJobConfiguration, template, job_variables)
        settings = DockerWorker(work_pool_name=pool)._build_container_settings(FakeDockerClient(), config)
        return _create_container_args({**settings, "version": "1.47"})  # what docker-py sends

    minio_user = with_compose_defaults(compose["services"]["minio"]["environment"]["MINIO_ROOT_USER"])
    job_env = {"PREFECT_LOGGING_EXTRA_LOGGERS": "ratio_cnn", "AWS_ENDPOINT_URL": "http://minio:9000",
               "AWS_ACCESS_KEY_ID": minio_user, "AWS_SECRET_ACCESS_KEY": secret, "AWS_DEFAULT_REGION": "us-east-1"}
    gpu = server.get("/deployments/name/train-ratio/gpu")
    assert gpu["work_pool_name"] == pool
    assert gpu["global_concurrency_limit"]["limit"] == int(env["RATIO_CNN_GPUS"]) == 1
    assert gpu["pull_steps"] == [{"prefect.deployments.steps.set_working_directory": {"directory": "/app"}}]
    request = container_request(gpu["job_variables"])
    assert request["image"] == "ratio-cnn:latest"
    [device] = request["host_config"]["DeviceRequests"]
    assert device["Driver"] == "nvidia" and device["Count"] == 1 and device["Capabilities"] == [["gpu"]]
    assert request["host_config"]["NetworkMode"] == compose["networks"]["default"]["name"] == "ratio-cnn"
    assert request["environment"] == job_env

    nightly = server.get("/deployments/name/ratio-study/nightly")
    assert nightly["work_pool_name"] == pool
    assert nightly["parameters"]["study"]["data"] == "s3://ratio-cnn/data/synthetic"
    assert nightly["parameters"]["study"]["out"] == "s3://ratio-cnn/results"
    request = container_request(nightly["job_variables"])
    assert request["image"] == "ratio-cnn:latest" and request["host_config"]["NetworkMode"] == "ratio-cnn"
    assert "DeviceRequests" not in request["host_config"]  # the study itself needs no GPU
    assert request["environment"] == job_env  # it writes run.json and the report

    weekly = server.get("/deployments/name/prune-runs/weekly")
    assert weekly["work_pool_name"] == pool and weekly["parameters"] == {"out": "s3://ratio-cnn/results"}
    assert weekly["schedules"][0]["schedule"]["cron"] == "0 4 * * 0"
    request = container_request(weekly["job_variables"])
    assert request["image"] == "ratio-cnn:latest" and request["host_config"]["NetworkMode"] == "ratio-cnn"
    assert "DeviceRequests" not in request["host_config"]
    assert request["environment"] == job_env  # it lists and deletes in the bucket

    # The password reaches the containers and nothing the UI shows: neither deployment, nor
    # the pool's template (references), nor the Secret blocks as the UI lists them.
    leaks = where_found(secret, api_records(server))
    assert not leaks, f"MinIO's password shows in: {leaks}"


# -----------------------------------------------------------------------------
# c. the Kubernetes templates


def kubernetes_pod(server: Server, template: dict, job_variables: dict) -> tuple[dict, dict]:
    """The pod spec a Kubernetes worker renders from a pool's template and a deployment's job
    variables, and the `env` it puts before the container's own entries (prefect-kubernetes
    prepends it as name/value pairs when the template's container `env` is a list)."""
    from prefect.workers.base import BaseJobConfiguration

    class KubernetesJob(BaseJobConfiguration):  # the Kubernetes worker's fields that matter here
        job_manifest: dict
        namespace: str

    config = render(server, KubernetesJob, template, job_variables)
    return config.job_manifest["spec"]["template"]["spec"], config.env


def test_kubernetes_gpu_template_is_accepted_and_renders_a_gpu_pod(prefect_server):
    server = prefect_server
    pool = "gpu-kubernetes"
    server.prefect("work-pool", "create", pool, "--type", "kubernetes", "--base-job-template", str(K8S_TEMPLATE))
    shown = server.prefect("work-pool", "inspect", pool)
    for name in ("gpu_limit", "node_selector", "tolerations", "runtime_class_name", "nvidia.com/gpu"):
        assert name in shown, name

    stored = server.get(f"/work_pools/{pool}")
    assert stored["type"] == "kubernetes"
    template = stored["base_job_template"]
    assert template == json.loads(K8S_TEMPLATE.read_text())
    variables = template["variables"]["properties"]
    assert variables["gpu_limit"]["default"] == 1
    assert variables["node_selector"]["default"] == {"nvidia.com/gpu.present": "true"}
    assert variables["tolerations"]["default"] == [{"key": "nvidia.com/gpu", "operator": "Exists",
                                                    "effect": "NoSchedule"}]

    # The training deployment goes onto it unchanged; its Docker-only variables are dropped.
    env = deploy_env(server, pool, pool)
    server.prefect("deploy", "--prefect-file", str(PREFECT_YAML), "--name", "gpu", env=env)
    job_variables = server.get("/deployments/name/train-ratio/gpu")["job_variables"]

    spec, job_env = kubernetes_pod(server, template, job_variables)
    [container] = spec["containers"]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 1}
    assert container["image"] == "ratio-cnn:test"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert "runtimeClassName" not in spec
    # The credentials: references to the Kubernetes Secret, resolved by the kubelet; no value
    # in the pod spec, none in what the worker adds.
    assert container["env"] == S3_SECRET_ENV
    assert job_env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9" and not set(CREDENTIALS) & set(job_env)

    spec, _ = kubernetes_pod(server, template, job_variables | {
        "gpu_limit": 2, "runtime_class_name": "nvidia", "memory_limit": "16Gi",
        "node_selector": {"cloud.google.com/gke-accelerator": "nvidia-l4"}})
    assert spec["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": 2, "memory": "16Gi"}
    assert spec["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert spec["runtimeClassName"] == "nvidia"


def test_kubernetes_study_template_is_prefects_default_with_the_s3_secret(prefect_server):
    """deploy/k8s-job-template.json, for the study's pool (no GPU): Prefect's default
    Kubernetes template (the copy bundled with this Prefect) with one change, the container's
    `env`, which takes the credentials from the Kubernetes Secret as the GPU template does."""
    import prefect

    bundled = Path(prefect.__file__).parent / "server/api/collections_data/views/aggregate-worker-metadata.json"
    expected = json.loads(bundled.read_text())["prefect-kubernetes"]["kubernetes"]["default_base_job_configuration"]
    expected["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]["env"] = S3_SECRET_ENV
    assert json.loads(K8S_STUDY_TEMPLATE.read_text()) == expected

    server = prefect_server
    pool = "study-kubernetes"
    server.prefect("work-pool", "create", pool, "--type", "kubernetes", "--base-job-template", str(K8S_STUDY_TEMPLATE))
    template = server.get(f"/work_pools/{pool}")["base_job_template"]
    assert template == expected
    server.prefect("deploy", "--prefect-file", str(PREFECT_YAML), "--name", "nightly",
                   env=deploy_env(server, pool, pool))
    nightly = server.get("/deployments/name/ratio-study/nightly")
    spec, job_env = kubernetes_pod(server, template, nightly["job_variables"])
    [container] = spec["containers"]
    assert container["env"] == S3_SECRET_ENV
    assert not set(CREDENTIALS) & set(job_env)
    assert "nvidia.com/gpu" not in json.dumps(spec)


# -----------------------------------------------------------------------------
# d. docker-compose.yml: not runnable here (no Docker engine), so checked for coherence


def test_compose_file_wires_what_prefect_yaml_needs():
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert {"postgres", "prefect-server", "minio", "minio-init", "secrets-init", "worker", "deploy"} <= set(services)
    server = services["prefect-server"]
    assert server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"
    worker = services["worker"]
    assert "/var/run/docker.sock:/var/run/docker.sock" in worker["volumes"]
    assert "prefect-docker" in worker["environment"]["EXTRA_PIP_PACKAGES"]
    assert "--type docker" in " ".join(worker["command"])
    # The worker creates its pool, when missing, from docker-job-template.json mounted into it,
    # once secrets-init has saved the blocks that template refers to.
    host_path, container_path = worker_template_mount(compose)
    assert host_path == DOCKER_TEMPLATE
    command = " ".join(worker["command"])
    assert command.index("work-pool create") < command.index(f"--base-job-template {container_path}") \
        < command.index("worker start")
    assert worker["depends_on"]["secrets-init"]["condition"] == "service_completed_successfully"
    # The credentials reach Prefect only as Secret blocks: no service but the operator's own
    # CLI has them as variables, the deploy service least of all.
    holders = {name for name, service in services.items() if set(CREDENTIALS) & set(service.get("environment", {}))}
    assert holders == {"cli"}
    assert "mc mb" in " ".join(services["minio-init"]["entrypoint"] + services["minio-init"].get("command", []))
    # The job containers join the network the server and MinIO are on, by its fixed name.
    deployer = services["deploy"]["environment"]
    assert compose["networks"]["default"]["name"] == deployer["RATIO_CNN_DOCKER_NETWORK"]
    # One worker serves the pool that both deployments go to.
    assert with_compose_defaults(deployer["RATIO_CNN_STUDY_POOL"]) == worker_pool(compose)
    assert with_compose_defaults(deployer["RATIO_CNN_GPU_POOL"]) == worker_pool(compose)
    # `prefect deploy` in the deploy service gets every variable prefect.yaml reads.
    needed = placeholders(PREFECT_YAML) | {"RATIO_CNN_GPUS"}
    assert needed <= set(deployer), f"not set by the deploy service: {sorted(needed - set(deployer))}"
    assert deployer["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert deployer["PREFECT_API_URL"] == "http://prefect-server:4200/api"


def test_prefect_yaml_holds_no_credentials():
    """What prefect.yaml says is stored in the deployments, `{{ prefect.blocks.… }}` resolved
    by `prefect deploy`: so it names no credential, in any form."""
    text = PREFECT_YAML.read_text()
    assert not [name for name in CREDENTIALS if name in text]
    assert "prefect.blocks." not in json.dumps(yaml.safe_load(text))


def compose_v2() -> list[str] | None:
    """A Docker Compose v2 command, if this machine has one (v1 predates the top-level `name`)."""
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]):
            result = subprocess.run([*command, "version", "--short"], capture_output=True, text=True, timeout=30)
            major = result.stdout.strip().lstrip("v").split(".")[0]
            if result.returncode == 0 and major.isdigit() and int(major) >= 2:
                return command
    return None


def test_compose_file_is_valid_for_docker_compose():
    command = compose_v2()
    if command is None:
        pytest.skip("no Docker Compose v2 on this machine")
    result = subprocess.run([*command, "-f", str(COMPOSE), "--profile", "tools", "config", "--quiet"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
