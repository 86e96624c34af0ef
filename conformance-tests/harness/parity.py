"""Producer parity: every producer fixture makes the same calls; Redis must end up the same.

For each language with a ``producer_cmd``, on a fresh private Redis (no
orchestrator running), the calls of ``producer_calls.yaml`` run in order, one
fixture process per call. Each call's printed answer must match the file's
``expect`` (and the record its ``record`` expectations, if any). Then every key
in that Redis is read into a normalized snapshot, and the snapshot is compared
with the first language's (the reference, Python when selected), key by key and
field by field:

* job ids the producers generated (debounce, ``enqueue_many``) become
  ``<generated-N>``;
* ``enqueued_at_ms`` becomes the name of the call that enqueued the job;
* ``run_at_ms`` becomes ``enqueued+<ms>``, or ``last debounce call+<ms>`` for a
  debounced job (checked against the Redis times around that call), or stays
  absolute when it is more than a day away (``defer_until``);
* scores of ``due`` entries become ``run_at_ms`` when they equal the job's
  (its ``enqueued_at_ms`` when ``run_at_ms`` is not stored: due at once);
* TTLs become the expiry minus the holder job's ``enqueued_at_ms`` (its run time
  for a debounce pointer), rounded to seconds (``none`` without TTL);
* ``params_json`` and ``errors_json`` are compared as JSON values (a byte
  difference alone is reported as a note, not a failure).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import yaml
from common import Language, Result, decode_hash, start_redis, text

CALLS_FILE = Path(__file__).resolve().parent / "producer_calls.yaml"
CALL_TIMEOUT = 60.0
DAY_MS = 86_400_000
_JSON_FIELDS = ("params_json", "errors_json", "result_json")


@dataclass
class Call:
    name: str
    request: dict[str, Any]
    expect: dict[str, Any]
    record: dict[str, Any] = field(default_factory=dict)


@dataclass
class Run:
    """What one language's producer did."""

    outputs: dict[str, Any] = field(default_factory=dict)  # call name -> printed JSON
    windows: dict[str, tuple[int, int]] = field(default_factory=dict)  # Redis ms around it
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    snapshot: dict[str, Any] = field(default_factory=dict)


def load_calls() -> list[Call]:
    data = yaml.safe_load(CALLS_FILE.read_text(encoding="utf-8"))
    return [
        Call(
            str(c["name"]),
            dict(c["request"]),
            dict(c.get("expect") or {}),
            dict(c.get("record") or {}),
        )
        for c in data
    ]


def zset_items(client: redis.Redis, key: str) -> list[tuple[str, float]]:
    reply: Any = client.zrange(key, 0, -1, withscores=True)
    return [(text(member), float(score)) for member, score in reply]


def redis_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def run_call(language: Language, call: Call, dsn: str) -> Any:  # noqa: ANN401 - JSON
    assert language.producer_cmd is not None
    request = dict(call.request, redis_dsn=dsn)
    completed = subprocess.run(
        language.producer_cmd,
        cwd=language.directory,
        input=json.dumps(request, ensure_ascii=False),
        capture_output=True,
        text=True,
        timeout=CALL_TIMEOUT,
        check=False,
    )
    lines = [line for line in completed.stdout.splitlines() if line.strip()]
    if completed.returncode != 0 or not lines:
        stderr = completed.stderr.strip().splitlines()[-3:]
        raise RuntimeError(
            f"producer exited {completed.returncode} with output {completed.stdout.strip()[:200]!r}"
            f" {' | '.join(stderr)}"
        )
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError as exc:
        raise RuntimeError(f"producer printed no JSON: {lines[-1][:200]!r}") from exc


def check_output(call: Call, output: Any, run: Run) -> None:  # noqa: ANN401
    expect = call.expect
    if not isinstance(output, dict):
        run.problems.append(f"{call.name}: printed {output!r}, not a JSON object")
        return
    if "error" in expect:
        error = output.get("error")
        if not isinstance(error, dict):
            run.problems.append(f"{call.name}: expected an error ({expect['error']}), got {output}")
        elif error.get("type") != expect["error"]:
            run.notes.append(
                f"{call.name}: error type {error.get('type')!r} (Python's is {expect['error']!r})"
            )
        return
    if "error" in output:
        run.problems.append(
            f"{call.name}: expected job_id {expect.get('job_id')!r}, got error {output['error']}"
        )
        return
    if "job_ids" in expect:
        got_ids = output.get("job_ids")
        count = expect["job_ids"]
        if (
            not isinstance(got_ids, list)
            or len(got_ids) != count
            or len(set(got_ids)) != count
            or not all(isinstance(i, str) and i for i in got_ids)
        ):
            run.problems.append(f"{call.name}: expected {count} distinct job ids, got {got_ids!r}")
        return
    wanted, got = expect.get("job_id"), output.get("job_id", "<absent>")
    if wanted == "*":
        if not isinstance(got, str) or not got:
            run.problems.append(f"{call.name}: expected a generated job id, got {got!r}")
    elif got != wanted:
        run.problems.append(f"{call.name}: job_id = {got!r}, expected {wanted!r}")


def generated_ids(calls: list[Call], run: Run) -> dict[str, str]:
    """Placeholders for the job ids the producers generated, in call order."""
    explicit = {str(c.request.get("options", {}).get("job_id")) for c in calls}
    generated: dict[str, str] = {}
    for call in calls:
        output = run.outputs.get(call.name)
        if not isinstance(output, dict):
            continue
        # enqueue_many's ids are in params order, so the placeholders match
        # between languages job for job.
        many = output.get("job_ids")
        for job_id in [output.get("job_id"), *(many if isinstance(many, list) else [])]:
            if isinstance(job_id, str) and job_id not in explicit and job_id not in generated:
                generated[job_id] = f"<generated-{len(generated) + 1}>"
    return generated


def snapshot(client: redis.Redis, calls: list[Call], run: Run) -> dict[str, Any]:
    """Every key of the Redis, normalized (see the module docstring)."""
    generated = generated_ids(calls, run)

    def ids(text: str) -> str:
        for real, placeholder in generated.items():
            text = text.replace(real, placeholder)
        return text

    now = redis_ms(client)
    keys = sorted(k.decode() for k in client.scan_iter(count=1000))
    raw_jobs: dict[str, dict[str, str]] = {}
    for key in keys:
        if re.fullmatch(r"rrq:\{[^}]*\}:job:.*", key):
            raw_jobs[key.split(":job:", 1)[1]] = decode_hash(client.hgetall(key))

    def enqueued(job_id: str) -> int | None:
        value = raw_jobs.get(job_id, {}).get("enqueued_at_ms")
        return int(value) if value else None

    def run_at(job_id: str) -> int | None:
        value = raw_jobs.get(job_id, {}).get("run_at_ms")
        return int(value) if value else enqueued(job_id)  # not stored: due at once

    def ttl(key: str, holder: str | None) -> str:
        pttl = int(client.pttl(key))
        if pttl < 0:
            return "none"
        # A debounce pointer's expiry follows its job's run time, which each
        # call in the window moves by however long the calls took.
        anchor, what = (run_at, "run time") if ":debounce:" in key else (enqueued, "enqueue")
        at = anchor(holder) if holder else None
        if at is None:
            return f"~{round(pttl / 1000)}s from now"
        return f"{round((now + pttl - at) / 1000)}s after the holder's {what}"

    out: dict[str, Any] = {}
    for key in keys:
        kind = text(client.type(key))
        name = ids(key)
        if kind == "hash" and ":job:" in key:
            job_id = key.split(":job:", 1)[1]
            out[name] = {
                "type": kind,
                "ttl": ttl(key, None),
                "fields": normalize_job(raw_jobs[job_id], calls, run, ids),
            }
        elif kind == "hash":
            fields = decode_hash(client.hgetall(key))
            holder = fields.get("job_id")
            norm = {k: ids(v) for k, v in fields.items()}
            if "first_at_ms" in fields and holder and enqueued(holder) is not None:
                delta = int(fields["first_at_ms"]) - (enqueued(holder) or 0)
                norm["first_at_ms"] = f"enqueued+{delta}"
            out[name] = {"type": kind, "ttl": ttl(key, holder), "fields": norm}
        elif kind == "string":
            value = text(client.get(key) or b"")
            out[name] = {"type": kind, "ttl": ttl(key, value), "value": ids(value)}
        elif kind == "zset":
            members = {}
            for member, score in zset_items(client, key):
                due_at = run_at(member)
                members[ids(member)] = (
                    "run_at_ms"
                    if due_at and int(score) == due_at
                    else f"score {int(score)} (run_at_ms {due_at})"
                )
            out[name] = {"type": kind, "ttl": ttl(key, None), "members": members}
        elif kind == "set":
            members_list = sorted(ids(text(m)) for m in client.smembers(key))
            out[name] = {"type": kind, "ttl": ttl(key, None), "members": members_list}
        else:
            out[name] = {"type": kind}
    return out


def normalize_job(
    fields: Mapping[str, str], calls: list[Call], run: Run, ids: Callable[[str], str]
) -> dict[str, Any]:
    norm: dict[str, Any] = {}
    enqueued = int(fields.get("enqueued_at_ms", "0"))
    for name, value in fields.items():
        if name in _JSON_FIELDS:
            try:
                norm[name] = json.loads(value)
            except json.JSONDecodeError:
                norm[name] = f"<invalid JSON> {value}"
            norm[f"{name} (text)"] = value  # compared separately: a difference is a note
        elif name == "enqueued_at_ms":
            norm[name] = _call_at(int(value), run)
        elif name == "run_at_ms":
            norm[name] = _run_at(int(value), enqueued, fields, calls, run)
        else:
            norm[name] = ids(value)
    return norm


def _call_at(ms: int, run: Run) -> str:
    for call, (start, end) in run.windows.items():
        if start <= ms <= end:
            return f"during {call}"
    return f"{ms} (outside every call)"


def _run_at(
    run_at: int, enqueued: int, fields: Mapping[str, str], calls: list[Call], run: Run
) -> str:
    delta = run_at - enqueued
    if abs(delta) > DAY_MS:
        return f"absolute {run_at}"
    key = fields.get("debounce_key")
    if key:
        last = [
            c
            for c in calls
            if c.request.get("method") == "enqueue_with_debounce"
            and c.request.get("options", {}).get("debounce_key") == key
            and c.name in run.windows
        ]
        if last:
            window = round(float(last[-1].request["options"]["debounce_seconds"]) * 1000)
            start, end = run.windows[last[-1].name]
            if start <= run_at - window <= end:
                return f"during {last[-1].name}+{window}"
    return f"enqueued+{delta}"


def check_records(calls: list[Call], run: Run) -> None:
    """The calls' ``record`` expectations, against the normalized job records."""
    for call in calls:
        if not call.record:
            continue
        output = run.outputs.get(call.name)
        job_id = output.get("job_id") if isinstance(output, dict) else None
        queue = call.request.get("options", {}).get("queue_name", "default")
        entry = run.snapshot.get(f"rrq:{{{queue}}}:job:{job_id}")
        if not isinstance(entry, dict):
            run.problems.append(f"{call.name}: no job record for {job_id!r} in queue {queue!r}")
            continue
        for name, wanted in call.record.items():
            got = entry["fields"].get(name, "<absent>")
            if got != wanted:
                run.problems.append(f"{call.name}: record {name} = {got!r}, expected {wanted!r}")


def diff(reference: Any, other: Any, path: str = "") -> list[str]:  # noqa: ANN401
    if isinstance(reference, dict) and isinstance(other, dict):
        out: list[str] = []
        for key in sorted(set(reference) | set(other), key=str):
            where = f"{path}.{key}" if path else str(key)
            if key not in other:
                shown = json.dumps(reference[key], ensure_ascii=False)[:120]
                out.append(f"{where}: missing (reference: {shown})")
            elif key not in reference:
                out.append(f"{where}: extra ({json.dumps(other[key], ensure_ascii=False)[:120]})")
            else:
                out += diff(reference[key], other[key], where)
        return out
    if reference != other:
        return [
            f"{path}: {json.dumps(other, ensure_ascii=False)[:160]} "
            f"(reference: {json.dumps(reference, ensure_ascii=False)[:160]})"
        ]
    return []


def run_language(language: Language, calls: list[Call], workdir: Path) -> Run:
    run = Run()
    server = start_redis(workdir / language.name)
    try:
        client = redis.Redis.from_url(server.dsn)
        try:
            for call in calls:
                start = redis_ms(client)
                try:
                    output = run_call(language, call, server.dsn)
                except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
                    run.problems.append(f"{call.name}: {exc}")
                    continue
                finally:
                    run.windows[call.name] = (start, redis_ms(client))
                run.outputs[call.name] = output
                check_output(call, output, run)
            run.snapshot = snapshot(client, calls, run)
            check_records(calls, run)
        finally:
            client.close()
    finally:
        server.stop()
    return run


def run_producer_parity(languages: list[Language], workdir: Path) -> dict[str, Result]:
    calls = load_calls()
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Result] = {}
    runs: dict[str, Run] = {}
    for language in languages:
        if language.broken is not None:
            results[language.name] = Result("fail", language.broken)
        elif language.producer_cmd is None:
            results[language.name] = Result("skip", "no producer_cmd")
        else:
            runs[language.name] = run_language(language, calls, workdir)
    reference_name = next(iter(runs), None)
    for name, run in runs.items():
        problems = list(run.problems)
        if name != reference_name and reference_name is not None:
            reference = runs[reference_name].snapshot
            for line in diff(_semantic(reference), _semantic(run.snapshot)):
                problems.append(f"differs from {reference_name}: {line}")
            semantic = "\n".join(problems)
            for line in diff(_texts(reference), _texts(run.snapshot)):
                key, _, rest = line.partition(".")
                field_name = rest.partition(" (text)")[0]
                if f"{key}.fields.{field_name}" not in semantic:  # same value, other bytes
                    run.notes.append(f"JSON text differs from {reference_name}: {line}")
        dump = workdir / f"{name}-snapshot.json"
        dump.write_text(
            json.dumps(run.snapshot, indent=2, ensure_ascii=False, sort_keys=True), encoding="utf-8"
        )
        for note in run.notes:
            sys.stdout.write(f"  producer parity / {name}: note: {note}\n")
        role = " (reference)" if name == reference_name else ""
        if problems:
            results[name] = Result(
                "fail",
                f"{len(problems)} difference(s){role}: " + "; ".join(problems[:3]),
                f"snapshot: {dump}\n" + "\n".join(problems),
            )
        else:
            results[name] = Result("pass", f"identical{role}")
    return results


def _semantic(snap: dict[str, Any]) -> dict[str, Any]:
    return _strip(snap, keep_text=False)


def _texts(snap: dict[str, Any]) -> dict[str, Any]:
    return _strip(snap, keep_text=True)


def _strip(snap: dict[str, Any], *, keep_text: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, entry in snap.items():
        fields = entry.get("fields") if isinstance(entry, dict) else None
        if isinstance(fields, dict):
            kept = {k: v for k, v in fields.items() if k.endswith(" (text)") == keep_text}
            if keep_text:
                out[key] = kept
            else:
                out[key] = dict(entry, fields=kept)
        elif not keep_text:
            out[key] = entry
    return out


__all__ = ["run_producer_parity"]
