"""The deployment recipes in deploy/ (no Slurm or Kubernetes here): the Kubernetes YAML
fields that matter, the worker command lines parsed by the worker's own parser, and the
sbatch script checked by bash (and shellcheck when installed) and run as one array task
against the test server."""
from __future__ import annotations

import argparse
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import yaml

from hyperspace_explorer.cli.worker import add_worker_arguments
from hyperspace_explorer.status import COMPLETED

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
SBATCH = DEPLOY / "slurm" / "hse-workers.sbatch"
STUDY = ROOT / "tests" / "study"


def _load(name: str) -> dict:
    return yaml.safe_load((DEPLOY / "kubernetes" / name).read_text())


def _worker_args(command: list[str]) -> argparse.Namespace:
    """The container's command parsed as `hyperspace_worker` parses its arguments."""
    assert command[0] == "hyperspace_worker"
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_worker_arguments(parser)
    return parser.parse_args(command[1:])


def _image_name() -> str:
    """The image docker-compose builds from the repository's Dockerfile."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return compose["services"]["worker"]["image"]


def _dockerfile_workdir() -> str:
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    return [line.split()[1] for line in lines if line.startswith("WORKDIR")][-1]


def _pod(doc: dict) -> tuple[dict, dict]:
    spec = doc["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    return spec, container


def _check_worker_pod(doc: dict) -> tuple[dict, argparse.Namespace]:
    spec, container = _pod(doc)
    assert container["image"].split(":")[0].endswith(_image_name())
    assert container["workingDir"] == _dockerfile_workdir()  # holds scenarios.py
    args = _worker_args(container["command"])
    assert (ROOT / args.tasks_dir.removeprefix("/app/")).is_dir()  # /app is the checkout
    assert args.mongo_uri is None and not any("mongodb://" in c for c in container["command"])
    env = {e["name"]: e for e in container["env"]}
    secret = _load("secret.example.yaml")
    ref = env["HSE_MONGO_URI"]["valueFrom"]["secretKeyRef"]
    assert secret["kind"] == "Secret" and ref["name"] == secret["metadata"]["name"]
    assert secret["stringData"][ref["key"]].startswith("mongodb://")
    # Longer than a typical run, and than the lease: SIGTERM lets the run finish.
    assert spec["terminationGracePeriodSeconds"] >= 600
    assert spec["terminationGracePeriodSeconds"] > args.lease
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])
    assert env["OMP_NUM_THREADS"]["valueFrom"]["resourceFieldRef"]["resource"] == "limits.cpu"
    return spec, args


def test_kubernetes_deployment_runs_long_lived_workers():
    doc = _load("deployment.yaml")
    assert doc["kind"] == "Deployment" and doc["spec"]["replicas"] >= 1
    labels = doc["spec"]["template"]["metadata"]["labels"]
    assert doc["spec"]["selector"]["matchLabels"].items() <= labels.items()
    _, args = _check_worker_pod(doc)
    assert args.idle_exit is None and args.max_runs is None  # poll forever


def test_kubernetes_job_drains_the_queue_with_idle_exit():
    doc = _load("job.yaml")
    assert doc["kind"] == "Job"
    assert doc["spec"]["parallelism"] >= 2
    assert "completions" not in doc["spec"]  # work queue: done when all workers exited
    spec, args = _check_worker_pod(doc)
    assert args.idle_exit is not None and args.idle_exit > 0
    assert spec["restartPolicy"] in ("OnFailure", "Never")


def test_sbatch_script_is_valid_bash_and_passes_shellcheck_when_installed():
    subprocess.run(["bash", "-n", str(SBATCH)], check=True, capture_output=True)
    shellcheck = shutil.which("shellcheck")
    if shellcheck:  # apt-get install shellcheck
        out = subprocess.run([shellcheck, str(SBATCH)], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout


def test_sbatch_script_is_a_job_array_with_idle_exit_and_the_uri_in_the_environment():
    text = SBATCH.read_text()
    directives = [line for line in text.splitlines() if line.startswith("#SBATCH")]
    assert any(d.startswith("#SBATCH --array=") for d in directives)
    assert any("--output=" in d and "%A_%a" in d for d in directives)  # a log per task
    assert any(d.startswith("#SBATCH --signal=B:TERM@") for d in directives)
    assert "--idle-exit" in text and "--mongo-uri" not in text
    assert "${HSE_MONGO_URI:?" in text


def _wrapper(tmp_path: Path) -> Path:
    """Stands in for the installed `hyperspace_worker`: records what it was given."""
    wrapper = tmp_path / "hyperspace_worker"
    wrapper.write_text(
        "#!/bin/bash\n"
        f'echo "args: $* threads: $OMP_NUM_THREADS cwd: $PWD" >> "{tmp_path}/calls"\n'
        f'exec "{sys.executable}" -m hyperspace_explorer.worker "$@" --interval 0.1\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return wrapper


def _sbatch_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HSE_MONGO", "SLURM_", "OMP_", "OPENBLAS_", "MKL_"))}
    env.update(HSE_STUDY_DIR=str(STUDY), HSE_TASKS_DIR=str(STUDY / "tasks"),
               HSE_IDLE_EXIT="1", HSE_WORKER=str(_wrapper(tmp_path)),
               SLURM_ARRAY_JOB_ID="77", SLURM_ARRAY_TASK_ID="3", SLURM_CPUS_PER_TASK="2",
               PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]), **extra)
    return env


def test_sbatch_script_runs_a_worker_until_the_queue_is_empty(q, mongo_uri, db_name,
                                                              tmp_path):
    """One array task, as Slurm would start it: the worker drains the queue, exits
    through --idle-exit, and never sees the URI on its command line."""
    ids = q.submit("noop", {}, seeds=3)
    uri_file = tmp_path / "uri"
    uri_file.write_text(mongo_uri)
    out = subprocess.run(["bash", str(SBATCH)], capture_output=True, text=True, timeout=180,
                         env=_sbatch_env(tmp_path, HSE_MONGO_URI_FILE=str(uri_file),
                                         HSE_DB=db_name))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "hse worker 77_3" in out.stdout
    assert [q.get(i)["status"] for i in ids] == [COMPLETED] * 3
    (call,) = (tmp_path / "calls").read_text().splitlines()
    assert "--idle-exit 1" in call and mongo_uri not in call
    assert "threads: 2" in call and f"cwd: {STUDY}" in call


def test_sbatch_script_refuses_to_start_without_a_uri(tmp_path, db_name):
    out = subprocess.run(["bash", str(SBATCH)], capture_output=True, text=True, timeout=60,
                         env=_sbatch_env(tmp_path, HSE_DB=db_name))
    assert out.returncode != 0
    assert "HSE_MONGO_URI" in out.stderr
    assert not (tmp_path / "calls").exists()
