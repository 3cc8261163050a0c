"""``python -m <module> <args>`` for the end-to-end tests, each run a process of its own forked from one that imported
MONAI once.

A fresh interpreter spends about 9 s of a 2-core CPU importing MONAI (which pulls in scipy, MLflow, matplotlib and
more) before a bundle runs its first step, and the tests start dozens of bundle runs. Here every run is still a
separate process, started in the requested folder with the test's environment and the module run as
``__main__`` (:func:`runpy.run_module`, which is what ``python -m`` does), but it is forked from
:mod:`multiprocessing`'s fork server, which imported :data:`PRELOAD` once and never ran a step itself.
"""

from __future__ import annotations

import multiprocessing
import os
import runpy
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PRELOAD = ["monai.bundle.scripts", "ignite.engine", "mlflow", "common"]
TIMEOUT_S = 900

_context = multiprocessing.get_context("forkserver")
_context.set_forkserver_preload(PRELOAD)


def _run_as_main(module: str, args: list[str], cwd: str, env: dict, stdout: str, stderr: str) -> None:
    """The child: ``python -m module *args`` in ``cwd`` with ``env``, its output going to the files named."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, stdout), (2, stderr)):
        file = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(file, fd)
        os.close(file)
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except Exception:  # as the interpreter ends on an uncaught error: sys.excepthook, then status 1
        sys.excepthook(*sys.exc_info())
        sys.exit(1)


def run_module(module: str, *args: str, cwd: Path = REPO_ROOT,
               timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run ``python -m module *args`` in ``cwd`` with the current environment less ``MLFLOW_TRACKING_URI`` (a run's
    MLflow store is the one its configs name, in its ``output_dir``, never a server the developer's shell points
    at) and wait for it; its return code and output as :func:`subprocess.run` with ``capture_output=True,
    text=True`` gives them. A run still going after ``timeout`` seconds is killed and reported with return code -9."""
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    with tempfile.TemporaryDirectory() as outputs:
        stdout, stderr = Path(outputs) / "stdout", Path(outputs) / "stderr"
        process = _context.Process(target=_run_as_main, args=(module, list(args), str(cwd), env, str(stdout),
                                                                str(stderr)))
        process.start()
        process.join(timeout)
        if process.is_alive():
            process.kill()
            process.join()
        output = [path.read_text(errors="replace") if path.is_file() else "" for path in (stdout, stderr)]
        return subprocess.CompletedProcess([module, *args], process.exitcode, *output)


def monai_bundle(command: str, *args: str, cwd: Path = REPO_ROOT, **overrides) -> subprocess.CompletedProcess:
    """``python -m monai.bundle command *args --key value ...`` (each override as ``str(value)``, which the command
    line parses back); fails the test with the end of its output unless it succeeds."""
    line = list(args)
    for key, value in overrides.items():
        line += [f"--{key}", str(value)]
    result = run_module("monai.bundle", command, *line, cwd=cwd)
    assert result.returncode == 0, (
        f"monai.bundle {command} {line} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    )
    return result


def run_bundle(config_file: str | list, cwd: Path = REPO_ROOT, **overrides) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run --config_file <config_file> --key value ...``, as a user runs a bundle."""
    return monai_bundle("run", "--config_file", str(config_file), cwd=cwd, **overrides)
