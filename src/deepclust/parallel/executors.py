"""Where the tasks of `deepclust embed` and of clustering at scale run.

:func:`open_executor` gives either a :class:`LocalExecutor` (this process, no Dask: a
single machine pays nothing) or a :class:`DaskExecutor` on a local cluster (``local[N]``)
or an existing scheduler (``tcp://host:8786``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from typing import Any, Callable, Iterator, Sequence

from deepclust.errors import DeepclustError

log = logging.getLogger("deepclust")

_LOCAL = re.compile(r"^local(?:\[(\d+)\])?$")


class LocalExecutor:
    """Runs every task in this process, one after the other: the path without Dask."""

    name = "local executor (this process)"
    n_workers = 1

    def share(self, value: Any) -> Any:
        """A value every task will read (centres, settings): here, the value itself."""
        return value

    def run(self, fn: Callable, items: Sequence, *args: Any) -> Iterator[tuple[int, Any, Exception | None]]:
        """``fn(item, *args)`` for each item; yields ``(position, result, None)`` as they
        finish, or ``(position, None, error)`` for a task that raised (the others go on)."""
        for i, item in enumerate(items):
            try:
                result = fn(item, *args)
            except Exception as exc:  # noqa: BLE001 - reported to the caller, like a failed Dask task
                yield i, None, exc
            else:
                yield i, result, None

    def close(self) -> None:
        pass


class DaskExecutor:
    """Runs tasks on the workers of a Dask ``distributed`` cluster.

    Parameters
    ----------
    client : distributed.Client
    cluster : distributed.LocalCluster, optional
        A cluster this executor started and closes with itself.
    """

    def __init__(self, client, cluster=None):
        self.client = client
        self.cluster = cluster
        self.n_workers = max(1, len(client.scheduler_info(n_workers=-1)["workers"]))
        self.name = f"Dask scheduler {client.scheduler.address} ({self.n_workers} workers)"

    def share(self, value: Any) -> Any:
        """``value`` sent once to every worker; tasks given it receive the value."""
        return self.client.scatter(value, broadcast=True, hash=False)

    def run(self, fn: Callable, items: Sequence, *args: Any) -> Iterator[tuple[int, Any, Exception | None]]:
        """As :meth:`LocalExecutor.run`, the tasks running on the workers (a task whose
        worker died is rerun elsewhere by Dask)."""
        from distributed import as_completed

        futures = {self.client.submit(fn, item, *args, pure=False): i for i, item in enumerate(items)}
        try:
            for future in as_completed(futures):
                try:
                    result = future.result()
                except Exception as exc:  # noqa: BLE001 - the task's own error, or a lost worker
                    yield futures[future], None, exc
                else:
                    yield futures[future], result, None
                future.release()
        finally:  # an interrupted client: cancel what has not run
            self.client.cancel([f for f in futures if not f.done()])

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def parse_scheduler(scheduler: str | None) -> tuple[str, int | None]:
    """``("none", None)``, ``("local", n_workers)`` or ``("address", None)`` for a
    ``--scheduler`` value (None or "none": no Dask; ``local`` or ``local[N]``; an address)."""
    if scheduler is None or str(scheduler).strip().lower() in ("", "none"):
        return "none", None
    text = str(scheduler).strip()
    match = _LOCAL.match(text.lower())
    if match:
        n = int(match.group(1)) if match.group(1) else (os.cpu_count() or 1)
        if n < 1:
            raise DeepclustError(f"--scheduler {text}: a local cluster needs at least 1 worker, e.g. local[2]")
        return "local", n
    if text.lower().startswith("local"):
        raise DeepclustError(f"--scheduler {text!r} is not understood; use local, local[N] or a scheduler address "
                             "such as tcp://10.0.0.5:8786")
    return "address", None


@contextlib.contextmanager
def open_executor(scheduler: str | None = None, threads_per_worker: int = 1) -> Iterator[LocalExecutor | DaskExecutor]:
    """The executor of ``--scheduler``, closed (with any cluster it started) on exit.

    ``local[N]`` starts a Dask ``LocalCluster`` of N worker processes that listens on
    127.0.0.1 only and has no dashboard; an address (``tcp://host:8786``) joins a
    scheduler that is already running (``dask scheduler`` / ``dask worker`` on the
    machines, or any Dask deployment). None runs everything in this process.
    """
    kind, n_workers = parse_scheduler(scheduler)
    if kind == "none":
        executor = LocalExecutor()
    else:
        try:
            from distributed import Client, LocalCluster
        except ImportError as exc:
            raise DeepclustError(f"--scheduler {scheduler} needs Dask: pip install 'deepclust[dask]' ({exc})") from None
        logging.getLogger("distributed").setLevel(logging.WARNING)  # not every worker start and stop
        if kind == "local":
            # the scheduler's HTTP server (health checks; the dashboard when bokeh is installed) cannot be
            # turned off: it listens on a free port of 127.0.0.1, never on the fixed 8787, and shows no dashboard
            cluster = LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker, processes=True,
                                   host="127.0.0.1", dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR,
                                   scheduler_kwargs={"dashboard": False})
            executor = DaskExecutor(Client(cluster), cluster)
        else:
            try:
                client = Client(scheduler, timeout="30s")
            except (OSError, TimeoutError) as exc:
                raise DeepclustError(f"cannot reach the Dask scheduler at {scheduler} ({exc}); start it with "
                                     "`dask scheduler` and workers with `dask worker ADDRESS`, or use local[N]") from None
            executor = DaskExecutor(client)
    log.info("running on the %s", executor.name)
    try:
        yield executor
    finally:
        executor.close()
