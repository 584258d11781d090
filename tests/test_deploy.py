"""The deployment path, as an operator walks it, against a real `prefect server start`.

- deploy/prefect.yaml onto a local `process` pool, run `ratio-study/nightly` with small
  parameters through a real worker against moto S3, and find every output in the bucket;
- the same file onto a Docker pool, by the command and environment of docker-compose.yml's
  `deploy` service: deployed, not run; the GPU request is followed down to the request body
  the Docker worker would send to the Docker daemon;
- deploy/k8s-gpu-job-template.json accepted as a Kubernetes pool's base job template, and
  the pod it renders asks for a GPU;
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
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import boto3
import pytest
import yaml

from conftest import SMALL_SPLITS, free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PREFECT_YAML = REPO / "deploy" / "prefect.yaml"
K8S_TEMPLATE = REPO / "deploy" / "k8s-gpu-job-template.json"
COMPOSE = REPO / "deploy" / "docker-compose.yml"
PREFECT = str(Path(sys.executable).parent / "prefect")
# The split sizes of the small synthetic dataset, as TrainingOptions fields.
SMALL_OPTIONS = {flag.removeprefix("--").replace("-", "_"): int(value)
                 for flag, value in zip(SMALL_SPLITS[::2], SMALL_SPLITS[1::2])}
RUN_OUTPUTS = ("report.md", "metrics_by_ratio.png", "roc.png", "pr.png", "run.json")
JOB_OUTPUTS = ("metrics.json", "claim.json", "none/simple/confusion_matrix.png", "none/simple/curves.png",
               *(f"none/simple/seed-{s}/{name}" for s in (0, 1)
                 for name in ("metrics.json", "history.csv", "predictions.csv", "model.pt")))


# -----------------------------------------------------------------------------
# processes


def base_env() -> dict:
    """This environment without any Prefect or AWS settings of the developer's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_"))}
    return env | {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (a flow run's process may start a session of its own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM the process, its group and everything it started; SIGKILL what is left."""
    if proc.poll() is not None:
        return
    pids = [proc.pid, *descendants(proc.pid)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        for pid in pids[1:]:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        try:
            proc.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            continue


def start(args: list[str], env: dict, log: Path, cwd: Path = REPO) -> subprocess.Popen:
    with log.open("w") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(args, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


class Server:
    def __init__(self, api_url: str, home: Path, log: Path) -> None:
        self.api_url, self.home, self.log = api_url, home, log

    def env(self, **extra: str) -> dict:
        """The environment of a Prefect client of this server (its own PREFECT_HOME)."""
        return base_env() | {"PREFECT_API_URL": self.api_url, "PREFECT_HOME": str(self.home / "client")} | extra

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(f"{self.api_url}{path}", timeout=30) as response:
            return json.loads(response.read())

    def prefect(self, *args: str, env: dict | None = None, timeout: float = 180) -> str:
        """Run the `prefect` CLI as an operator would; fail with its output if it fails."""
        result = subprocess.run([PREFECT, "--no-prompt", *args], env=env or self.env(), cwd=REPO,
                                capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"prefect {' '.join(args)} exited {result.returncode}:\n{output}"
        return output


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect")
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    log = home / "server.log"
    env = base_env() | {"PREFECT_HOME": str(home / "server"), "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
                        "PREFECT_UI_ENABLED": "false"}
    proc = start([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-scheduler", "--no-ui"],
                 env, log)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"prefect server exited with {proc.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"prefect server not healthy after 120 s:\n{log.read_text()}")
            time.sleep(0.5)
        yield Server(api_url, home, log)
    finally:
        stop(proc)


def deploy_env(server: Server, study_pool: str, gpu_pool: str, **extra: str) -> dict:
    """What an operator exports before `prefect deploy` (see docs/deploy.md)."""
    return server.env(
        RATIO_CNN_STUDY_POOL=study_pool, RATIO_CNN_GPU_POOL=gpu_pool, RATIO_CNN_GPUS="2",
        RATIO_CNN_IMAGE="ratio-cnn:test", RATIO_CNN_DOCKER_NETWORK="ratio-cnn-test", RATIO_CNN_WORKDIR=str(REPO),
        RATIO_CNN_DATA="s3://unused/data", RATIO_CNN_OUT="s3://unused/results",
        AWS_ENDPOINT_URL="http://127.0.0.1:9", AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test",
        AWS_DEFAULT_REGION="us-east-1",
    ) | extra


def deploy(server: Server, env: dict) -> None:
    """The two commands of docs/deploy.md: every deployment, then the GPU count as the limit."""
    server.prefect("deploy", "--all", "--prefect-file", str(PREFECT_YAML), env=env)
    server.prefect("deploy", "--prefect-file", str(PREFECT_YAML), "--name", "gpu",
                   "--concurrency-limit", env["RATIO_CNN_GPUS"], env=env)


def placeholders(path: Path) -> set[str]:
    """The environment variables that `{{ $VAR }}` placeholders of a YAML file read (not its comments)."""
    return set(re.findall(r"\{\{\s*\$(\w+)\s*\}\}", json.dumps(yaml.safe_load(path.read_text()))))


def with_compose_defaults(value: str) -> str:
    """Docker Compose's interpolation with none of its variables set: `${VAR:-default}` is
    the default, `$$` a `$` left for the container's shell."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value).replace("$$", "$")


def worker_pool(compose: dict) -> str:
    command = compose["services"]["worker"]["command"]
    return with_compose_defaults(command[command.index("--pool") + 1])


def render(server: Server, configuration_class, template: dict, values: dict):
    """A worker's job configuration from a pool's template and a deployment's job variables,
    as the worker builds it (talking to this server, not to an ephemeral one)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: server.api_url}):
        return asyncio.run(configuration_class.from_template_and_values(template, values))


# -----------------------------------------------------------------------------
# a. the operator's path, end to end, on a process pool


def test_nightly_study_runs_end_to_end_on_a_process_pool(prefect_server, moto_endpoint, small_dataset, tmp_path):
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
    assert nightly["parameters"] == {"data": f"s3://{bucket}/data/small", "out": f"s3://{bucket}/results",
                                     "launch": "deployments", "train_deployment": "train-ratio/gpu",
                                     "options": {"device": "cuda"}}
    assert nightly["work_pool_name"] == pool
    gpu = server.get("/deployments/name/train-ratio/gpu")
    assert gpu["work_pool_name"] == pool
    assert gpu["global_concurrency_limit"]["limit"] == 2  # RATIO_CNN_GPUS
    assert gpu["pull_steps"] == [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]
    # The process worker keeps what its template names and drops the Docker-only variables.
    from prefect.workers.process import ProcessJobConfiguration

    template = server.get(f"/work_pools/{pool}")["base_job_template"]
    config = render(server, ProcessJobConfiguration, template, gpu["job_variables"])
    assert config.env["PREFECT_LOGGING_EXTRA_LOGGERS"] == "ratio_cnn"
    assert config.env["AWS_ENDPOINT_URL"] == moto_endpoint
    assert not hasattr(config, "image") and not hasattr(config, "container_create_kwargs")

    # The worker has no AWS settings of its own: the jobs get them from the deployments.
    # Its limit: the study's run holds one slot while both training runs take theirs.
    worker = start([PREFECT, "worker", "start", "--pool", pool, "--type", "process", "--limit", "3",
                    "--name", "e2e-worker"], server.env(PREFECT_WORKER_QUERY_SECONDS="2"), tmp_path / "worker.log")
    try:
        params = {"ratios": [1, 2], "run_id": "e2e",
                  "options": {"epochs": 1, "batch_size": 16, "workers": 4, "device": "cpu", "seeds": 2,
                              **SMALL_OPTIONS}}
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
    runs = json.loads(urllib.request.urlopen(urllib.request.Request(
        f"{server.api_url}/flow_runs/filter", data=json.dumps({"deployments": {"id": {"any_": [gpu["id"]]}}}).encode(),
        headers={"content-type": "application/json"}), timeout=30).read())
    assert sorted(r["parameters"]["ratio"] for r in runs) == [1, 2]
    assert all(r["state_type"] == "COMPLETED" and r["parent_task_run_id"] for r in runs)


# -----------------------------------------------------------------------------
# b. the same file onto a Docker pool, as docker-compose.yml deploys it; not run


class FakeDockerClient:
    """What the Docker worker asks the client before it creates a container."""

    def version(self) -> dict:
        return {"Version": "27.3.1", "ApiVersion": "1.47"}


def test_compose_deploy_service_deploys_to_a_docker_pool_with_a_gpu_request(prefect_server):
    """What `docker compose run --rm deploy` does, with compose's defaults, run from the
    repository instead of the image's /app and against the test server instead of
    prefect-server; then the container each deployment's runs would get."""
    from docker.models.containers import _create_container_args
    from prefect_docker.worker import DockerWorker, DockerWorkerJobConfiguration  # the `test` extras

    server = prefect_server
    compose = yaml.safe_load(COMPOSE.read_text())
    service = compose["services"]["deploy"]
    env = {name: with_compose_defaults(str(value)) for name, value in service["environment"].items()}
    pool = env["RATIO_CNN_GPU_POOL"]
    assert env["RATIO_CNN_STUDY_POOL"] == pool == worker_pool(compose)
    # What the compose worker does on its first start: the pool, with prefect-docker's template.
    server.prefect("work-pool", "create", pool, "--type", "docker", "--overwrite")
    template = server.get(f"/work_pools/{pool}")["base_job_template"]
    assert template == DockerWorker.get_default_base_job_template()
    # Prefect's bundled copy of the Docker template lacks this variable (the GPU request would
    # be dropped without a word); prefect-docker's own template has it.
    assert "container_create_kwargs" in template["variables"]["properties"]

    command = [with_compose_defaults(part) for part in service["command"]]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
                            env=server.env() | env | {"PREFECT_API_URL": server.api_url,
                                                      "PATH": f"{Path(PREFECT).parent}{os.pathsep}{os.environ['PATH']}"})
    assert result.returncode == 0, result.stdout + result.stderr

    def container_request(job_variables: dict) -> dict:
        config = render(server, DockerWorkerJobConfiguration, template, job_variables)
        settings = DockerWorker(work_pool_name=pool)._build_container_settings(FakeDockerClient(), config)
        return _create_container_args({**settings, "version": "1.47"})  # what docker-py sends

    gpu = server.get("/deployments/name/train-ratio/gpu")
    assert gpu["work_pool_name"] == pool
    assert gpu["global_concurrency_limit"]["limit"] == int(env["RATIO_CNN_GPUS"]) == 1
    assert gpu["pull_steps"] == [{"prefect.deployments.steps.set_working_directory": {"directory": "/app"}}]
    request = container_request(gpu["job_variables"])
    assert request["image"] == "ratio-cnn:latest"
    [device] = request["host_config"]["DeviceRequests"]
    assert device["Driver"] == "nvidia" and device["Count"] == 1 and device["Capabilities"] == [["gpu"]]
    assert request["host_config"]["NetworkMode"] == compose["networks"]["default"]["name"] == "ratio-cnn"
    minio = {k: with_compose_defaults(v) for k, v in compose["services"]["minio"]["environment"].items()}
    assert request["environment"] == {
        "PREFECT_LOGGING_EXTRA_LOGGERS": "ratio_cnn", "AWS_ENDPOINT_URL": "http://minio:9000",
        "AWS_ACCESS_KEY_ID": minio["MINIO_ROOT_USER"], "AWS_SECRET_ACCESS_KEY": minio["MINIO_ROOT_PASSWORD"],
        "AWS_DEFAULT_REGION": "us-east-1"}

    nightly = server.get("/deployments/name/ratio-study/nightly")
    assert nightly["work_pool_name"] == pool
    assert nightly["parameters"]["data"] == "s3://ratio-cnn/data/synthetic"
    assert nightly["parameters"]["out"] == "s3://ratio-cnn/results"
    request = container_request(nightly["job_variables"])
    assert request["image"] == "ratio-cnn:latest" and request["host_config"]["NetworkMode"] == "ratio-cnn"
    assert "DeviceRequests" not in request["host_config"]  # the study itself needs no GPU


# -----------------------------------------------------------------------------
# c. the Kubernetes GPU template


def test_kubernetes_gpu_template_is_accepted_and_renders_a_gpu_pod(prefect_server):
    from prefect.workers.base import BaseJobConfiguration

    class KubernetesJob(BaseJobConfiguration):  # the Kubernetes worker's fields that matter here
        job_manifest: dict
        namespace: str

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

    def pod(values: dict) -> dict:
        return render(server, KubernetesJob, template, values).job_manifest["spec"]["template"]["spec"]

    spec = pod(job_variables)
    [container] = spec["containers"]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 1}
    assert container["image"] == "ratio-cnn:test"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert "runtimeClassName" not in spec

    spec = pod(job_variables | {"gpu_limit": 2, "runtime_class_name": "nvidia", "memory_limit": "16Gi",
                                "node_selector": {"cloud.google.com/gke-accelerator": "nvidia-l4"}})
    assert spec["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": 2, "memory": "16Gi"}
    assert spec["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert spec["runtimeClassName"] == "nvidia"


# -----------------------------------------------------------------------------
# d. docker-compose.yml: not runnable here (no Docker engine), so checked for coherence


def test_compose_file_wires_what_prefect_yaml_needs():
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert {"postgres", "prefect-server", "minio", "minio-init", "worker", "deploy"} <= set(services)
    server = services["prefect-server"]
    assert server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"
    worker = services["worker"]
    assert "/var/run/docker.sock:/var/run/docker.sock" in worker["volumes"]
    assert "prefect-docker" in worker["environment"]["EXTRA_PIP_PACKAGES"]
    assert "--type docker" in " ".join(worker["command"])
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
