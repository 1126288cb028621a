"""Where a run's jobs run. ``local`` (the default): one after another in this process. ``ray``:
as Ray core tasks (optional extra ``kpbench[ray]``), on a cluster at ``run.ray.address``
(``auto`` or HOST:PORT) or, without an address, on a temporary Ray started for the run on this
machine and listening on the loopback interface only.

Either way a job that raises fails alone: the executor reports it and runs the others. On Ray, a
job whose worker dies is retried by Ray and continues from its ``last.pt``. A Ray worker gets
the job's inputs, the run's plan among them, once through the object store; unpickling the plan
imports the plugin modules it names (``KPBENCH_*``, ``PYTHONPATH`` and ``HF_HUB_OFFLINE`` are
passed to it, so it finds the same ones), works in
the driver's folder (a shared filesystem, same paths) and sets torch's threads to its CPU share.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import threading
from typing import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from kpbench.config import RunSettings
from kpbench.errors import KpbenchError, first_line
from kpbench.log import log

PASSED_ENV = ("HF_HUB_OFFLINE", "PYTHONPATH")  # besides every KPBENCH_* variable
RAY_RETRIES = 2  # a job whose worker died (node lost, out of memory) is run again this often


class LocalExecutor:
    """The jobs one after another, in this process."""

    def __init__(self, run: RunSettings, status: Console):
        self.status = status

    def run(self, run_job: Callable, jobs, inputs, on_failure: Callable) -> None:
        """``run_job(job, inputs, status)`` for each job; ``on_failure(job, exc)`` where it raises."""
        for job in jobs:
            try:
                run_job(job, inputs, self.status)
            except Exception as exc:  # noqa: BLE001 - a job fails alone
                on_failure(job, exc)

    def close(self) -> None:
        pass


def _ray_job(run_job: Callable, job, inputs, threads: int, cwd: str) -> dict:
    """A job in a Ray worker: the driver's folder, this worker's thread share, a quiet console."""
    import torch

    if os.path.isdir(cwd):
        os.chdir(cwd)
    torch.set_num_threads(threads)  # a reused worker may have kept another job's setting
    return run_job(job, inputs, status=Console(file=io.StringIO()))


class RayExecutor:
    """The jobs as Ray tasks, ``run.ray.cpus_per_job`` CPUs and ``gpus_per_job`` GPUs each."""

    def __init__(self, run: RunSettings, status: Console):
        self.status = status
        self.cpus, self.gpus = run.ray.cpus_per_job, run.ray.gpus_per_job
        self.threads = run.threads or max(1, int(self.cpus))
        self.ray = connect(run.ray.address)
        self.started = not run.ray.address
        try:
            resources = self.ray.cluster_resources()
            for what, need in (("CPU", self.cpus), ("GPU", self.gpus)):
                if need > resources.get(what, 0):
                    raise KpbenchError(f"run.ray.{what.lower()}s_per_job {need}: the Ray cluster has "
                                       f"{resources.get(what, 0):g} {what}s, so such a job would wait forever")
        except BaseException:
            self.close()
            raise

    def run(self, run_job: Callable, jobs, inputs, on_failure: Callable) -> None:
        """``run_job(job, inputs)`` as a Ray task per job (the inputs carry the plan);
        ``on_failure(job, exc)`` where one raises or its worker dies for good."""
        ray = self.ray
        task = ray.remote(_ray_job).options(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=RAY_RETRIES,
                                           retry_exceptions=False)
        shared = ray.put(inputs)
        pending = {task.remote(run_job, job, shared, self.threads, os.getcwd()): job for job in jobs}
        log.debug(f"{len(pending)} jobs submitted to Ray, {self.threads} torch threads each")
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
        try:
            with Progress(*columns, console=self.status, transient=True) as progress:
                bar = progress.add_task(f"jobs on Ray ({self.cpus:g} CPU, {self.gpus:g} GPU each)", total=len(jobs))
                while pending:
                    done, _ = ray.wait(list(pending), num_returns=1)
                    job = pending.pop(done[0])
                    try:
                        row = ray.get(done[0])
                        log.info(f"{job}: done in {row.get('train_s', 0):.0f} s of training")
                    except ray.exceptions.RayTaskError as exc:  # the job raised: its own exception
                        on_failure(job, getattr(exc, "cause", None) or exc)
                    except ray.exceptions.RayError as exc:  # its worker died RAY_RETRIES + 1 times
                        on_failure(job, exc)
                    progress.advance(bar)
        finally:
            for ref in pending:  # interrupted: stop what is still running
                ray.cancel(ref, force=True)

    def close(self) -> None:
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()


def worker_env() -> dict[str, str]:
    """The environment a Ray worker needs to see the same plugins as the driver."""
    return {k: v for k, v in os.environ.items() if k.startswith("KPBENCH_") or k in PASSED_ENV}


def connect(address: str | None):
    """``ray``, initialized: joined to the cluster at ``address``, or a temporary local Ray on the
    loopback interface (the CPUs torch would use, no dashboard)."""
    try:
        if not address or address.rpartition(":")[0] in ("127.0.0.1", "localhost"):
            # A Ray on this machine only: its services, and this driver's, on 127.0.0.1 (read
            # when ray is imported).
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        import ray
    except ImportError:
        raise KpbenchError("run.executor ray needs Ray: pip install 'kpbench[ray]'") from None
    if ray.is_initialized():
        return ray
    if address and address != "auto":
        check_listening(address)
    env = worker_env()
    options = {"runtime_env": {"env_vars": env}} if env else {}
    log.info("starting a local Ray on 127.0.0.1" if not address else f"joining the Ray cluster at {address}")
    on_sigterm = signal.getsignal(signal.SIGTERM)
    try:
        if address:
            ray.init(address=address, logging_level="WARNING", **options)
        else:
            import torch

            ray.init(num_cpus=os.cpu_count() or torch.get_num_threads(), include_dashboard=False,
                     logging_level="WARNING", **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        hint = ("" if os.environ.get("RAY_AUTH_MODE") else " (a cluster with Ray's token authentication, the "
                "default of `ray start`, is joined with RAY_AUTH_MODE=token and its token in ~/.ray/auth_token "
                "or RAY_AUTH_TOKEN)")
        raise KpbenchError(f"run.ray.address {address!r}: cannot join a Ray cluster there: "
                           f"{first_line(exc)}{hint}") from None
    finally:
        if on_sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, on_sigterm)  # Ray's core worker installs its own: keep kpbench's
    return ray


def check_listening(address: str, timeout: float = 5.0) -> None:
    """A one-line error at once when nothing listens at HOST:PORT (Ray itself retries for minutes)."""
    import socket

    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as exc:
        raise KpbenchError(f"run.ray.address {address!r}: no Ray cluster answers there ({exc}); start one with "
                           f"`ray start --head`, or leave the address out for a temporary local Ray") from None


@contextlib.contextmanager
def executor_for(run: RunSettings, status: Console):
    """The executor ``run.executor`` names, closed (a temporary Ray stopped) when the run ends."""
    executor = (RayExecutor if run.executor == "ray" else LocalExecutor)(run, status)
    try:
        yield executor
    finally:
        executor.close()
