"""The plugin's connection to its node agent, re-established with backoff whenever it is lost.

`AgentLink` owns at most one live `AgentClient` plus the clients that died with jobs still unreported.
Threads:

* vLLM's scheduler thread (under vLLM's tiering lock) calls `client`, `poll`, `close`;
* `tkv-plugin-connect` (started by `start`) connects, and after a loss reconnects with exponential
  backoff (0.05 s doubling to `max_backoff_s`). It only ever swaps `_client`, under `_lock`. While
  `connect` raises `NotReady` it asks again every `ready_poll_s`, quietly.

Failure accounting: every job is submitted to exactly one client, and a client reports each of its jobs
exactly once (a real JobDone, or a failure it makes up when the agent goes). A dead client is kept until
it has no job left in flight and one more `poll` has emptied it, so no failure is lost.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from tieredkv_agent.api.client import AgentClient, AgentRejected
from tieredkv_agent.api.protocol import JobDone

log = logging.getLogger(__name__)

Connect = Callable[[], AgentClient]


class NotReady(Exception):  # noqa: N818 (a state, not an error)
    """`connect` cannot try yet (the engine has not seeded its hashes); the link asks again shortly."""


class AgentLink:
    """A self-healing connection to the agent (see the module docstring for threads)."""

    def __init__(self, connect: Connect, *, max_backoff_s: float = 5.0, ready_poll_s: float = 0.05) -> None:
        self._connect = connect
        self._max_backoff_s = max_backoff_s
        self._ready_poll_s = ready_poll_s
        self._cut_off: set[int] = set()
        self._lock = threading.Lock()
        self._client: AgentClient | None = None
        self._dead: list[AgentClient] = []
        self._lost = threading.Event()
        self._lost.set()
        self._stopping = threading.Event()
        self.connects = 0
        self.last_error = ""
        self._thread = threading.Thread(target=self._run, name="tkv-plugin-connect", daemon=True)

    def start(self, wait_s: float = 0.0) -> bool:
        """Start connecting; wait up to `wait_s` for the first connection. True if connected."""
        self._thread.start()
        deadline = time.monotonic() + wait_s
        while self.client() is None and time.monotonic() < deadline:
            self._stopping.wait(0.01)
        return self.client() is not None

    def client(self) -> AgentClient | None:
        """The live client, or None while disconnected (any thread; never waits)."""
        with self._lock:
            client = self._client
            if client is not None and not client.connected:
                self._retire_locked(client)
                client = None
        return client

    def poll(self) -> list[JobDone]:
        """Every job outcome since the last poll, from the live client and dead ones (scheduler thread)."""
        with self._lock:
            live = self._client
            dead = list(self._dead)
        done: list[JobDone] = []
        if live is not None:
            done.extend(live.poll())
            self._cut_off |= live.take_cut_off()
            if not live.connected:
                with self._lock:
                    self._retire_locked(live)
        finished = []
        for client in dead:
            empty = client.pending_jobs == 0  # before the poll: then nothing can arrive after it
            done.extend(client.poll())
            self._cut_off |= client.take_cut_off()
            if empty:
                finished.append(client)
        if finished:
            with self._lock:
                self._dead = [client for client in self._dead if client not in finished]
        return done

    def take_cut_off(self) -> set[int]:
        """Job ids that `poll` reported failed because their connection ended (scheduler thread)."""
        cut_off, self._cut_off = self._cut_off, set()
        return cut_off

    def _retire_locked(self, client: AgentClient) -> None:
        if self._client is client:
            self._client = None
            self._dead.append(client)
            self._lost.set()
            log.warning("lost the tieredkv agent; reconnecting in the background")

    def close(self) -> None:
        """Stop reconnecting and close the live client (scheduler thread, at shutdown)."""
        self._stopping.set()
        self._lost.set()
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()
            with self._lock:
                self._dead.append(client)
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)

    def _run(self) -> None:
        """Connect whenever there is no live client; back off between failed attempts (own thread)."""
        backoff = 0.05
        while not self._stopping.is_set():
            self._lost.wait()
            if self._stopping.is_set():
                return
            try:
                client = self._connect()
            except NotReady:
                self._stopping.wait(self._ready_poll_s)
                continue
            except (OSError, AgentRejected) as exc:
                if str(exc) != self.last_error:
                    log.warning("cannot reach the tieredkv agent: %s (retrying with backoff)", exc)
                self.last_error = str(exc)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, self._max_backoff_s)
                continue
            with self._lock:
                if self._stopping.is_set():
                    client.close()
                    return
                self._client = client
                self._lost.clear()
                self.connects += 1
            self.last_error = ""
            backoff = 0.05
            log.info("connected to the tieredkv agent (connection %d)", self.connects)
