"""The default recipe's wall time read beside the host's speed: each step that
``recipes/default_model/run.sh`` timed (``out/default/times.log``) with the host's one-thread bf16 and fp32
speed while it ran (the samples of ``benchmarks/host_speed.py`` in ``out/default/host_speed.log``), and the
recipe's whole wall time from the first step's start to the last step's end (steps that overlap count once).

    python benchmarks/recipe_times.py                                  # out/default's two logs
    python benchmarks/recipe_times.py --reference-bf16 800             # and each step scaled to 800 GFLOP/s

``--reference-bf16 G`` adds an estimate of each step's time on a host whose bf16 product runs at G GFLOP/s:
each second of the step weighted by (the host's bf16 speed then / G), the speed held from one sample to the
next. It assumes the work done in a second is proportional to the host's bf16 speed, which holds roughly for
the bf16 training stages (docs/training.md, *The host's speed*) and not for the data draws or the fp32
decoder. An estimate for comparing runs taken in different hours, not a measurement.
"""

from __future__ import annotations

import argparse
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

DAY = 24 * 3600
TIMED = re.compile(r"^\[recipe\] (\d\d):(\d\d):(\d\d) (\d+) s: (.*)$")
SAMPLE = re.compile(r"^\| (\d\d):(\d\d):(\d\d) \| (\d+) \| (\d+) \|")


@dataclass
class Step:
    what: str
    start: int  # seconds since the first line's midnight (UTC)
    end: int


def _clock(h: str, m: str, s: str) -> int:
    return int(h) * 3600 + int(m) * 60 + int(s)


def _unwrapped(clock_times: list[int]) -> list[int]:
    """Times of day in the order they were written -> seconds since the first one's midnight, a day added
    each time the clock goes back (a run through midnight)."""
    days, last, out = 0, None, []
    for t in clock_times:
        if last is not None and t < last:
            days += 1
        out.append(t + days * DAY)
        last = t
    return out


def read_steps(path: Path) -> list[Step]:
    """The steps of a run.sh times log, in the order they ended."""
    matches = [m for line in path.read_text().splitlines() if (m := TIMED.match(line))]
    ends = _unwrapped([_clock(*m.groups()[:3]) for m in matches])
    return [Step(m.group(5), end - int(m.group(4)), end) for m, end in zip(matches, ends)]


def read_samples(path: Path, first_start: int) -> list[tuple[int, float, float]]:
    """(seconds, bf16 GFLOP/s, fp32 GFLOP/s) of each host-speed sample, on the steps' clock: a sample
    earlier in the day than ``first_start``'s time of day by more than an hour is taken to be after midnight."""
    clock_times, speeds = [], []
    for line in path.read_text().splitlines() if path.exists() else []:
        if m := SAMPLE.match(line):
            clock_times.append(_clock(*m.groups()[:3]))
            speeds.append((float(m.group(4)), float(m.group(5))))
    times = _unwrapped(clock_times)
    if times and times[0] < first_start % DAY - 3600:
        times = [t + DAY for t in times]
    return [(t + first_start // DAY * DAY, bf16, fp32) for t, (bf16, fp32) in zip(times, speeds)]


def _at_reference(start: int, end: int, samples: list[tuple[int, float, float]], reference: float) -> float:
    """Seconds from ``start`` to ``end`` weighted by the host's bf16 speed / ``reference``: each sample's speed
    holds until the next sample (the first sample's also before it)."""
    times = [t for t, _, _ in samples]
    speeds = [bf16 for _, bf16, _ in samples]
    edges = [start, *(t for t in times if start < t < end), end]
    total = 0.0
    for a, b in zip(edges, edges[1:]):
        held = max((i for i, t in enumerate(times) if t <= a), default=0)
        total += (b - a) * speeds[held] / reference
    return total


def machines(path: Path) -> list[str]:
    """The machine lines ``benchmarks/host_speed.py`` writes at its start (one each time run.sh started; other
    lines of the log, such as warnings, are not machines)."""
    lines = path.read_text().splitlines() if path.exists() else []
    return [line for line in lines if line.startswith("host: ")]


def _minutes(seconds: float) -> str:
    return f"{int(seconds) // 60} min {int(seconds) % 60:02d} s" if seconds >= 60 else f"{seconds:.0f} s"


def _clock_text(seconds: int) -> str:
    s = seconds % DAY
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}"


def table(steps: list[Step], samples: list[tuple[int, float, float]], reference: float | None) -> str:
    """A markdown table: one row a step, then the recipe's whole wall time."""
    head = "| step | from | to | wall time | samples | bf16 GFLOP/s (median) | fp32 GFLOP/s (median) |"
    rule = "|---|---|---|---|---|---|---|"
    if reference:
        head += f" at {reference:.0f} bf16 GFLOP/s (estimate) |"
        rule += "---|"
    rows = [head, rule]
    for step in [*steps, Step("**the recipe** (first start to last end)", min(s.start for s in steps),
                              max(s.end for s in steps))]:
        inside = [(bf16, fp32) for t, bf16, fp32 in samples if step.start <= t <= step.end]
        wall = step.end - step.start
        bf16 = statistics.median(b for b, _ in inside) if inside else None
        fp32 = statistics.median(f for _, f in inside) if inside else None
        row = (f"| {step.what} | {_clock_text(step.start)} | {_clock_text(step.end)} | {_minutes(wall)} | "
               f"{len(inside)} | {f'{bf16:.0f}' if inside else '–'} | {f'{fp32:.0f}' if inside else '–'} |")
        if reference:
            row += f" {_minutes(_at_reference(step.start, step.end, samples, reference)) if samples else '–'} |"
        rows.append(row)
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--times", type=Path, default=Path("out/default/times.log"))
    parser.add_argument("--host-speed", type=Path, default=Path("out/default/host_speed.log"))
    parser.add_argument("--reference-bf16", type=float, help="also scale each step to this bf16 GFLOP/s")
    args = parser.parse_args()
    steps = read_steps(args.times)
    if not steps:
        raise SystemExit(f"{args.times}: no '[recipe] HH:MM:SS N s: …' lines")
    samples = read_samples(args.host_speed, min(s.start for s in steps))
    print(f"{len(steps)} steps from {args.times}, {len(samples)} host-speed samples from {args.host_speed}")
    for line in dict.fromkeys(machines(args.host_speed)):
        print(line)
    print(table(steps, samples, args.reference_bf16))


if __name__ == "__main__":
    main()
