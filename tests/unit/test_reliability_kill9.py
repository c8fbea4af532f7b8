"""kill -9 of block-writing processes at random moments never leaves a torn, short or wrong block.

Each round starts a fresh Python process (`tests.unit.reliability_worker`) that stores 256 KiB blocks
(smaller than vLLM's ~2 MiB to keep the test fast; the publish protocol does not depend on the size)
through the real `BlockFiles.store` on real files, or through `FileTier` (alone, or under the RAM tier as
the agent runs it with `ramTierBytes`), and SIGKILLs it a random
0-15 ms after it announced it was ready. A few rounds instead kill the child at a fixed point (half-way
through a write, just before the rename) so that orphaned temp files exist for certain. After every
round, every file under a final block name must hold exactly its key's full bytes; at the end the
capacity manager (temp timeout 0, grace 0) must sweep every temp file and keep every block.
"""

import os
import queue
import random
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.unit.reliability_worker import CONFIG, block_content, block_key, key_of_path
from tieredkv_agent.capacity import CapacityManager
from tieredkv_agent.store.naming import Namespace, namespace_for

pytestmark = pytest.mark.unit

BLOCK = 256 * 1024
KEYS_PER_CHILD = 32
"""More than a child can store before its kill (about 0.5 ms per block here), so most kills land mid-store."""
KEY_STRIDE = 16
"""Consecutive rounds share half their keys: children also race for, and skip, each other's blocks."""
RANDOM_BLOCKFILES_ROUNDS = 100
RANDOM_TIER_ROUNDS = 10
RANDOM_RAM_ROUNDS = 4
PAUSED_ROUNDS = 8
MAX_KILL_DELAY_S = 0.015
RUNNERS = 3
"""Children alive at once (the parent threads driving them)."""
LINE_TIMEOUT_S = 30.0
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True, slots=True)
class Round:
    number: int
    label: str
    first: int
    seed: int
    tier: bool = False
    ram: bool = False
    """With `tier`: through the RAM tier layered over the file tier (the agent's tier with ramTierBytes)."""
    durability: str = "none"
    pause: str = ""
    """"" (kill at a random moment), "write" (half-way through a write) or "rename" (before it)."""
    pause_at: int = 0


def rounds() -> list[Round]:
    """Random-moment rounds (every 4th with fdatasync), FileTier and RAM-tier rounds, fixed-point rounds."""
    plan = [
        Round(n, "random", n * KEY_STRIDE, seed=n, durability="fdatasync" if n % 4 == 3 else "none")
        for n in range(RANDOM_BLOCKFILES_ROUNDS)
    ]
    plan += [
        Round(n, "random", n * KEY_STRIDE, seed=n, tier=True)
        for n in range(RANDOM_BLOCKFILES_ROUNDS, RANDOM_BLOCKFILES_ROUNDS + RANDOM_TIER_ROUNDS)
    ]
    first_ram = RANDOM_BLOCKFILES_ROUNDS + RANDOM_TIER_ROUNDS
    plan += [
        Round(n, "random", n * KEY_STRIDE, seed=n, tier=True, ram=True)
        for n in range(first_ram, first_ram + RANDOM_RAM_ROUNDS)
    ]
    plan += [
        Round(
            n, "paused", n * KEYS_PER_CHILD, seed=n, pause="write" if n % 2 else "rename", pause_at=1 + n % 5
        )
        for n in range(PAUSED_ROUNDS)
    ]
    random.Random(7).shuffle(plan)
    return plan


class Children:
    """Every child process started by the test, killed and reaped on the way out whatever happened."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: set[subprocess.Popen[bytes]] = set()
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO_ROOT), str(REPO_ROOT / "agent"), self.env.get("PYTHONPATH", "")]
        )

    def start(self, volume: Path, spec: Round) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "tests.unit.reliability_worker", str(volume)]
        argv += ["--label", spec.label, "--first", str(spec.first), "--count", str(KEYS_PER_CHILD)]
        argv += ["--seed", str(spec.seed), "--block", str(BLOCK), "--durability", spec.durability]
        if spec.tier:
            argv.append("--tier")
        if spec.ram:
            argv.append("--ram")
        if spec.pause:
            argv += [f"--pause-{spec.pause}", str(spec.pause_at)]
        pipes = subprocess.PIPE
        child = subprocess.Popen(argv, cwd=REPO_ROOT, env=self.env, stdin=pipes, stdout=pipes, stderr=pipes)
        with self._lock:
            self._live.add(child)
        return child

    def reap(self, child: subprocess.Popen[bytes]) -> tuple[bytes, bytes]:
        """Kill (if still running) and wait; the rest of the child's stdout, and its stderr."""
        try:
            if child.poll() is None:
                child.kill()
            return child.communicate(timeout=10)
        finally:
            with self._lock:
                self._live.discard(child)

    def kill_all(self) -> None:
        with self._lock:
            live = list(self._live)
        for child in live:
            self.reap(child)


def read_line(child: subprocess.Popen[bytes], timeout_s: float) -> str:
    """The child's next stdout line, read straight from the pipe; AssertionError on timeout or EOF."""
    assert child.stdout is not None
    fd, line, deadline = child.stdout.fileno(), b"", time.monotonic() + timeout_s
    while not line.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"child {child.pid} said nothing for {timeout_s} s (got {line!r})"
        chunk = os.read(fd, 1)
        assert chunk, f"child {child.pid} exited early (rc {child.poll()}), got {line!r}"
        line += chunk
    return line.decode().strip()


def verify_block(path: Path) -> None:
    """The file under a final block name holds exactly its key's full bytes."""
    data = path.read_bytes()
    assert len(data) == BLOCK, f"{path} has {len(data)} of {BLOCK} bytes under its final name"
    assert data == block_content(key_of_path(path), BLOCK), f"{path} has wrong bytes"


def volume_files(namespace: Namespace) -> tuple[list[Path], list[Path]]:
    """(block files, temp files) under the blocks directory; anything else fails the test."""
    blocks, temps = [], []
    for path in Path(namespace.blocks_dir).rglob("*"):
        if path.is_dir():
            continue
        if path.name.endswith(".bin"):
            blocks.append(path)
        elif path.name.endswith(".tmp") and ".bin_" in path.name:
            temps.append(path)
        else:
            raise AssertionError(f"unexpected file on the volume: {path}")
    return blocks, temps


class KillRunner:
    """Runs rounds from a shared queue on one parent thread; failures are collected, not raised."""

    def __init__(self, volume: Path, children: Children, work: "queue.Queue[Round]", seed: int) -> None:
        self.volume = volume
        self.namespace = namespace_for(volume, CONFIG)
        self.children = children
        self.work = work
        self.rng = random.Random(seed)
        self.kills = 0
        self.stored_before_kill = 0
        self.paused_temps: list[Path] = []
        self.failures: list[str] = []

    def run(self) -> None:
        while not self.failures:
            try:
                spec = self.work.get_nowait()
            except queue.Empty:
                return
            try:
                self.run_round(spec)
            except Exception as exc:
                self.failures.append(f"round {spec}: {type(exc).__name__}: {exc}")

    def run_round(self, spec: Round) -> None:
        child = self.children.start(self.volume, spec)
        lines: list[str] = []
        try:
            said = read_line(child, LINE_TIMEOUT_S)
            assert said == "ready", f"child said {said!r}"
            if spec.pause:
                while not (said := read_line(child, LINE_TIMEOUT_S)).startswith("paused "):
                    lines.append(said)  # the stores before the pause
            else:
                time.sleep(self.rng.uniform(0.0, MAX_KILL_DELAY_S))
            os.kill(child.pid, signal.SIGKILL)
        finally:
            stdout, stderr = self.children.reap(child)
        assert child.returncode == -signal.SIGKILL, f"child ended with {child.returncode}: {stderr.decode()}"
        self.kills += 1
        lines += stdout.decode().splitlines()
        reported = [bytes.fromhex(line.split()[1]) for line in lines if line != "done"]
        self.check_round(spec, set(reported))
        if spec.pause:
            assert len(reported) == spec.pause_at - 1, f"child reported {lines} before pausing"
            self.check_paused(spec, Path(said.removeprefix("paused ")))

    def check_round(self, spec: Round, reported: set[bytes]) -> None:
        """Every final block file of the round's keys is complete and correct; none that the child saw
        stored (or already present) before it died is missing."""
        for n in range(spec.first, spec.first + KEYS_PER_CHILD):
            key = block_key(spec.label, n)
            path = Path(self.namespace.block_path(key))
            if path.exists():
                verify_block(path)
            elif key in reported:
                raise AssertionError(f"{path} was stored before the kill and is lost")
        self.stored_before_kill += len(reported)

    def check_paused(self, spec: Round, temp: Path) -> None:
        """The block being written when the child died is only a temp file: half or all of its bytes."""
        assert temp.name.endswith(".tmp"), f"the child was writing {temp} itself, not a temp file"
        final = temp.with_name(temp.name.rpartition("_")[0])
        assert not final.exists(), f"{final} was published by a child killed before its rename"
        wanted = block_content(key_of_path(final), BLOCK)
        size = BLOCK // 2 if spec.pause == "write" else BLOCK
        assert temp.read_bytes() == wanted[:size], f"temp {temp} does not hold the first {size} bytes"
        self.paused_temps.append(temp)


@pytest.fixture
def volume(tmp_path: Path) -> Iterator[Path]:
    """The shared volume: tmp_path (a real disk here; the rounds write a few hundred MiB in all)."""
    root = tmp_path / "volume"
    root.mkdir()
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_writers_killed_at_random_moments_leave_only_complete_blocks_and_sweepable_temps(
    volume: Path,
) -> None:
    plan = rounds()
    work: queue.Queue[Round] = queue.Queue()
    for spec in plan:
        work.put(spec)
    children = Children()
    runners = [KillRunner(volume, children, work, seed) for seed in range(RUNNERS)]
    threads = [
        threading.Thread(target=runner.run, name=f"kill-runner-{i}", daemon=True)
        for i, runner in enumerate(runners)
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=240)
        assert not any(thread.is_alive() for thread in threads), "a kill runner hung"
    finally:
        while not work.empty():  # let hung or failed runners stop at their next round
            work.get_nowait()
        children.kill_all()
    assert [failure for runner in runners for failure in runner.failures] == []
    kills = sum(runner.kills for runner in runners)
    assert kills == len(plan) >= 100

    namespace = namespace_for(volume, CONFIG)
    blocks, temps = volume_files(namespace)
    for path in blocks:
        verify_block(path)
    paused_temps = [temp for runner in runners for temp in runner.paused_temps]
    assert len(paused_temps) == PAUSED_ROUNDS
    assert set(paused_temps) <= set(temps)
    stored_before_kill = sum(runner.stored_before_kill for runner in runners)
    assert stored_before_kill >= sum(max(spec.pause_at - 1, 0) for spec in plan)

    now = time.time()
    manager = CapacityManager(
        volume, grace_s=0.0, temp_timeout_s=0.0, watch_filesystem=False, scan_threads=2, clock=lambda: now + 5
    )
    report = manager.run_pass()
    assert (report.scan.unknown_count, report.scan.errors) == (0, [])
    assert report.scan.files == len(blocks)
    assert report.eviction.files == 0
    assert report.sweep.temp_files == len(temps)

    blocks_after, temps_after = volume_files(namespace)
    assert temps_after == []
    assert sorted(blocks_after) == sorted(blocks)
    for path in blocks_after:
        verify_block(path)
