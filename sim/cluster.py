"""Running independent tasks on a Dask cluster, or one by one in this process.

Theory of operation.  A campaign (fuzz shards, differential trace ranges,
matrix chunks) is a list of *tasks*: picklable arguments handed to a
module-level function that returns a picklable result and depends on
nothing else.  `Runner` runs them

- in this process, one after the other (`workers=None`, `scheduler=None`),
- on a `distributed.LocalCluster` of `workers` processes on this machine,
  one thread each, listening on loopback only (the embedded default), or
- on an existing cluster (`scheduler="tcp://HOST:8786"`, started with Dask's
  own `dask scheduler` / `dask worker`; every worker needs blocksim installed).

`Runner.run` yields `(index, result)` as tasks complete, in completion order:
the caller merges them in a way that does not depend on that order.  A task
may call `emit(message)` to tell the coordinator how far it got (a dict of
plain JSON values); the coordinator's `on_event` receives it.  Dask reruns a
task whose worker died on another worker; `run` reports each worker that left
through `on_event({"worker-lost": ADDRESS})`, and a task that Dask gave up on
(`KilledWorker`) is yielded as a `TaskLost`, so the campaign carries on.

This is the only module that imports dask.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

TOPIC = "blocksim-progress"
EventHandler = Callable[[dict[str, Any]], None]

# What a LocalCluster leaves out: each of these wakes every process of the cluster
# (workers, and the coordinator holding scheduler and nannies) on its own timer, and
# with two workers on two cores every wake-up is taken from a shard.  Off: the
# statistical profiler (a stack sample of the running shard every 10 ms, for the
# dashboard, which is off) and the GIL monitor; slower: the event-loop health tick
# (every 20 ms) and the system monitor (every 500 ms; memory_limit=0 needs no samples).
QUIET_CLUSTER = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.system-monitor.gil.enabled": False,
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.admin.tick.interval": "500ms",
}

_local = threading.local()  # the handler of the task running in this thread, in-process


@dataclass(frozen=True)
class TaskLost:
    """A task whose worker died too often: Dask gave up on it (its result is lost)."""

    index: int
    reason: str


def emit(message: dict[str, Any]) -> None:
    """From inside a task: send `message` (plain JSON values) to the coordinator."""
    message = dict(message, pid=os.getpid())
    handler: EventHandler | None = getattr(_local, "handler", None)
    if handler is not None:
        handler(message)
        return
    try:
        from distributed import get_worker

        get_worker().log_event(TOPIC, message)
    except (ImportError, ValueError):  # not inside a Dask worker: nobody listens
        pass


def _ignore_interrupts() -> Any:
    """A worker plugin: the worker process ignores SIGINT (workers restarted later too)."""
    from distributed import WorkerPlugin

    class IgnoreInterrupts(WorkerPlugin):  # type: ignore[misc]
        """Makes a Dask worker process ignore SIGINT, so that a Ctrl-C at the terminal
        is handled by the coordinating process alone."""

        def setup(self, worker: Any) -> None:  # noqa: V107 - Dask passes worker= by name
            import signal

            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, signal.SIG_IGN)

    return IgnoreInterrupts()


class Runner:
    """Where tasks run: in-process, on a LocalCluster, or on an existing scheduler.

    Use as a context manager; the LocalCluster it started is closed on exit."""

    def __init__(self, workers: int | None = None, scheduler: str | None = None) -> None:
        self.workers = workers
        self.scheduler = scheduler
        self._cluster: Any = None
        self.client: Any = None

    @property
    def distributed(self) -> bool:
        return self.workers is not None or self.scheduler is not None

    def describe(self) -> str:
        if self.scheduler is not None:
            return f"Dask scheduler {self.scheduler}"
        if self.workers is not None:
            return f"Dask LocalCluster of {self.workers} worker process(es)"
        return "this process"

    def __enter__(self) -> Runner:
        if not self.distributed:
            return self
        from distributed import Client, LocalCluster

        if self.scheduler is not None:
            self.client = Client(self.scheduler, timeout="20s")
            return self
        import dask

        with dask.config.set(QUIET_CLUSTER):
            self._cluster = LocalCluster(
                n_workers=self.workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                # no dashboard; the scheduler's HTTP server (always started) on any free
                # loopback port, not 8787 that another cluster may hold
                dashboard_address="127.0.0.1:0",
                scheduler_kwargs={"dashboard": False},
                silence_logs=logging.CRITICAL,
                memory_limit=0,  # the fuzzer bounds its own memory
            )
        self.client = Client(self._cluster)
        # Ctrl-C in a terminal reaches every process of the group: the workers leave
        # it to the coordinator, which cancels their tasks and closes the cluster
        self.client.register_plugin(_ignore_interrupts(), name="blocksim-ignore-sigint")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.client is not None:
            self.client.close()
        if self._cluster is not None:
            self._cluster.close()
        self.client = self._cluster = None

    def worker_pids(self) -> dict[str, int]:
        """Address -> process id of every worker now connected (empty in-process)."""
        if self.client is None:
            return {}
        return dict(self.client.run(os.getpid))

    def run(
        self,
        fn: Callable[[Any], Any],
        tasks: Sequence[Any],
        on_event: EventHandler | None = None,
        names: Sequence[str] | None = None,
    ) -> Iterator[tuple[int, Any]]:
        """Run fn(task) for every task; yield (index, result) as each completes.

        `names` label the tasks in Dask (unique per run).  Closing the iterator
        early (an interrupt) cancels what is still queued or running."""
        if self.client is None:
            yield from self._run_here(fn, tasks, on_event)
            return
        yield from self._run_dask(fn, tasks, on_event, names)

    @staticmethod
    def _run_here(
        fn: Callable[[Any], Any], tasks: Sequence[Any], on_event: EventHandler | None
    ) -> Iterator[tuple[int, Any]]:
        _local.handler = on_event
        try:
            for index, task in enumerate(tasks):
                yield index, fn(task)
        finally:
            _local.handler = None

    def _run_dask(
        self,
        fn: Callable[[Any], Any],
        tasks: Sequence[Any],
        on_event: EventHandler | None,
        names: Sequence[str] | None,
    ) -> Iterator[tuple[int, Any]]:
        from distributed import as_completed
        from distributed.scheduler import KilledWorker

        client = self.client
        lock = threading.Lock()
        if on_event is not None:

            def relay(event: Any) -> None:  # called on the client's event-loop thread
                _, message = event
                if isinstance(message, dict):
                    with lock:
                        on_event(message)

            client.subscribe_topic(TOPIC, relay)
        token = os.urandom(4).hex()
        keys = list(names) if names is not None else [f"task-{i}" for i in range(len(tasks))]
        futures = [
            client.submit(fn, task, key=f"blocksim-{token}-{keys[i]}", pure=False)
            for i, task in enumerate(tasks)
        ]
        index_of = {f.key: i for i, f in enumerate(futures)}
        known = set(client.scheduler_info()["workers"])
        try:
            for future in as_completed(futures):
                known = self._report_lost(known, on_event, lock)
                index = index_of[future.key]
                try:
                    result = future.result()
                except KilledWorker as exc:
                    result = TaskLost(index, f"its worker died repeatedly ({exc})")
                yield index, result
        finally:
            for f in futures:
                if not f.done():
                    f.cancel()
            if on_event is not None:
                client.unsubscribe_topic(TOPIC)

    def _report_lost(
        self, known: set[str], on_event: EventHandler | None, lock: threading.Lock
    ) -> set[str]:
        now = set(self.client.scheduler_info()["workers"])
        if on_event is not None:
            for address in sorted(known - now):
                with lock:
                    on_event({"worker-lost": address})
        return now
