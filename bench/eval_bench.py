"""Evaluation speed: median and p90 nanoseconds per call, beside a plain dict lookup.

Run ``python bench/eval_bench.py``.  Every case evaluates one flag through
``Snapshot.evaluate(...).value`` (and the reference flag also through an
offline ``FlagClient.bool_variation``), with contexts that miss every
target and rule so each case pays for all of its checks.  Each figure is the
median (and 90th percentile) over many timed batches; a dict ``get`` timed
the same way in the same run shows what "free" costs on this machine.

Writes ``bench/results/eval.json`` (machine, Python, figures, targets and
PASS/MISS) and ``bench/results/eval.png`` (a bar chart).

Then the adversarial cases (``--adversarial-only`` runs just those): the
slowest contexts and flags we know how to build within the documented
limits (``docs/evaluation.md``), in milliseconds per call, written to
``bench/results/eval_adversarial.json``.  The first row is issue 10's
incident: ``\\w+@example\\.com$`` against an 80,000-character email took
39.6 s with Python's ``re``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import random
import re
import statistics
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
for path in (ROOT, ROOT / "client", ROOT / "server"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from tests.support.builders import (  # noqa: E402
    clause,
    flag,
    prerequisite,
    rollout,
    rule,
    segment,
    segment_clause,
    target,
)

from flagwire import Snapshot  # noqa: E402
from flagwire.core.limits import LIMITS, MAX_STRING_ATTRIBUTE  # noqa: E402
from flagwire.core.operators import regex_budget_overrun  # noqa: E402
from flagwire_server.migrate.launchdarkly import convert  # noqa: E402

#: Median targets (ns) from the design brief, CPython 3.11 on a 2-core machine.
TARGETS = {"reference flag": 1500, "5 rules, mixed operators": 3000}

TARGETED = [f"user-{i}" for i in range(10)]


def flags() -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    docs = {
        "simple-on": flag("simple-on"),
        "simple-off": flag("simple-off", on=False),
        "targets-10": flag("targets-10", targets=[target(0, *TARGETED)]),
        "rules-5": flag(
            "rules-5",
            rules=[
                rule(clause("email", "ends_with", "@example.com"), id="staff"),
                rule(clause("country", "in", "NL", "DE", "BE", "FR"), id="eu"),
                rule(clause("plan", "starts_with", "enterprise"), id="enterprise"),
                rule(clause("age", "gte", 65), id="seniors"),
                rule(clause("app_version", "semver_lt", "2.0.0"), id="old-app"),
            ],
            fallthrough=1,
        ),
        "reference": flag(
            "reference",
            targets=[target(0, *TARGETED)],
            rules=[
                rule(clause("email", "ends_with", "@example.com"), id="staff"),
                rule(clause("country", "in", "NL", "DE"), id="eu"),
            ],
            fallthrough=rollout(25, 75),
        ),
        "rollout": flag("rollout", fallthrough=rollout(50, 50)),
        "segment": flag("segment", rules=[rule(segment_clause("beta"), id="beta")], fallthrough=1),
        "prereq-a": flag("prereq-a", prerequisites=[prerequisite("prereq-b")]),
        "prereq-b": flag("prereq-b", prerequisites=[prerequisite("prereq-c")]),
        "prereq-c": flag("prereq-c"),
    }
    docs.update(imported())
    segments = {
        "beta": segment(
            "beta",
            included=[f"beta-{i}" for i in range(100)],
            rules=[rule(clause("plan", "in", "pro"))],
        )
    }
    return docs, segments


def imported() -> dict[str, dict[str, Any]]:
    """The reference, 5-rule and rollout flags as LaunchDarkly data, through the importer.

    They evaluate with LaunchDarkly's semantics (its bucketing: a hex digest
    and a float division per rollout; numbers as doubles), beside the native rows.
    """

    def ld(key: str, rules: list[dict[str, Any]], fallthrough: dict[str, Any]) -> dict[str, Any]:
        return {
            "key": key,
            "version": 1,
            "on": True,
            "salt": "9f2c0b5e",
            "variations": [True, False],
            "offVariation": 1,
            "targets": [{"variation": 0, "values": TARGETED}] if key.startswith("Ref") else [],
            "rules": rules,
            "fallthrough": fallthrough,
        }

    def when(attr: str, op: str, *values: Any) -> dict[str, Any]:
        return {"clauses": [{"attribute": attr, "op": op, "values": list(values)}], "variation": 0}

    def split(*weights: int) -> dict[str, Any]:
        slots = [{"variation": i, "weight": w * 1000} for i, w in enumerate(weights)]
        return {"rollout": {"variations": slots}}

    data = {
        "flags": {
            "Reference-LD": ld(
                "Reference-LD",
                [when("email", "endsWith", "@example.com"), when("country", "in", "NL", "DE")],
                split(25, 75),
            ),
            "Rules-5-LD": ld(
                "Rules-5-LD",
                [
                    when("email", "endsWith", "@example.com"),
                    when("country", "in", "NL", "DE", "BE", "FR"),
                    when("plan", "startsWith", "enterprise"),
                    when("age", "greaterThanOrEqual", 65),
                    when("app_version", "semVerLessThan", "2.0.0"),
                ],
                {"variation": 1},
            ),
            "Rollout-LD": ld("Rollout-LD", [], split(50, 50)),
        },
        "segments": {},
    }
    conv = convert(data)
    assert not conv.skipped, conv.report
    return {doc["key"]: doc for doc in conv.flags}


CONTEXT = {
    "key": "user-abc",
    "email": "someone@elsewhere.org",
    "country": "US",
    "plan": "pro",
    "age": 30,
    "app_version": "2.3.1",
}

CASES = [  # (label, flag key, what it exercises)
    ("simple on", "simple-on", "on, no targets or rules: fallthrough variation"),
    ("simple off", "simple-off", "off: off variation"),
    ("10 targets", "targets-10", "context not among 10 targets: fallthrough"),
    (
        "5 rules, mixed operators",
        "rules-5",
        "ends_with, in, starts_with, gte, semver_lt; none match: fallthrough",
    ),
    (
        "reference flag",
        "reference",
        "10 targets, ends_with rule, in rule, 25% rollout fallthrough; lands in the rollout",
    ),
    ("rollout 50/50", "rollout", "fallthrough rollout only: one SHA-1 per call"),
    ("segment match", "segment", "segment_match: not included, matched by the segment's rule"),
    ("prerequisite chain", "prereq-a", "a requires b requires c, all satisfied"),
    (
        "5 rules, imported from LD",
        "rules-5-ld",
        "the 5-rule flag as LaunchDarkly data through the importer (numbers as doubles)",
    ),
    (
        "reference, imported from LD",
        "reference-ld",
        "the reference flag as LaunchDarkly data through the importer: LaunchDarkly bucketing",
    ),
    ("rollout 50/50, imported from LD", "rollout-ld", "LaunchDarkly bucketing: SHA-1, hex, float"),
]


def measure(
    stmts: list[Callable[[], object]],
    *,
    number: int,
    repeat: int,
    clock: Callable[[], float] = time.thread_time,
) -> list[tuple[float, float, float]]:
    """(median, p90, min) nanoseconds per call of each statement.

    The statements are timed in interleaved rounds — one batch of ``number``
    calls of each, ``repeat`` times — so that load from other processes on a
    shared machine falls on every case alike instead of on whichever ran at a
    bad moment.  The default clock is this thread's CPU time, which excludes
    the time the process spends descheduled; ``--wall`` uses perf_counter.
    """
    timers = [timeit.Timer(stmt, timer=clock) for stmt in stmts]
    for timer in timers:
        timer.timeit(number)  # warm up
    samples: list[list[float]] = [[] for _ in timers]
    for _ in range(repeat):
        for timer, sample in zip(timers, samples, strict=True):
            sample.append(timer.timeit(number) / number * 1e9)
    figures = []
    for sample in samples:
        sample.sort()
        p90 = sample[min(len(sample) - 1, int(len(sample) * 0.9))]
        figures.append((statistics.median(sample), p90, sample[0]))
    return figures


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": model or platform.processor(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        # Other work on the machine inflates the figures; this says how much there was.
        "load_average_1m_5m_15m": [round(x, 2) for x in os.getloadavg()],
    }


async def with_client(
    docs: dict[str, Any], segments: dict[str, Any], then: Callable[[Any], list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """Run ``then(client)`` with an offline FlagClient on the same flags (None if absent)."""
    try:
        from flagwire import FlagClient
    except ImportError:  # pragma: no cover - the client is not there yet
        return then(None)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "flags.json"
        path.write_text(json.dumps({"flags": docs, "segments": segments}))
        async with FlagClient(offline_path=path) as client:
            detail = client.variation_detail("reference", CONTEXT, None)
            assert detail.reason == "FALLTHROUGH", detail
            # The same client counting for fleet insight, as a connected client does
            # (an offline one has nothing to report to, so it does not count).
            from flagwire._insight import InsightRecorder

            async with FlagClient(offline_path=path) as counting:
                counting._insight = InsightRecorder("bench", "0")
                counting._record = counting._insight.record  # what __init__ does when reporting
                client.counting = counting
                return then(client)


INCIDENT = r"\w+@example\.com$"
#: A pattern that defeats RE2's DFA (2**20 states): RE2 falls back to its NFA,
#: linear in the text but with a factor of the program size.
THRASH = r"(?:a|b)*a(?:a|b){1000}c"


def adversarial_cases() -> list[tuple[str, Callable[[], object], str]]:
    """(label, call, note): the costliest evaluations we could build, and the old engine."""
    rng = random.Random(7)
    ab = "".join(rng.choice("ab") for _ in range(MAX_STRING_ATTRIBUTE))
    at_cap = "a" * (MAX_STRING_ATTRIBUTE - len("@example.org")) + "@example.org"
    heavy = [f"{THRASH}{i}" for i in range(LIMITS.max_clause_values)]
    # as many heavy patterns as the per-document budget accepts
    fitting = regex_budget_overrun(heavy) or len(heavy)
    docs = {
        "incident": flag("incident", rules=[rule(clause("email", "matches", INCIDENT))]),
        "heavy": flag("heavy", rules=[rule(clause("a", "matches", *heavy[:fitting]))]),
        "contains": flag(
            "contains",
            rules=[rule(clause("a", "contains", *[f"{'b' * 200}{i}" for i in range(1000)]))],
        ),
    }
    snap = Snapshot(docs)
    for key in docs:
        assert snap.evaluate(key, {"key": "k"}, None).reason != "ERROR", key
    old = re.compile(INCIDENT)
    return [
        (
            "incident: 80,000-char email",
            lambda: snap.evaluate("incident", {"key": "k", "email": "a" * 80_000 + "@x.org"}, 0),
            f"{INCIDENT}; over the {MAX_STRING_ATTRIBUTE}-char cap: does not match, not searched",
        ),
        (
            f"incident: {MAX_STRING_ATTRIBUTE}-char email",
            lambda: snap.evaluate("incident", {"key": "k", "email": at_cap}, 0),
            f"{INCIDENT}; at the cap, searched by RE2",
        ),
        (
            f"old engine (Python re): {MAX_STRING_ATTRIBUTE}-char email",
            lambda: old.search(at_cap),
            "v1's matches on the same input, for comparison (80,000 chars: 39.6 s, issue 10)",
        ),
        (
            f"{fitting} DFA-defeating patterns (budget-full)",
            lambda: snap.evaluate("heavy", {"key": "k", "a": ab}, 0),
            f"{THRASH} x{fitting}, as many as max_regex_memory="
            f"{LIMITS.max_regex_memory} accepts; {MAX_STRING_ATTRIBUTE} random a/b",
        ),
        (
            "contains: 1,000 values",
            lambda: snap.evaluate("contains", {"key": "k", "a": "b" * MAX_STRING_ATTRIBUTE}, 0),
            f"1,000 values of 201 chars, none found in a {MAX_STRING_ATTRIBUTE}-char value",
        ),
    ]


def run_adversarial(rounds: int) -> list[dict[str, Any]]:
    cases = adversarial_cases()
    print(f"adversarial cases: ms per call, wall clock, {rounds} calls each")
    print(f"  {'case':<48}{'median':>10}{'max':>10}")
    rows = []
    for label, call, note in cases:
        call()  # warm up (RE2 builds its DFA lazily)
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            call()
            times.append((time.perf_counter() - started) * 1000)
        median, worst = statistics.median(times), max(times)
        print(f"  {label:<48}{median:>10.3f}{worst:>10.3f}")
        rows.append(
            {"case": label, "median_ms": round(median, 4), "max_ms": round(worst, 4), "note": note}
        )
    result = {
        "benchmark": "evaluation, adversarial",
        "machine": machine(),
        "method": {"rounds": rounds, "clock": "wall (perf_counter)", "after": "one warm-up call"},
        "limits": {
            "max_string_attribute": MAX_STRING_ATTRIBUTE,
            **{k: v for k, v in LIMITS.as_dict().items() if "regex" in k},
        },
        "results": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "eval_adversarial.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS / 'eval_adversarial.json'}")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--number", type=int, default=2_000, help="calls per timed batch")
    parser.add_argument("--repeat", type=int, default=201, help="rounds (batches per case)")
    parser.add_argument("--wall", action="store_true", help="wall clock instead of CPU time")
    parser.add_argument("--no-chart", action="store_true")
    parser.add_argument("--adversarial-only", action="store_true", help="only the slow cases")
    parser.add_argument("--adversarial-rounds", type=int, default=21)
    args = parser.parse_args()
    if args.adversarial_only:
        run_adversarial(args.adversarial_rounds)
        return 0
    clock = time.perf_counter if args.wall else time.thread_time

    docs, segments = flags()
    snap = Snapshot(docs, segments, version=1)
    evaluate = snap.evaluate
    ctx = CONTEXT
    for _, key, _ in CASES:  # every case must evaluate without error
        detail = evaluate(key, ctx, None)
        assert detail.reason != "ERROR", (key, detail)
    table = {key: True for key in docs}

    cases: list[tuple[str, Callable[[], object], str]] = [
        (
            "dict lookup (baseline)",
            lambda: table.get("reference"),
            "dict.get of a flag key: the floor",
        ),
    ]
    for label, key, note in CASES:
        cases.append((label, lambda key=key: evaluate(key, ctx, False).value, note))
    # Many flags: the reference flag's document under 10,000 keys, evaluated in turn,
    # so every call is a different flag (compiled on first use, then cold in the caches).
    many = Snapshot(
        {f"many-{i:05d}": {**docs["reference"], "key": f"many-{i:05d}"} for i in range(10_000)},
        segments,
        version=1,
    )
    many_keys = list(many.flags)
    many_evaluate = many.evaluate
    turn = itertools.cycle(many_keys)
    for k in many_keys:
        many_evaluate(k, ctx, False)
    cases.append(
        (
            "10,000 flags in turn",
            lambda: many_evaluate(next(turn), ctx, False).value,
            "the reference flag under 10,000 keys, a different one each call",
        )
    )

    def run(client: Any) -> list[dict[str, Any]]:
        todo = list(cases)
        if client is not None:
            todo.append(
                (
                    "reference flag via FlagClient.bool_variation",
                    lambda: client.bool_variation("reference", ctx, False),
                    "offline FlagClient: Snapshot.evaluate plus the kind check",
                )
            )
            counting = client.counting
            todo.append(
                (
                    "reference flag via bool_variation, counting",
                    lambda: counting.bool_variation("reference", ctx, False),
                    "the same with fleet-insight counting on (docs/insight.md: at most +10%)",
                )
            )
        figures = measure(
            [stmt for _, stmt, _ in todo], number=args.number, repeat=args.repeat, clock=clock
        )
        rows = []
        for (label, _, note), (median, p90, fastest) in zip(todo, figures, strict=True):
            target = TARGETS.get(label)
            result = None if target is None else ("PASS" if median < target else "MISS")
            rows.append(
                {
                    "case": label,
                    "median_ns": round(median, 1),
                    "p90_ns": round(p90, 1),
                    "min_ns": round(fastest, 1),
                    "target_ns": target,
                    "result": result,
                    "note": note,
                }
            )
            shown = label.replace("reference flag via FlagClient.", "reference via ").replace(
                "reference flag via bool_variation, counting", "reference via bool_var+count"
            )
            print(
                f"  {shown:<30}{median:>8.0f}{p90:>8.0f}{fastest:>8.0f}"
                f"{'' if target is None else f'{target:>8}  {result}'}"
            )
        return rows

    print(
        f"flagwire evaluation benchmark: Python {sys.version.split()[0]}, "
        f"{args.repeat} rounds x {args.number} calls per case, ns per call "
        f"({'wall clock' if args.wall else 'thread CPU time'})"
    )
    print(f"  {'case':<30}{'median':>8}{'p90':>8}{'min':>8}{'target':>8}")
    rows = asyncio.run(with_client(docs, segments, run))

    result = {
        "benchmark": "evaluation",
        "machine": machine(),
        "method": {
            "number": args.number,
            "rounds": args.repeat,
            "statistic": "median and p90 over rounds (min: the quietest batch)",
            "schedule": "interleaved: each round times one batch of every case",
            "clock": "wall (perf_counter)" if args.wall else "thread CPU time",
            "measured": "Snapshot.evaluate(key, context, default).value",
            "context": CONTEXT,
        },
        "targets_ns": TARGETS,
        "results": rows,
        "passed": all(r["result"] != "MISS" for r in rows),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    if not args.no_chart:
        load = result["machine"]["load_average_1m_5m_15m"]
        chart(
            rows,
            RESULTS / "eval.png",
            f"{result['machine']['cpus']} CPUs, load average {load[0]} during the run, "
            f"{result['method']['clock']}",
        )
    print(f"wrote {RESULTS / 'eval.json'}" + ("" if args.no_chart else " and eval.png"))
    missed = [r["case"] for r in rows if r["result"] == "MISS"]
    print("targets: " + (f"MISS {', '.join(missed)}" if missed else "all PASS"))
    run_adversarial(args.adversarial_rounds)
    return 0


def chart(rows: list[dict[str, Any]], path: Path, subtitle: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [
        r["case"].replace(" via FlagClient.bool_variation", "\nvia bool_variation") for r in rows
    ]
    medians = [r["median_ns"] for r in rows]
    spreads = [max(0.0, r["p90_ns"] - r["median_ns"]) for r in rows]
    colours = [
        "#888888"
        if "baseline" in r["case"]
        else {"PASS": "#2a9d8f", "MISS": "#e76f51"}.get(r["result"] or "", "#457b9d")
        for r in rows
    ]
    fig, ax = plt.subplots(figsize=(10, 5.5))
    ax.barh(labels, medians, xerr=[[0] * len(spreads), spreads], color=colours, capsize=3)
    for i, r in enumerate(rows):
        ax.text(
            max(r["median_ns"], r["p90_ns"]),
            i,
            f"  {r['median_ns']:.0f} ns",
            va="center",
            fontsize=8,
        )
        if r["target_ns"]:
            ax.plot([r["target_ns"]] * 2, [i - 0.4, i + 0.4], color="black", linestyle="--")
    ax.invert_yaxis()
    ax.set_xlabel("ns per call (bar: median, whisker: p90; dashed: target)")
    ax.set_title(
        f"flagwire evaluation, Python {sys.version.split()[0]}"
        + (f"\n{subtitle}" if subtitle else ""),
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
