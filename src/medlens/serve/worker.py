"""``medlens worker``: a batch worker process, any number of them beside the web processes.

A worker needs what a web process needs to run the single-upload path - the workspace, the
database, the same bundles - and nothing else: it claims items from the database queue
(:mod:`.jobs`), so workers on several machines that share the workspace folder (an NFS or a
shared volume) and the database split a batch between them, each file exactly once. It sweeps
orphaned files at start, like a web process, and stops after the current file on SIGTERM or
Ctrl-C (a ``kill -9`` is survivable too: the lease runs out and another worker takes the file).
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medlens.serve.jobs import Worker, sweep_orphans
from medlens.serve.settings import ServeSettings
from medlens.serve.state import open_state

log = logging.getLogger("medlens.serve")


def run_worker(
    bundles: Sequence[Path],
    *,
    workspace: Path = Path("medlens-workspace"),
    database_url: str | None = None,
    until_idle: bool = False,
    **opts: Any,
) -> int:
    """Process batch items until stopped (or until the queue is empty); files processed.

    ``opts`` are :class:`ServeSettings` fields (``lease_s``, ``worker_poll_s``,
    ``orphan_grace_s``, ``max_attempts``...).
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = ServeSettings(
        bundles=[Path(b) for b in bundles],
        workspace=Path(workspace),
        database_url=database_url,
        warm_explanations=False,
        batch_worker=False,
        **opts,
    )
    state = open_state(settings)
    sweep_orphans(state)
    worker = Worker(state)

    def _stop(signum: int, _frame: Any) -> None:
        log.info("worker %s: signal %d, stopping after the current file", worker.name, signum)
        worker.stop(timeout=0)

    previous = {s: signal.signal(s, _stop) for s in (signal.SIGTERM, signal.SIGINT)}
    log.info(
        "worker %s ready: %d model(s), polling every %.1fs",
        worker.name,
        len(state.models),
        settings.worker_poll_s,
    )
    try:
        return worker.run(until_idle=until_idle)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if state.engine is not None:
            state.engine.dispose()
