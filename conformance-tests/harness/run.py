"""RRQ conformance suite: every scenario for every runner language, then producer
parity and the mixed fleet; prints a matrix and ends with the line
``conformance: N passed, M failed, K skipped`` (known failures count as skipped).

Usage: python conformance-tests/harness/run.py [--language L]... [--scenario S]... [--jobs N]

``--scenario`` also accepts ``producer_parity`` and ``mixed_fleet``; when
``--scenario`` is given, only the named rows run. The orchestrator binary is
``$RRQ_BIN`` (else the one installed beside this Python, else ``rrq`` on PATH).
Exit status 1 when any cell failed.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import Language, Result, build_language, check_command, discover_languages
from fleet import run_mixed_fleet
from parity import run_producer_parity
from scenarios import Scenario, load_scenarios, run_scenario

from rrq.integrations import otel
from rrq.testing import find_rrq_binary

PARITY_ROW = "producer parity"
FLEET_ROW = "mixed fleet"


def say(text: str = "") -> None:
    """The suite's output (stdout, flushed: CI shows progress as it happens)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


# language -> why its runner is known not to connect (later scenarios fail at once).
NEVER_CONNECTED: dict[str, str] = {}

ROW_KEYS = {"producer_parity": PARITY_ROW, "mixed_fleet": FLEET_ROW}


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--language", action="append", default=[], help="only this language")
    parser.add_argument("--scenario", action="append", default=[], help="only this row")
    parser.add_argument("--jobs", type=int, default=2, help="cells run at once (default 2)")
    parser.add_argument("--workdir", type=Path, help="where logs go (default: a new temp dir)")
    return parser.parse_args(argv)


def classify(language: Language, row: str, key: str, run: Callable[[], Result]) -> Result:
    """Runs a cell unless the language is broken; applies known_failing.txt."""
    if language.broken is not None:
        return Result("fail", language.broken)
    known = language.known_failing.get(key) or language.known_failing.get(row)
    result = run()
    if known is None:
        return result
    if result.outcome == "pass":
        return Result(
            "fail",
            f"passes but is listed in runners/{language.name}/known_failing.txt: remove it",
            seconds=result.seconds,
        )
    if result.outcome == "fail":
        return Result("known-fail", f"{known} (now: {result.message})", seconds=result.seconds)
    return result


def scenario_cell(language: Language, scenario: Scenario, workroot: Path, binary: str) -> Result:
    missing = [f for f in scenario.requires if not language.features.get(f)]
    if language.broken is None and missing:
        reasons = [language.feature_reasons.get(f, f"no {f}") for f in missing]
        return Result("skip", "; ".join(reasons))
    workdir = workroot / language.name / scenario.name

    def run() -> Result:
        if language.runner_cmd is not None:
            problem = check_command(language.runner_cmd, language.directory)
            if problem:
                return Result("fail", f"runner_cmd: {problem}")
        if language.name in NEVER_CONNECTED:
            return Result("fail", NEVER_CONNECTED[language.name])
        result = run_scenario(language, scenario, workdir, binary)
        if result.runner_never_connected:
            NEVER_CONNECTED.setdefault(language.name, f"{result.message} (in {scenario.name})")
        return result

    return classify(language, scenario.name, scenario.name, run)


def print_matrix(
    rows: list[str], languages: list[Language], cells: dict[tuple[str, str], Result]
) -> tuple[int, int, int]:
    headers = ["scenario"] + [lang.name for lang in languages]
    table = [[row] + [cells[(row, lang.name)].cell() for lang in languages] for row in rows]
    widths = [max(len(r[i]) for r in [headers, *table]) for i in range(len(headers))]

    def line(values: list[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

    say()
    say(line(headers))
    say(line(["-" * w for w in widths]))
    for values in table:
        say(line(values))
    passed = sum(1 for r in cells.values() if r.outcome == "pass")
    failed = sum(1 for r in cells.values() if r.outcome == "fail")
    skipped = len(cells) - passed - failed

    failures = [
        (row, lang.name)
        for row in rows
        for lang in languages
        if cells[(row, lang.name)].outcome in ("fail", "known-fail")
    ]
    if failures:
        say("\nfailure details:")
        for row, name in failures:
            result = cells[(row, name)]
            label = "FAIL" if result.outcome == "fail" else "known-fail"
            say(f"\n[{label}] {row} / {name}: {result.message}")
            if result.details and result.outcome == "fail":
                say("    " + result.details.replace("\n", "\n    "))
    skips = [
        (row, lang.name, cells[(row, lang.name)].message)
        for row in rows
        for lang in languages
        if cells[(row, lang.name)].outcome == "skip"
    ]
    if skips:
        say("\nskipped:")
        for row, name, reason in skips:
            say(f"  {row} / {name}: {reason}")
    return passed, failed, skipped


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    otel.enable()  # no SDK provider: enqueues store the current context's traceparent
    binary = find_rrq_binary()
    workroot = args.workdir or Path(tempfile.mkdtemp(prefix="rrq-conformance-"))
    workroot.mkdir(parents=True, exist_ok=True)

    stage_names = [ROW_KEYS[s] for s in args.scenario if s in ROW_KEYS]
    scenario_names = [s for s in args.scenario if s not in ROW_KEYS]
    scenarios = load_scenarios(scenario_names) if (scenario_names or not args.scenario) else []
    stages = stage_names if args.scenario else [PARITY_ROW, FLEET_ROW]
    languages = discover_languages(args.language)

    say(f"rrq conformance: orchestrator {binary}, logs in {workroot}")
    for language in languages:
        if language.build is not None and language.broken is None:
            say(f"building {language.name}: {' '.join(language.build)}".replace("\n", " "))
        build_language(language, workroot)
        if language.broken is not None:
            say(f"  {language.name}: {language.broken}")

    cells: dict[tuple[str, str], Result] = {}
    jobs = [(lang, scenario) for scenario in scenarios for lang in languages]

    def one(item: tuple[Language, Scenario]) -> None:
        language, scenario = item
        result = scenario_cell(language, scenario, workroot, binary)
        cells[(scenario.name, language.name)] = result
        say(
            f"  {scenario.name} / {language.name}: {result.cell()}"
            + (f" ({result.seconds:.1f}s)" if result.seconds else "")
            + (f": {result.message}" if result.outcome == "fail" else "")
        )

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        list(pool.map(one, jobs))

    if PARITY_ROW in stages:
        say("producer parity ...")
        parity = run_producer_parity(languages, workroot / "producer-parity")
        for language in languages:
            cells[(PARITY_ROW, language.name)] = classify(
                language,
                PARITY_ROW,
                "producer_parity",
                functools.partial(parity.__getitem__, language.name),
            )
    if FLEET_ROW in stages:
        say("mixed fleet ...")
        fleet = run_mixed_fleet(languages, workroot / "mixed-fleet", binary, NEVER_CONNECTED)
        for language in languages:
            cells[(FLEET_ROW, language.name)] = classify(
                language,
                FLEET_ROW,
                "mixed_fleet",
                functools.partial(fleet.__getitem__, language.name),
            )

    rows = [s.name for s in scenarios] + stages
    passed, failed, skipped = print_matrix(rows, languages, cells)
    say(f"\nlogs: {workroot}; took {time.monotonic() - started:.0f}s")
    say(f"conformance: {passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main(sys.argv[1:]))
