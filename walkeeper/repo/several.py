"""status and check over several repositories: one verdict from each repository's, and the copy lag.

Pure (tested as tables in tests/unit/test_several_health.py): the commands read each repository with
the one-repository code and hand the results here, keyed by the configured name.
"""

from __future__ import annotations

from walkeeper.repo.copylisting import LagFigure
from walkeeper.repo.health import CRITICAL, OK, UNKNOWN, WARNING, CheckResult, human_age


def merge_checks(named: list[tuple[str, CheckResult]]) -> CheckResult:
    """One check result from each repository's: the worst state, every reason and fact named by repository
    (the reasons of the worst repositories first).

    A repository that cannot be read (its own result UNKNOWN) is a WARNING for the whole when another one
    can be read (archiving goes on, with require = "any" or into the one that is up; its lag and
    --max-copy-lag escalate with time); UNKNOWN only when none can.
    """
    if len(named) == 1:
        return named[0][1]
    readable = any(r.status != UNKNOWN for _n, r in named)
    merged = CheckResult(OK if readable else UNKNOWN)
    reasons: list[tuple[int, str]] = []
    for name, result in named:
        status = WARNING if result.status == UNKNOWN else result.status
        reasons.extend((status, f"{name}: {message}") for message in result.messages)
        if status > merged.status and merged.status != UNKNOWN:
            merged.status = status
        merged.facts.extend(f"{name}: {fact}" for fact in result.facts)
        merged.perfdata.extend(f"{name}_{perf}" for perf in result.perfdata)
        merged.repo = merged.repo or result.repo
        merged.cluster = merged.cluster or result.cluster
        for event, count in result.failures.items():
            merged.failures[event] = max(merged.failures.get(event, 0), count)
    merged.messages = [m for _s, m in sorted(reasons, key=lambda r: -r[0])]
    return merged


def judge_copy_lag(result: CheckResult, lags: list[LagFigure], crit: float | None, warn: float | None) -> CheckResult:
    """``check --max-copy-lag`` / ``--warn-copy-lag``: how long each repository has been behind the first."""
    for figure in lags:
        lag = figure.lag
        pair = f"{figure.destination} behind {figure.source}"
        if crit is not None and lag.seconds > crit:
            message = f"{pair} for {human_age(lag.seconds)} (critical above {human_age(crit)}; oldest not " \
                      f"copied: {lag.oldest_missing})"
            result.raise_to(CRITICAL, message)
            result.messages.insert(0, result.messages.pop())  # reasons read worst first
        elif warn is not None and lag.seconds > warn:
            result.raise_to(WARNING, f"{pair} for {human_age(lag.seconds)} (warning above {human_age(warn)}; "
                                     f"oldest not copied: {lag.oldest_missing})")
        elif lag.seconds > 0:
            result.facts.append(f"{pair} for {human_age(lag.seconds)}")
        else:
            result.facts.append(f"{figure.destination} holds what {figure.source} holds")
        bounds = f"{'' if warn is None else f'{warn:.0f}'};{'' if crit is None else f'{crit:.0f}'}"
        result.perfdata.append(f"copy_lag_{figure.destination}={lag.seconds:.0f}s;{bounds}")
    return result
