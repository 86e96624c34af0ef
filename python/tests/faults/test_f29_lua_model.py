"""F29: model-based property test of the Lua scripts (fault row F29 of docs/guarantees.md).

A Hypothesis ``RuleBasedStateMachine`` drives random sequences of enqueue
(plain, deferred, unique, rate-limited, debounced, and invalid), claim, lease
renewal, settle (complete / retry / fail / cancel / release, with current and
stale fences), cancel, the lease-expiry sweep, DLQ requeue and purge, and time
advance against a real ``redis-server``, through the shipped scripts and
``rrq.store.Store``. A Python reference model (``lua_model.py``) predicts every
reply and the whole database; after every step the test checks:

- the reply equals the model's, and the database (SCAN over all keys: type,
  TTL and content of each) equals the model's, so there are no orphan keys;
- each job id is in exactly the structure its ``status`` says (due / active /
  dlq / none when COMPLETED or CANCELLED), with scores equal to the hash's
  ``run_at_ms`` / ``finished_at_ms``; live jobs have no TTL, finished ones do;
- ``attempt`` never decreases (except the documented ``release``, by one, and
  ``dlq_requeue``, to 0), and never exceeds ``max_retries + 1``;
- terminal records never change (except ``dlq_requeue`` reviving a FAILED one);
- a settle or a lease renewal with a stale fence (wrong attempt or owner)
  changes nothing.

Time: the scripts read ``redis.call('TIME')``. Redis runs under libfaketime
with a *frozen* absolute clock read from a file (``FAKETIME_TIMESTAMP_FILE``
holding ``"YYYY-MM-DD hh:mm:ss.uuuuuu"``, ``FAKETIME_NO_CACHE=1``, monotonic
time left real so Redis's event loop runs); the test moves it by rewriting the
file, and Redis's own key expiry follows. Debian's redis-server uses jemalloc,
which makes libfaketime fail at start-up (libfaketime issue #130), so a tiny
preloaded shim, compiled here with ``cc``, routes malloc to glibc's allocator.
The start checks that Redis TIME and key expiry follow the file and fails
loudly otherwise.

Known script bugs (``lua_model.KNOWN_BUGS``) are tolerated by the property runs
(the model mimics them) and replayed strictly, as ``xfail(strict=True)``, by
``test_f29_regression``.

Runs: ``test_f29_model_quick`` (marked quick, 100 examples, in the default
``pytest``) and ``test_f29_model_full`` (``RRQ_F29_EXAMPLES``, default 1,000,
in ``make faults``). Counterexamples: the shrunk failing sequence is written to
``$TMPDIR/rrq-f29/counterexample-*.json`` after a last step-deletion pass (and
appended to ``f29_regressions.json`` with ``RRQ_F29_RECORD=1``); every sequence
in ``f29_regressions.json`` is replayed by ``test_f29_regression``. Knobs:
``RRQ_F29_EXAMPLES``, ``RRQ_F29_QUICK_EXAMPLES``, ``RRQ_F29_STEPS`` (steps per
example, default 30), ``RRQ_F29_DB`` (Hypothesis database directory, default
``$TMPDIR/rrq-f29/hypothesis-db``), ``RRQ_LIBFAKETIME``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import importlib.util
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pytest
import redis
import redis.asyncio as aioredis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    rule,
    run_state_machine_as_test,
)

from rrq._limits import MAX_DURATION_MS, MAX_RETRIES
from rrq.exceptions import RRQError
from rrq.store import (
    DEFAULT_KEYS,
    QUEUES_KEY,
    EnqueueArgs,
    SettleArgs,
    Store,
    _enqueue_call,
    active_key,
    debounce_key_prefix,
    dlq_key,
    done_channel_prefix,
    due_key,
    job_key_prefix,
    wake_channel,
)
from rrq.testing import ProcessLog, find_redis_server

from .lua_model import (
    ACTIVE,
    COMPLETED,
    FAILED,
    KNOWN_BUGS,
    PENDING,
    TERMINAL,
    WAITING,
    EnqueueCall,
    Job,
    LuaModel,
    ScriptError,
    Snapshot,
    normalize,
)

ROW: Final = "F29"
QUEUE: Final = "f29"
# Another queue, whose records the test plants to exercise the id registry.
OTHER_QUEUE: Final = "f29-other"
T0_MS: Final = 1_767_225_600_000  # 2026-01-01 00:00:00.000 UTC
DEFAULT_RESULT_TTL_MS: Final = 5_000
DLQ_RETENTION_MS: Final = 4_000
MAX_PARAMS_BYTES: Final = 64

JOB_IDS: Final = ("a", "b", "c", "d", "e")
OWNERS: Final = ("o1", "o2")
RULE_KEYS: Final = ("k1", "k2")
BIG_PARAMS: Final = '{"pad":"' + "x" * MAX_PARAMS_BYTES + '"}'

FAULTS_DIR: Final = Path(__file__).resolve().parent
REGRESSIONS: Final = FAULTS_DIR / "f29_regressions.json"
WORK_DIR: Final = Path(tempfile.gettempdir()) / "rrq-f29"

# ---------------------------------------------------------------------- Redis on a file clock

_MALLOC_SHIM = r"""
/* Routes the malloc family to glibc so libfaketime can initialize in a
 * jemalloc-linked redis-server (libfaketime issue #130). Test-only. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stddef.h>
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void __libc_free(void *);
extern void *__libc_memalign(size_t, size_t);
extern void *__libc_valloc(size_t);
extern void *__libc_pvalloc(size_t);
void *malloc(size_t n) { return __libc_malloc(n); }
void *calloc(size_t a, size_t b) { return __libc_calloc(a, b); }
void *realloc(void *p, size_t n) { return __libc_realloc(p, n); }
void free(void *p) { __libc_free(p); }
void *memalign(size_t a, size_t n) { return __libc_memalign(a, n); }
void *aligned_alloc(size_t a, size_t n) { return __libc_memalign(a, n); }
void *valloc(size_t n) { return __libc_valloc(n); }
void *pvalloc(size_t n) { return __libc_pvalloc(n); }
int posix_memalign(void **out, size_t a, size_t n) {
  if (a < sizeof(void *) || (a & (a - 1)) != 0) return EINVAL;
  void *p = __libc_memalign(a, n);
  if (p == NULL) return ENOMEM;
  *out = p;
  return 0;
}
size_t malloc_usable_size(void *p) {
  static size_t (*real)(void *);
  if (real == NULL) {
    void *libc = dlopen("libc.so.6", RTLD_LAZY | RTLD_NOLOAD);
    real = (size_t (*)(void *))dlsym(libc, "malloc_usable_size");
  }
  return p == NULL ? 0 : real(p);
}
size_t nallocx(size_t n, int flags) { (void)flags; return n; }
"""


def find_libfaketime() -> str:
    """``$RRQ_LIBFAKETIME``, else the library the pinned ``libfaketime`` dev
    package ships (python/requirements-dev.txt: the same build on every
    machine), else Debian's (``apt install faketime``)."""
    explicit = os.environ.get("RRQ_LIBFAKETIME")
    if explicit:
        return explicit
    spec = importlib.util.find_spec("libfaketime")
    if spec is not None and spec.origin is not None:
        shipped = Path(spec.origin).parent / "vendor" / "libfaketime" / "src" / "libfaketime.so.1"
        if shipped.is_file():
            return str(shipped)
    for root, pattern in (
        ("/usr/lib", "*/faketime/libfaketime.so.1"),
        ("/usr/lib", "faketime/libfaketime.so.1"),
        ("/usr/local/lib", "faketime/libfaketime.so.1"),
    ):
        found = sorted(Path(root).glob(pattern))
        if found:
            return str(found[0])
    pytest.fail(
        "F29 needs libfaketime: make setup installs it (python/requirements-dev.txt), "
        "or apt install faketime, or set RRQ_LIBFAKETIME"
    )


def build_malloc_shim(directory: Path) -> Path:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.fail("F29 needs a C compiler (cc) to build its 20-line malloc shim")
    source = directory / "glibc_malloc.c"
    library = directory / "glibc_malloc.so"
    source.write_text(_MALLOC_SHIM, encoding="utf-8")
    build = subprocess.run(
        [compiler, "-O2", "-shared", "-fPIC", "-o", str(library), str(source), "-ldl"],
        capture_output=True,
        text=True,
        check=False,
    )
    if build.returncode != 0:
        pytest.fail(f"building the malloc shim failed:\n{build.stdout}{build.stderr}")
    return library


def faketime_text(ms: int) -> str:
    """libfaketime's absolute (frozen) format, UTC: ``YYYY-MM-DD hh:mm:ss.uuuuuu``.

    libfaketime reads the fraction as a double, so ``01.001`` can come out as
    1.000999 s; writing the middle of the millisecond (``+500 us``) keeps Redis's
    ``floor(us / 1000)`` on the intended millisecond.
    """
    seconds, millis = divmod(ms, 1000)
    moment = dt.datetime.fromtimestamp(seconds, tz=dt.UTC)
    return f"{moment:%Y-%m-%d %H:%M:%S}.{millis * 1000 + 500:06d}"


def _remove_stale_faketime_shm() -> None:
    """Deletes libfaketime's per-process /dev/shm files left by processes that died.

    libfaketime creates ``faketime_shm_<pid>`` and ``sem.faketime_sem_<pid>`` and
    removes them only on a clean exit; a leftover pair makes the next process
    that gets the same pid fail at start ("shm_open failed: File exists"). Its
    README asks for exactly this cleanup. Files of live processes are kept.
    """
    shm = Path("/dev/shm")
    for segment in shm.glob("faketime_shm_*"):
        pid = segment.name.removeprefix("faketime_shm_")
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            for stale in (segment, shm / f"sem.faketime_sem_{pid}"):
                with contextlib.suppress(OSError):
                    stale.unlink()
        except PermissionError:
            continue  # alive, another user's


class FakeClockRedis:
    """A private redis-server (unix socket, no persistence) whose clock is a file."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.socket_path = directory / "redis.sock"
        # Redis reads this file on every clock call (FAKETIME_NO_CACHE): keep it in RAM.
        shm = Path("/dev/shm")
        self.clock_dir = Path(
            tempfile.mkdtemp(prefix="rrq-f29-", dir=shm if shm.is_dir() else None)
        )
        self.clock_file = self.clock_dir / "faketime.rc"
        self.process: subprocess.Popen[str] | None = None
        self.log: ProcessLog | None = None

    def set_time(self, ms: int) -> None:
        staging = self.clock_file.with_suffix(".tmp")
        staging.write_text(faketime_text(ms) + "\n", encoding="utf-8")
        staging.replace(self.clock_file)  # atomic: Redis never reads half a line

    def start(self, start_ms: int) -> FakeClockRedis:
        _remove_stale_faketime_shm()
        self.set_time(start_ms)
        shim = build_malloc_shim(self.directory)
        env = {
            **os.environ,
            "LD_PRELOAD": f"{shim}:{find_libfaketime()}",
            "FAKETIME_TIMESTAMP_FILE": str(self.clock_file),
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",  # Redis's event loop keeps real time
            "TZ": "UTC",
        }
        env.pop("FAKETIME", None)  # it would take priority over the file
        args = [find_redis_server(), "--port", "0", "--dir", str(self.directory)]
        args += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        args += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
        self.process = subprocess.Popen(
            args,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        assert self.process.stdout is not None
        self.log = ProcessLog(self.process.stdout, self.directory / "redis.log")
        try:
            self.log.wait_for(r"[Rr]eady to accept connections", timeout=15)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """SIGTERM, so libfaketime's exit handler removes its /dev/shm segment and semaphore."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.clock_dir, ignore_errors=True)


# ----------------------------------------------------------------------------- the world

# The test's own read-only view of the database: TIME, then every key SCAN finds
# with its type, PTTL and content (one round trip per step instead of three).
_DUMP_SCRIPT: Final = """
local prefix = ARGV[1]
local readers = {hash = 'HGETALL', zset = 'ZRANGE', string = 'GET', set = 'SMEMBERS'}
local function kind_by_name(key)
  if key == ARGV[2] then return 'set' end
  if key == ARGV[3] then return 'hash' end  -- the id registry
  if string.sub(key, 1, #ARGV[4]) == ARGV[4] then return 'hash' end  -- planted records
  if string.sub(key, 1, #prefix) ~= prefix then return nil end
  local rest = string.sub(key, #prefix + 1)
  if rest == 'due' or rest == 'active' or rest == 'dlq' then return 'zset' end
  if string.find(rest, '^job:') or string.find(rest, '^debounce:') then return 'hash' end
  if string.find(rest, '^unique:') or string.find(rest, '^rate_limit:') then return 'string' end
  return nil
end
local t = redis.call('TIME')
local out = {}
local cursor = '0'
repeat
  local page = redis.call('SCAN', cursor, 'COUNT', 1000)
  cursor = page[1]
  for _, key in ipairs(page[2]) do
    -- The type the name implies, read with its command; TYPE only when that fails.
    local kind = kind_by_name(key)
    local value = false
    if kind then
      if kind == 'zset' then
        value = redis.pcall('ZRANGE', key, 0, -1, 'WITHSCORES')
      else
        value = redis.pcall(readers[kind], key)
      end
      if type(value) == 'table' and value['err'] then value = false end
      if kind == 'string' and value then value = {value} end
    end
    if not value then
      kind = redis.call('TYPE', key)['ok']
      value = {}
    end
    table.insert(out, {key, kind, redis.call('PTTL', key), value})
  end
until cursor == '0'
return {t[1], t[2], out}
"""


@dataclass
class Stats:
    examples: int = 0
    steps: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)


class Env:
    """One Redis, one asyncio loop driving rrq.store.Store, a sync client for snapshots."""

    def __init__(self, server: FakeClockRedis) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self.aredis = aioredis.Redis(unix_socket_path=str(server.socket_path))
        self.store = Store(self.aredis)
        self.redis = redis.Redis(unix_socket_path=str(server.socket_path))
        self.dump_sha: str = self.redis.script_load(_DUMP_SCRIPT)
        self.stats = Stats()
        self.current: World | None = None

    def redis_now_ms(self) -> int:
        seconds, micros = self.redis.time()
        return int(seconds) * 1000 + int(micros) // 1000

    def set_time(self, ms: int) -> None:
        """Moves Redis's clock and checks that TIME follows (no silent fallback)."""
        self.server.set_time(ms)
        seen = self.redis_now_ms()
        if seen != ms:
            raise AssertionError(
                f"redis TIME is {seen} ms, the faketime file says {ms} ms: "
                "libfaketime is not controlling redis-server"
            )

    def verify_clock(self) -> None:
        """The start-of-test check: TIME is frozen at the file's value and follows each rewrite."""
        for ms in (T0_MS, T0_MS + 1_234, T0_MS + 86_400_007, T0_MS):
            self.set_time(ms)
        first = self.redis_now_ms()
        self.redis.ping()
        if self.redis_now_ms() != first:
            raise AssertionError("redis TIME moved on its own: the faketime clock is not frozen")
        self.redis.set("f29:probe", "1", px=1_000)
        self.set_time(T0_MS + 1_000)
        assert self.redis.exists("f29:probe") == 1, "a key must live up to its expiry time"
        self.set_time(T0_MS + 1_001)
        assert self.redis.exists("f29:probe") == 0, "redis key expiry does not follow the file"
        self.set_time(T0_MS)

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def new_world(self, tolerate: frozenset[str] = KNOWN_BUGS, *, count: bool = True) -> World:
        self.redis.flushall()
        self.set_time(T0_MS)
        world = World(self, tolerate)
        if count:
            self.current = world
            self.stats.examples += 1
        return world

    def replay(
        self, steps: list[dict[str, Any]], tolerate: frozenset[str] = KNOWN_BUGS
    ) -> InvariantError | None:
        """Runs a recorded sequence in a fresh world; the first violation, if any."""
        world = self.new_world(tolerate, count=False)
        try:
            for step in steps:
                world.step(step["op"], {k: v for k, v in step.items() if k != "op"})
        except InvariantError as exc:
            return exc
        return None

    def minimize(self, steps: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
        """Deletes steps while the replay still fails at the same operation (1-minimal).

        Hypothesis shrinks first; this finishes the job on the recorded steps,
        which Hypothesis cannot always cut (a step's draws shape later ones).
        """
        failure = self.replay(steps)
        if failure is None:
            return steps, "did not fail again on replay (flaky?)"
        changed = True
        while changed:
            changed = False
            for i in reversed(range(len(steps))):
                candidate = steps[:i] + steps[i + 1 :]
                result = self.replay(candidate)
                if result is not None and result.op == failure.op:
                    steps, failure, changed = candidate, result, True
        return steps, str(failure)

    def close(self) -> None:
        self.run(self.store.aclose())
        self.run(self.aredis.aclose())
        self.loop.close()
        self.redis.close()


class InvariantError(AssertionError):
    """A reply or a database state the model and the invariants reject, at one step."""

    def __init__(self, message: str, op: str) -> None:
        super().__init__(message)
        self.op = op


@dataclass
class Allowed:
    """Which documented exceptions to the transition invariants one step may use."""

    attempt_back_by_one: set[str] = field(default_factory=set)  # settle release
    revive: set[str] = field(default_factory=set)  # dlq_requeue: FAILED -> PENDING, attempt 0
    unchanged: bool = False  # a stale fence: the database must not change at all
    only_active_scores: set[str] | None = None  # renew_lease: these leases may move


class World:
    """The real Redis and the model, stepped together; every check runs after every step."""

    def __init__(self, env: Env, tolerate: frozenset[str]) -> None:
        self.env = env
        self.tolerate = tolerate
        self.model = LuaModel(QUEUE, T0_MS, tolerate=tolerate)
        self.redis_ms = 0
        self.trace: list[dict[str, Any]] = []
        self.snap: Snapshot = self.snapshot()
        self._check(self.snap, None, Allowed(), "start", "start")

    # ------------------------------------------------------------ stepping

    def step(self, op: str, args: Mapping[str, Any]) -> None:
        self.trace.append({"op": op, **args})
        self.env.stats.steps += 1
        handler: Callable[..., tuple[Any, Any, Allowed]] = getattr(self, f"_op_{op}")
        expected, actual, allowed = handler(**args)
        where = f"step {len(self.trace)} {op}({_args_text(args)})"
        if normalize(actual) != expected:
            raise InvariantError(f"{where}: reply {normalize(actual)!r} != model {expected!r}", op)
        after = self.snapshot()
        self._check(after, self.snap, allowed, where, op)
        self.snap = after
        self.env.stats.outcomes[_outcome(op, args, expected)] += 1

    def _call(
        self, model_call: Callable[[], Any], store_call: Callable[[], Any]
    ) -> tuple[Any, Any]:
        try:
            expected = model_call()
        except ScriptError as exc:
            expected = ["error", exc.kind]
        try:
            actual = self.env.run(store_call())
        except RRQError as exc:
            actual = ["error", type(exc).__name__]
        return expected, actual

    # ---------------------------------------------------------- operations

    def _op_enqueue(
        self,
        job: str,
        redirect: bool,
        variant: str,
        params: str,
        max_retries: int,
        result_ttl_ms: int,
        job_timeout_ms: int,
        defer_ms: int,
        run_at_in: int | None,
        rule: str,
        rule_key: str,
        window_ms: int,
        max_wait_ms: int,
        trace_parent: str,
        registered: bool = False,
    ) -> tuple[Any, Any, Allowed]:
        job = self._target(job, redirect, None)
        call = EnqueueCall(
            job_id=job,
            params_json=params,
            max_retries=max_retries,
            job_timeout_ms=job_timeout_ms,
            result_ttl_ms=result_ttl_ms,
            defer_ms=defer_ms,
            run_at_ms=0 if run_at_in is None else self.model.now + run_at_in,
            max_params_bytes=MAX_PARAMS_BYTES,
            trace_parent=trace_parent,
            rule=rule,
            rule_key=rule_key if rule else "",
            rule_window_ms=window_ms if rule else 0,
            debounce_max_wait_ms=max_wait_ms if rule == "debounce" else 0,
            registered_id=registered and rule != "debounce",
        )
        call = _apply_variant(call, variant)
        args = _store_args(call)

        async def store_call() -> list[Any]:
            reply = await self.env.store.enqueue(args, register_queue=True)
            return [reply.code, reply.job_id, reply.value]

        def model_call() -> list[Any]:
            # As Store.enqueue does: a {6, key} reply is asked again with the key.
            reply = self.model.enqueue(call)
            if reply[0] == 6:
                call.holder = reply[1]
                reply = self.model.enqueue(call)
            return reply

        expected, actual = self._call(model_call, store_call)
        return expected, actual, Allowed()

    def _op_plant_foreign(
        self, job: str, status: int, registered: bool
    ) -> tuple[Any, Any, Allowed]:
        """Another queue's record of ``job`` (and, maybe, its registry entry),
        written straight into Redis: what a producer of that queue leaves."""
        key = f"rrq:{{{OTHER_QUEUE}}}:job:{job}"
        self.model.foreign[key] = status
        writes: list[tuple[str, ...]] = [("HSET", key, "status", str(status))]
        if registered:
            self.model.ids[job] = key
            writes.append(("HSET", DEFAULT_KEYS.ids, job, key))
        self.env.run(self.env.store._read_pipelined(writes))
        return None, None, Allowed()

    def _op_drop_foreign(self, job: str) -> tuple[Any, Any, Allowed]:
        """The other queue's record of ``job`` expires (its registry entry stays)."""
        key = f"rrq:{{{OTHER_QUEUE}}}:job:{job}"
        self.model.foreign.pop(key, None)
        self.env.run(self.env.store.redis.delete(key))
        return None, None, Allowed()

    def _op_forget_ids(self, stale_pair: bool) -> tuple[Any, Any, Allowed]:
        """forget_ids.lua on every registry entry (as the orchestrator's sweep
        passes them), plus maybe a pair whose key the registry no longer holds."""
        pairs = sorted(self.model.ids.items())
        if stale_pair and pairs:
            pairs.append((pairs[0][0], f"rrq:{{{OTHER_QUEUE}}}:job:stale"))
        keys = [DEFAULT_KEYS.ids, *(key for _, key in pairs)]
        argv = [job_id for job_id, _ in pairs]
        expected, actual = self._call(
            lambda: self.model.forget_ids(pairs),
            lambda: self.env.store._run("forget_ids", keys, argv),
        )
        return expected, actual, Allowed()

    def _op_enqueue_many(
        self, jobs: list[str], params: list[str], variant: str, max_retries: int, defer_ms: int
    ) -> tuple[Any, Any, Allowed]:
        """Several plain jobs sharing their options in one enqueue.lua call (enqueue_many)."""
        texts = [params[i % len(params)] for i in range(len(jobs))]
        if variant == "too_large_later":
            texts[-1] = BIG_PARAMS
        elif variant == "bad_json_later":
            texts[-1] = "{oops"
        elif variant == "negative_retries":
            max_retries = -1
        call = EnqueueCall(
            job_id=jobs[0],
            params_json=texts[0],
            max_retries=max_retries,
            defer_ms=defer_ms,
            max_params_bytes=MAX_PARAMS_BYTES,
        )
        more = list(zip(jobs[1:], texts[1:], strict=True))
        args = _store_args(call)
        keys, argv = _enqueue_call(DEFAULT_KEYS, args)
        for job_id, text in more:
            argv += [job_id, text]
        expected, actual = self._call(
            lambda: self.model.enqueue_many(call, more),
            lambda: self.env.store._run(
                "enqueue", keys, argv, before=[("SADD", (QUEUES_KEY, QUEUE))]
            ),
        )
        return expected, actual, Allowed()

    def _op_claim(self, owner: str, max_jobs: int, lease_ms: int) -> tuple[Any, Any, Allowed]:
        expected, actual = self._call(
            lambda: self.model.claim(owner, lease_ms, max_jobs),
            lambda: self.env.store.claim(QUEUE, owner=owner, lease_ms=lease_ms, max_jobs=max_jobs),
        )
        return expected, actual, Allowed()

    def _op_renew(
        self, owner: str, lease_ms: int, extra_job: str | None, extra_delta: int
    ) -> tuple[Any, Any, Allowed]:
        """The owner renews every lease the model says it holds, plus maybe one stale pair."""
        pairs = sorted(
            (j.id, j.attempt)
            for j in self.model.jobs.values()
            if j.status == ACTIVE and j.lease_owner == owner
        )
        if extra_job is not None:
            current = self.model.job(extra_job)
            pairs.append((extra_job, (current.attempt if current else 0) + extra_delta))
        held = {job for job, attempt in pairs if _holds(self.snap, job, attempt, owner)}
        argv: list[str | int] = [owner, lease_ms]
        for job, attempt in pairs:
            argv += [job, attempt]
        expected, actual = self._call(
            lambda: self.model.renew_lease(owner, lease_ms, pairs),
            lambda: self.env.store._run(
                "renew_lease", [active_key(QUEUE), job_key_prefix(QUEUE)], argv
            ),
        )
        return expected, actual, Allowed(unchanged=not held, only_active_scores=held)

    def _target(self, job: str, redirect: bool, wanted: Callable[[Job], bool] | None) -> str:
        """``job``; or, with ``redirect``, the first id from it on (cyclic) whose job is
        ``wanted`` (``None``: the first id with no job).

        Steers steps toward live jobs so that sequences reach deep states; the
        choice depends only on the model, so a recorded sequence replays exactly.
        """
        if not redirect:
            return job
        start = JOB_IDS.index(job)
        for i in range(len(JOB_IDS)):
            job_id = JOB_IDS[(start + i) % len(JOB_IDS)]
            candidate = self.model.job(job_id)
            if (candidate is None and wanted is None) or (
                candidate is not None and wanted is not None and wanted(candidate)
            ):
                return job_id
        return job

    def _settle_item(
        self, job: str, redirect: bool, fence: str, action: str, retry_delay_ms: int, traceback: str
    ) -> dict[str, Any]:
        """One settle's arguments, its fence taken from the model as it is now."""
        job = self._target(job, redirect, lambda j: j.status == ACTIVE)
        current = self.model.job(job)
        attempt = current.attempt if current else 0
        owner = (current.lease_owner if current else None) or OWNERS[0]
        if fence == "old_attempt":
            attempt -= 1
        elif fence == "next_attempt":
            attempt += 1
        elif fence == "other_owner":
            owner = OWNERS[1] if owner == OWNERS[0] else OWNERS[0]
        return {
            "job_id": job,
            "attempt": attempt,
            "owner": owner,
            "action": action,
            "payload": '{"r":1}' if action == "complete" else f"{action} by {owner}",
            "error_type": "" if action == "complete" else "ValueError",
            "traceback": traceback,
            "retry_delay_ms": retry_delay_ms,
        }

    def _op_settle(self, **spec: Any) -> tuple[Any, Any, Allowed]:
        """One settle, as settle.lua's batch of one."""
        return self._op_settle_batch([spec])

    def _op_settle_batch(self, items: list[dict[str, Any]]) -> tuple[Any, Any, Allowed]:
        """Several settles in one settle.lua call, as the orchestrator sends them; every
        fence is read before the first applies, so a job named twice goes stale."""
        settles = [self._settle_item(**item) for item in items]
        batch = [
            SettleArgs(
                s["job_id"],
                s["attempt"],
                s["owner"],
                s["action"],
                s["payload"],
                s["error_type"],
                s["retry_delay_ms"],
                s["traceback"],
            )
            for s in settles
        ]
        expected, actual = self._call(
            lambda: self.model.settle_batch(settles, DEFAULT_RESULT_TTL_MS, DLQ_RETENTION_MS),
            lambda: self.env.store.settle_batch(
                QUEUE,
                batch,
                default_result_ttl_ms=DEFAULT_RESULT_TTL_MS,
                dlq_retention_ms=DLQ_RETENTION_MS,
            ),
        )
        if len(items) == 1 and expected[:1] != ["error"]:
            # A single settle's reply is its one triple (the recorded regressions).
            expected = expected[0]
            actual = actual[0] if isinstance(actual, list) and actual[:1] != ["error"] else actual
        holding = [_holds(self.snap, s["job_id"], s["attempt"], s["owner"]) for s in settles]
        allowed = Allowed(unchanged=not any(holding))
        allowed.attempt_back_by_one |= {s["job_id"] for s in settles if s["action"] == "release"}
        return expected, actual, allowed

    def _op_cancel(self, job: str, redirect: bool) -> tuple[Any, Any, Allowed]:
        job = self._target(job, redirect, lambda j: j.status not in TERMINAL)
        expected, actual = self._call(
            lambda: self.model.cancel(job, "stop", DEFAULT_RESULT_TTL_MS),
            lambda: self.env.store.cancel(
                QUEUE, job, reason="stop", default_result_ttl_ms=DEFAULT_RESULT_TTL_MS
            ),
        )
        return expected, normalize(actual), Allowed()

    def _op_recover(self, max_jobs: int) -> tuple[Any, Any, Allowed]:
        expected, actual = self._call(
            lambda: self.model.recover_expired(max_jobs, DLQ_RETENTION_MS, DEFAULT_RESULT_TTL_MS),
            lambda: self.env.store._run(
                "recover_expired",
                [active_key(QUEUE), due_key(QUEUE), dlq_key(QUEUE), job_key_prefix(QUEUE)],
                [
                    max_jobs,
                    DLQ_RETENTION_MS,
                    wake_channel(QUEUE),
                    done_channel_prefix(QUEUE),
                    DEFAULT_RESULT_TTL_MS,
                ],
            ),
        )
        return expected, actual, Allowed()

    def _op_dlq_requeue(self, ids: list[str], batch: int) -> tuple[Any, Any, Allowed]:
        expected, actual = self._call(
            lambda: self.model.dlq_requeue(list(ids), batch),
            lambda: self.env.store.dlq_requeue(QUEUE, ids, batch=batch),
        )
        return expected, normalize(actual), Allowed(revive=set(_dlq_members(self.snap)))

    def _op_dlq_purge(self, ids: list[str], batch: int) -> tuple[Any, Any, Allowed]:
        expected, actual = self._call(
            lambda: self.model.dlq_purge(list(ids), batch),
            lambda: self.env.store.dlq_purge(QUEUE, ids, batch=batch),
        )
        return expected, actual, Allowed()

    def _op_advance(self, ms: int) -> tuple[Any, Any, Allowed]:
        self.model.advance(ms)
        self.env.server.set_time(self.model.now)  # the snapshot after the step checks TIME
        return None, None, Allowed()

    # ------------------------------------------------------------ checking

    def snapshot(self) -> Snapshot:
        """Every key in the database (SCAN), with its type, PTTL and content, in one round trip.

        Also reads Redis TIME, which must be the model's clock (``self.redis_ms``).
        """
        reply = self.env.redis.evalsha(
            self.env.dump_sha,
            0,
            f"rrq:{{{QUEUE}}}:",
            QUEUES_KEY,
            DEFAULT_KEYS.ids,
            f"rrq:{{{OTHER_QUEUE}}}:job:",
        )
        seconds, micros, entries = reply
        self.redis_ms = int(seconds) * 1000 + int(micros) // 1000
        snap: Snapshot = {}
        for key, kind, ttl, raw in entries:
            snap[key.decode()] = (kind.decode(), int(ttl), _decode_value(kind.decode(), raw))
        return snap

    def _check(
        self, snap: Snapshot, before: Snapshot | None, allowed: Allowed, where: str, op: str
    ) -> None:
        problems = structure_violations(snap, QUEUE, self.redis_ms, self.tolerate)
        if self.redis_ms != self.model.now:
            problems.append(f"redis TIME {self.redis_ms} != the model's clock {self.model.now}")
        if before is not None:
            problems += transition_violations(before, snap, allowed)
        expected = self.model.snapshot()
        if snap != expected:
            problems += [f"database differs from the model: {_diff(expected, snap)}"]
        if problems:
            raise InvariantError(f"{where}: " + "; ".join(problems), op)


def _store_args(call: EnqueueCall) -> EnqueueArgs:
    """The producer's arguments (rrq.store.EnqueueArgs) for the model's call."""
    return EnqueueArgs(
        job_id=call.job_id,
        function_name=call.function_name,
        queue_name=QUEUE,
        params_json=call.params_json,
        max_retries=call.max_retries,
        job_timeout_ms=call.job_timeout_ms,
        result_ttl_ms=call.result_ttl_ms,
        defer_ms=call.defer_ms,
        run_at_ms=call.run_at_ms,
        max_params_bytes=call.max_params_bytes,
        trace_parent=call.trace_parent,
        trace_state=call.trace_state,
        rule=call.rule,
        rule_key=call.rule_key,
        rule_window_ms=call.rule_window_ms,
        debounce_max_wait_ms=call.debounce_max_wait_ms,
        registered_id=call.registered_id,
    )


def _apply_variant(call: EnqueueCall, variant: str) -> EnqueueCall:
    """The invalid enqueues: each must be rejected with its typed error, writing nothing."""
    if variant == "too_large":
        call.params_json = BIG_PARAMS
    elif variant == "params_array":
        call.params_json = "[1]"
    elif variant == "params_bad_json":
        call.params_json = "{oops"
    elif variant == "no_function":
        call.function_name = ""
    elif variant == "negative_retries":
        call.max_retries = -1
    elif variant == "zero_window" and call.rule:
        call.rule_window_ms = 0
    elif variant == "huge_retries":
        call.max_retries = MAX_RETRIES + 1
    elif variant == "huge_ttl":
        call.result_ttl_ms = 10**17  # a PEXPIRE Redis refuses
    elif variant == "huge_defer":
        call.defer_ms = MAX_DURATION_MS + 1
    elif variant == "huge_window" and call.rule:
        call.rule_window_ms = 2**62
    elif variant == "far_run_at":
        call.run_at_ms = 2**60
    return call


_ENQUEUE_CODES: Final = (
    "exists",
    "created",
    "unique_held",
    "rate_limited",
    "debounced",
    "exists_in_queue",
)


def _outcome(op: str, args: Mapping[str, Any], reply: Any) -> str:
    """A coarse label of what a step did, for the coverage line."""
    if isinstance(reply, list) and reply[:1] == ["error"]:
        return f"{op}:error"
    if op == "enqueue":
        return f"enqueue:{_ENQUEUE_CODES[reply[0]]}"
    if op == "enqueue_many":
        return f"enqueue_many:{sum(1 for s in reply[1:] if s == 0)}_created"
    if op == "claim":
        return f"claim:{min(len(reply) - 2, 2)}"
    if op == "renew":
        return f"renew:lost={bool(reply[0])}:cancel={bool(reply[1])}"
    if op == "settle":
        return f"settle:{args['action']}:{'stale' if reply[0] == 0 else reply[1]}"
    if op == "settle_batch":
        return f"settle_batch:{sum(1 for r in reply if r[0] == 1)}_applied"
    if op == "cancel":
        return f"cancel:{reply[0]}"
    if op == "recover":
        return "recover:" + (",".join(k for k, n in zip("rdc", reply, strict=True) if n) or "none")
    if op in ("dlq_requeue", "dlq_purge"):
        return f"{op}:{'some' if reply not in ([0, 0], 0) else 'none'}"
    return op


def _args_text(args: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in args.items())


def _expected_type(key: str) -> str | None:
    if key == QUEUES_KEY:
        return "set"
    if key == DEFAULT_KEYS.ids or key.startswith(f"rrq:{{{OTHER_QUEUE}}}:job:"):
        return "hash"
    if key.startswith((job_key_prefix(QUEUE), debounce_key_prefix(QUEUE))):
        return "hash"
    if key in (due_key(QUEUE), active_key(QUEUE), dlq_key(QUEUE)):
        return "zset"
    prefix = f"rrq:{{{QUEUE}}}:"
    if key.startswith((prefix + "unique:", prefix + "rate_limit:")):
        return "string"
    return None


def _decode_value(kind: str, raw: list[Any]) -> Any:
    """A key's content from the dump script's flat reply."""
    items = [v.decode() if isinstance(v, bytes) else v for v in raw]
    if kind == "hash":
        fields = dict(zip(items[::2], items[1::2], strict=True))
        if "errors_json" in fields:
            fields["errors_json"] = json.loads(fields["errors_json"])
        return fields
    if kind == "zset":
        out: dict[str, int] = {}
        for member, score in zip(items[::2], items[1::2], strict=True):
            if not float(score).is_integer():
                return f"<non-integer score {score} for {member}>"
            out[member] = int(float(score))
        return out
    if kind == "set":
        return tuple(sorted(items))
    if kind == "string":
        return items[0]
    return items


def _diff(expected: Snapshot, actual: Snapshot) -> str:
    parts = []
    for key in sorted(set(expected) | set(actual)):
        e, a = expected.get(key), actual.get(key)
        if e != a:
            parts.append(f"{key}: model={e!r} redis={a!r}")
    return " | ".join(parts)


# ----------------------------------------------------------------------------- invariants


def _jobs(snap: Snapshot, queue: str) -> dict[str, tuple[int, dict[str, Any]]]:
    prefix = job_key_prefix(queue)
    return {
        key[len(prefix) :]: (ttl, value)
        for key, (kind, ttl, value) in snap.items()
        if key.startswith(prefix) and kind == "hash" and isinstance(value, dict)
    }


def _zset(snap: Snapshot, key: str) -> dict[str, int]:
    entry = snap.get(key)
    return dict(entry[2]) if entry is not None and isinstance(entry[2], dict) else {}


def _dlq_members(snap: Snapshot) -> list[str]:
    return list(_zset(snap, dlq_key(QUEUE)))


def _attempt(fields: Mapping[str, Any]) -> int:
    return int(fields.get("attempt", 0))  # 0 is not stored


def _run_at(fields: Mapping[str, Any]) -> int:
    return int(fields.get("run_at_ms", fields["enqueued_at_ms"]))  # not stored when due at once


def _holds(snap: Snapshot, job: str, attempt: int, owner: str) -> bool:
    """The fence, read from the database itself (not from the model)."""
    record = _jobs(snap, QUEUE).get(job)
    if record is None:
        return False
    fields = record[1]
    return (
        fields.get("status") == str(ACTIVE)
        and _attempt(fields) == attempt
        and fields.get("lease_owner") == owner
    )


def structure_violations(
    snap: Snapshot, queue: str, now: int, tolerate: frozenset[str] = frozenset()
) -> list[str]:
    """What must hold of any database state, whatever the history."""
    problems = []
    for key, (kind, ttl, _) in snap.items():
        wanted = _expected_type(key)
        if wanted is None:
            problems.append(f"orphan key {key} ({kind})")
        elif kind != wanted:
            problems.append(f"{key} is a {kind}, not a {wanted}")
        elif key.startswith(f"rrq:{{{queue}}}:") and not key.startswith(job_key_prefix(queue)):
            is_zset = kind == "zset"
            if is_zset and ttl != -1:
                problems.append(f"{key} has a TTL")
            if not is_zset and ttl < 0:
                problems.append(f"rule key {key} has no TTL")
    due, active, dlq = (_zset(snap, k(queue)) for k in (due_key, active_key, dlq_key))
    jobs = _jobs(snap, queue)
    for job, (ttl, f) in jobs.items():
        status, attempt, run_at = int(f["status"]), _attempt(f), _run_at(f)
        where = f"job {job} (status {status}, attempt {attempt})"
        if "id" in f or "queue_name" in f:
            problems.append(f"{where}: the hash repeats its key's id or queue")
        if f.get("attempt") == "0":
            problems.append(f"{where}: attempt 0 is stored (it is the default)")
        stale_dlq = job in dlq and dlq[job] < int(f["enqueued_at_ms"])
        places = [name for name, z in (("due", due), ("active", active)) if job in z]
        if job in dlq and not stale_dlq:
            places.append("dlq")
        wanted_places = (
            ["due"]
            if status in WAITING
            else ["active"]
            if status == ACTIVE
            else ["dlq"]
            if status == FAILED
            else []
        )
        if places != wanted_places:
            problems.append(f"{where}: in {places}, must be in {wanted_places}")
        if status in WAITING and job in due and due[job] != run_at:
            problems.append(f"{where}: due score {due[job]} != run_at_ms {run_at}")
        if status == FAILED and job in dlq and dlq[job] != int(f.get("finished_at_ms", -1)):
            problems.append(f"{where}: dlq score {dlq[job]} != finished_at_ms")
        if status == ACTIVE:
            if "lease_owner" not in f or attempt < 1:
                problems.append(f"{where}: ACTIVE without an owner or a fence")
            if job in active and active[job] < int(f.get("started_at_ms", 0)):
                problems.append(f"{where}: lease deadline before its start")
        if (status in TERMINAL) != (ttl >= 0):
            problems.append(f"{where}: TTL {ttl} (only finished records expire)")
        if status in TERMINAL and "finished_at_ms" not in f:
            problems.append(f"{where}: finished without finished_at_ms")
        if status == COMPLETED and "result_json" not in f:
            problems.append(f"{where}: COMPLETED without result_json")
        if attempt > int(f["max_retries"]) + 1:
            problems.append(f"{where}: attempt beyond max_retries + 1")
    if "debounce-pointer-ttl" not in tolerate:
        problems += _debounce_window_violations(snap, queue, now, jobs)
    for name, zset, statuses in (("due", due, WAITING), ("active", active, {ACTIVE})):
        for job in zset:
            if job not in jobs or int(jobs[job][1]["status"]) not in statuses:
                problems.append(f"{name} holds {job}, which is not {sorted(statuses)}")
    return problems


def _debounce_window_violations(
    snap: Snapshot, queue: str, now: int, jobs: Mapping[str, tuple[int, dict[str, Any]]]
) -> list[str]:
    """An open debounce window's pointer lives at least until its job's run time."""
    problems = []
    prefix = debounce_key_prefix(queue)
    for key, (_, ttl, pointer) in snap.items():
        if not key.startswith(prefix) or not isinstance(pointer, dict):
            continue
        record = jobs.get(pointer.get("job_id", ""))
        if record is None:
            continue
        f = record[1]
        window_open = (
            f["status"] == str(PENDING)
            and _attempt(f) == 0
            and f.get("debounce_key") == key[len(prefix) :]
        )
        if window_open and ttl >= 0 and now + ttl < _run_at(f):
            problems.append(
                f"debounce pointer {key} expires at {now + ttl}, before its job "
                f"{pointer['job_id']} runs at {_run_at(f)}: the next call would open a "
                "second window"
            )
    return problems


def transition_violations(before: Snapshot, after: Snapshot, allowed: Allowed) -> list[str]:
    """What must hold of any one step."""
    if allowed.unchanged and after != before:
        return [f"a stale fence changed the database: {_diff(before, after)}"]
    problems = []
    if allowed.only_active_scores is not None:
        moved = _zset(after, active_key(QUEUE))
        frozen = {k: v for k, v in before.items() if k != active_key(QUEUE)}
        if {k: v for k, v in after.items() if k != active_key(QUEUE)} != frozen:
            problems.append("renew_lease changed more than lease deadlines")
        for job, score in _zset(before, active_key(QUEUE)).items():
            if job not in allowed.only_active_scores and moved.get(job) != score:
                problems.append(f"renew_lease moved the lease of {job}, which it does not hold")
    old_jobs, new_jobs = _jobs(before, QUEUE), _jobs(after, QUEUE)
    for job in old_jobs.keys() & new_jobs.keys():
        (_, old), (_, new) = old_jobs[job], new_jobs[job]
        old_attempt, new_attempt = _attempt(old), _attempt(new)
        old_status = int(old["status"])
        revived = job in allowed.revive and old_status == FAILED
        if new_attempt < old_attempt and not (
            (job in allowed.attempt_back_by_one and new_attempt == old_attempt - 1)
            or (revived and new_attempt == 0)
        ):
            problems.append(f"job {job}: attempt went {old_attempt} -> {new_attempt}")
        if old_status in TERMINAL and new != old and not revived:
            problems.append(f"job {job}: terminal record changed: {old} -> {new}")
    return problems


# ----------------------------------------------------------------------------- the state machine

_ENQUEUE_VARIANTS = ["ok"] * 60 + [
    "too_large",
    "params_array",
    "params_bad_json",
    "no_function",
    "negative_retries",
    "zero_window",
    # Ranges (rust/rrq-store/limits.toml): refused before the first write.
    "huge_retries",
    "huge_ttl",
    "huge_defer",
    "huge_window",
    "far_run_at",
]
_IDS = st.sampled_from(JOB_IDS)
_ID_LISTS = st.lists(_IDS, max_size=2)
_MOSTLY_TRUE = st.sampled_from([True, True, True, False])
PLAIN_ENQUEUE: Final[Mapping[str, Any]] = {
    "redirect": False,
    "variant": "ok",
    "params": "{}",
    "result_ttl_ms": 0,
    "job_timeout_ms": 0,
    "defer_ms": 0,
    "run_at_in": None,
    "rule": "",
    "rule_key": RULE_KEYS[0],
    "window_ms": 500,
    "max_wait_ms": 0,
    "trace_parent": "",
}

_SETTLE_ITEM: Final = st.fixed_dictionaries(
    {
        "job": _IDS,
        "redirect": _MOSTLY_TRUE,
        "fence": st.sampled_from(
            ["current", "current", "current", "old_attempt", "next_attempt", "other_owner"]
        ),
        "action": st.sampled_from(
            ["complete", "retry", "fail", "cancel", "release"] * 4 + ["explode"]
        ),
        "retry_delay_ms": st.sampled_from([0, 500, 5000, 10**18]),
        "traceback": st.sampled_from(["", "tb"]),
    }
)

# Each operation: its weight, when it may run (on the model), and its arguments.
# One rule draws the operation, so these weights (not Hypothesis's per-rule
# swarm switches) decide the mix, and steps go where the jobs are.
OPERATIONS: Final[Mapping[str, tuple[int, Callable[[LuaModel], bool], st.SearchStrategy[Any]]]] = {
    "enqueue": (
        4,
        lambda m: True,
        st.fixed_dictionaries(
            {
                "job": _IDS,
                "redirect": _MOSTLY_TRUE,
                "variant": st.sampled_from(_ENQUEUE_VARIANTS),
                "params": st.sampled_from(["{}", '{"n":1}', '{"n":2}']),
                "max_retries": st.sampled_from([0, 1, 2]),
                "result_ttl_ms": st.sampled_from([0, 1000, 10_000]),
                "job_timeout_ms": st.sampled_from([0, 30_000]),
                "defer_ms": st.sampled_from([0, 0, 0, 0, 1, 1000, 5000]),
                "run_at_in": st.sampled_from([None, None, None, None, -1000, 0, 2000]),
                "rule": st.sampled_from(["", "", "unique", "rate_limit", "debounce"]),
                "rule_key": st.sampled_from([RULE_KEYS[0], RULE_KEYS[0], RULE_KEYS[1]]),
                "window_ms": st.sampled_from([500, 2000, 60_000, 3_600_000]),
                "max_wait_ms": st.sampled_from([0, 1000, 3000]),
                "trace_parent": st.sampled_from(["", "00-tp-01"]),
                "registered": st.booleans(),
            }
        ),
    ),
    "enqueue_many": (
        2,
        lambda m: True,
        st.fixed_dictionaries(
            {
                "jobs": st.lists(_IDS, min_size=2, max_size=4),
                "params": st.lists(st.sampled_from(["{}", '{"n":1}', '{"n":2}']), min_size=1),
                "variant": st.sampled_from(
                    ["ok"] * 6 + ["too_large_later", "bad_json_later", "negative_retries"]
                ),
                "max_retries": st.sampled_from([0, 1, 2]),
                "defer_ms": st.sampled_from([0, 0, 1000]),
            }
        ),
    ),
    "claim": (
        3,
        lambda m: bool(m.due),
        st.fixed_dictionaries(
            {
                "owner": st.sampled_from(OWNERS),
                "max_jobs": st.sampled_from([1, 2, 10]),
                "lease_ms": st.sampled_from([1000, 3000]),
            }
        ),
    ),
    "settle": (
        4,
        lambda m: bool(m.active),
        _SETTLE_ITEM,
    ),
    "settle_batch": (
        2,
        lambda m: bool(m.active),
        st.fixed_dictionaries({"items": st.lists(_SETTLE_ITEM, min_size=2, max_size=4)}),
    ),
    "renew": (
        2,
        lambda m: bool(m.active),
        st.fixed_dictionaries(
            {
                "owner": st.sampled_from(OWNERS),
                "lease_ms": st.sampled_from([1000, 3000]),
                "extra_job": st.one_of(st.none(), _IDS),
                "extra_delta": st.sampled_from([0, -1, 1]),
            }
        ),
    ),
    "cancel": (
        1,
        lambda m: bool(m.jobs),
        st.fixed_dictionaries({"job": _IDS, "redirect": _MOSTLY_TRUE}),
    ),
    "recover": (
        2,
        lambda m: bool(m.active),
        st.fixed_dictionaries({"max_jobs": st.sampled_from([1, 10])}),
    ),
    "dlq_requeue": (
        1,
        lambda m: bool(m.dlq),
        st.fixed_dictionaries({"ids": _ID_LISTS, "batch": st.sampled_from([0, 1, 10])}),
    ),
    "dlq_purge": (
        1,
        lambda m: bool(m.dlq),
        st.fixed_dictionaries({"ids": _ID_LISTS, "batch": st.sampled_from([0, 1, 10])}),
    ),
    "plant_foreign": (
        1,
        lambda m: True,
        st.fixed_dictionaries(
            {"job": _IDS, "status": st.sampled_from([1, 4]), "registered": _MOSTLY_TRUE}
        ),
    ),
    "drop_foreign": (1, lambda m: bool(m.foreign), st.fixed_dictionaries({"job": _IDS})),
    "forget_ids": (
        1,
        lambda m: bool(m.ids),
        st.fixed_dictionaries({"stale_pair": st.booleans()}),
    ),
    "advance": (
        3,
        lambda m: True,
        st.fixed_dictionaries(
            {
                "ms": st.one_of(
                    st.sampled_from(
                        [1, 499, 500, 999, 1000, 1001, 2000, 3000, 4001, 5001, 10_001, 3_540_000]
                    ),
                    st.integers(1, 6_000),
                )
            }
        ),
    ),
}


_MENU: Final = st.sampled_from(
    [op for op, (weight, _, _) in OPERATIONS.items() for _ in range(weight)]
)


def make_machine(env: Env) -> type[RuleBasedStateMachine]:
    class F29Machine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.world = env.new_world()

        @initialize(count=st.integers(0, len(JOB_IDS)), max_retries=st.sampled_from([0, 1, 2]))
        def seed(self, count: int, max_retries: int) -> None:
            """Starts most sequences with a few plain jobs due now."""
            for job in JOB_IDS[:count]:
                self.world.step(
                    "enqueue", {**PLAIN_ENQUEUE, "job": job, "max_retries": max_retries}
                )

        @rule(data=st.data())
        def operate(self, data: st.DataObject) -> None:
            model = self.world.model
            # One fixed menu, filtered: an operation keeps its identity whatever the
            # state, so the shrinker can delete earlier steps without renaming later ones.
            op = data.draw(_MENU.filter(lambda op: OPERATIONS[op][1](model)), label="op")
            args = data.draw(OPERATIONS[op][2], label=op)
            self.world.step(op, args)

    return F29Machine


# ----------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def f29_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    server = FakeClockRedis(tmp_path_factory.mktemp("f29-redis"))
    server.start(T0_MS)
    env = Env(server)
    try:
        env.verify_clock()
        yield env
    finally:
        with contextlib.suppress(Exception):
            env.close()
        server.stop()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def _save_counterexample(env: Env, trace: list[dict[str, Any]]) -> Path:
    """Minimizes the shrunk failing sequence and writes it as a regression case."""
    steps, reason = env.minimize(trace)
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    case = {"name": f"found-{int(time.time())}", "xfail": reason[:300], "steps": steps}
    path = WORK_DIR / f"counterexample-{int(time.time() * 1000)}.json"
    path.write_text(json.dumps(case, indent=1) + "\n", encoding="utf-8")
    if os.environ.get("RRQ_F29_RECORD") == "1":
        cases = json.loads(REGRESSIONS.read_text(encoding="utf-8"))
        cases.append(case)
        REGRESSIONS.write_text(json.dumps(cases, indent=1) + "\n", encoding="utf-8")
    return path


def run_model_test(env: Env, examples: int) -> dict[str, Any]:
    """Runs the state machine for ``examples`` examples; prints the checker line."""
    steps = _env_int("RRQ_F29_STEPS", 30)
    database = DirectoryBasedExampleDatabase(
        os.environ.get("RRQ_F29_DB", str(WORK_DIR / "hypothesis-db"))
    )
    config = settings(
        max_examples=examples,
        stateful_step_count=steps,
        deadline=None,
        derandomize=False,
        database=database,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    start_examples, start_steps = env.stats.examples, env.stats.steps
    started = time.monotonic()
    violations = 0
    saved: Path | None = None
    try:
        run_state_machine_as_test(make_machine(env), settings=config)
    except Exception:
        violations = 1
        if env.current is not None:
            saved = _save_counterexample(env, env.current.trace)
        raise
    finally:
        record = {
            "row": ROW,
            "examples": env.stats.examples - start_examples,
            "steps": env.stats.steps - start_steps,
            "max_examples": examples,
            "invariant_violations": violations,
            "seconds": round(time.monotonic() - started, 1),
            "counterexample": str(saved) if saved else None,
        }
        outcomes = env.stats.outcomes
        print(f"F29 outcomes: {json.dumps(dict(sorted(outcomes.items())))}")
        print("CHECKER " + json.dumps(record, sort_keys=True))
    return record


@pytest.mark.quick
def test_f29_model_quick(f29_env: Env, request: pytest.FixtureRequest) -> None:
    """100 examples: the default ``pytest`` run's share of F29."""
    full = [i for i in request.session.items if i.name == "test_f29_model_full"]
    if full:
        pytest.skip("test_f29_model_full runs in this session and covers it")
    record = run_model_test(f29_env, _env_int("RRQ_F29_QUICK_EXAMPLES", 100))
    assert record["invariant_violations"] == 0


@pytest.mark.timeout(900)
def test_f29_model_full(f29_env: Env) -> None:
    """F29: 1,000 examples (``RRQ_F29_EXAMPLES``) per run, about 60 s."""
    record = run_model_test(f29_env, _env_int("RRQ_F29_EXAMPLES", 1000))
    assert record["invariant_violations"] == 0


def _regression_cases() -> list[Any]:
    cases = json.loads(REGRESSIONS.read_text(encoding="utf-8"))
    params = []
    for case in cases:
        marks = []
        if case.get("xfail"):
            marks.append(pytest.mark.xfail(strict=True, reason=case["xfail"]))
        params.append(pytest.param(case["steps"], id=case["name"], marks=marks))
    return params


@pytest.mark.quick
@pytest.mark.parametrize("steps", _regression_cases())
def test_f29_regression(f29_env: Env, steps: list[dict[str, Any]]) -> None:
    """Replays a saved sequence (a shrunk counterexample or a hand-picked edge case)."""
    failure = f29_env.replay(steps, tolerate=frozenset())  # strict: no known bug tolerated
    assert failure is None, str(failure)
