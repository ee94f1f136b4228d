"""Benchmark results: medians per server, the trivmc / spice-server ratio, the table."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field

COLUMNS = ("trivmc", "spice-server", "pump")
UNIT_OF = {
    "MBps": "MB/s",
    "msgs_per_s": "msg/s",
    "median_us": "µs",
    "p99_us": "µs p99",
    "last50_median_ms": "ms last 50",
    "last50_per_s": "sessions/s last 50",
}


@dataclass
class Result:
    """One row's samples. `target` is a ratio bound (>= when higher is better, else <=);
    `limit` an absolute bound on trivmc's own figure (same direction)."""

    key: str
    label: str
    unit: str
    higher: bool
    target: float | None = None
    also: list[str] = field(default_factory=list)
    metric: str = ""
    limit: float | None = None
    note: str = ""
    samples: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list))
    )
    text: dict[str, str] = field(default_factory=dict)  # a cell given as text (n/a: why)

    def add(self, who: str, res: dict[str, object], metric: str | None = None) -> None:
        """Record the main metric (required) and those of `also` the client reports."""
        main = metric or self.metric or self._primary(res)
        for m in [main, *(m for m in self.also if m in res)]:
            value = res[m]
            assert isinstance(value, int | float), (m, value)
            self.samples[who][m].append(float(value))

    def _primary(self, res: dict[str, object]) -> str:
        for m in ("msgs_per_s", "MBps", "median_us", "median_ms"):
            if m in res and not self.metric:
                self.metric = m
                return m
        return self.metric

    def median(self, who: str, metric: str | None = None) -> float | None:
        values = self.samples.get(who, {}).get(metric or self.metric)
        return statistics.median(values) if values else None

    @property
    def ratio(self) -> float | None:
        t, c = self.median("trivmc"), self.median("spice-server")
        return t / c if t is not None and c else None

    @property
    def met(self) -> bool | None:
        if self.target is not None and self.ratio is not None:
            r = self.ratio
            return r >= self.target if self.higher else r <= self.target
        value = self.median("trivmc")
        if self.limit is not None and value is not None:
            return value >= self.limit if self.higher else value <= self.limit
        return None

    def cell(self, who: str) -> str:
        if who in self.text:
            return self.text[who]
        main = self.median(who)
        if main is None:
            return "—"
        parts = [f"{fmt(main)} {self.unit}"]
        for m in self.also:
            v = self.median(who, m)
            if v is not None:
                parts.append(f"{fmt(v)} {UNIT_OF.get(m, m)}")
        n = len(self.samples[who][self.metric])
        return " · ".join(parts) + f" (n={n})"

    def target_text(self) -> str:
        sign = "≥" if self.higher else "≤"
        if self.target is not None:
            return f"{sign} {self.target:g}"
        if self.limit is not None:
            return f"{sign} {fmt(self.limit)} {self.unit}"
        return ""


def fmt(x: float) -> str:
    if x >= 100_000:
        return f"{x / 1000:,.0f}k"
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def render(results: list[Result], machine: list[str], command: str) -> str:
    lines = [
        "# trivmc benchmarks",
        "",
        f"`{command}`: each figure is the median of n runs, all taken in this one run;",
        "the ratio is trivmc / spice-server (the C reference, `../shared/anchor`); the raw",
        "pump (`benchmarks/pump.py`) moves the same payload over a plain loopback socket.",
        "",
        *machine,
        "",
        "| measure | trivmc | spice-server | raw pump | trivmc / spice-server | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    notes = []
    for r in results:
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else "—"
        met = {True: "yes", False: "**no**", None: ""}[r.met]
        cells = " | ".join(r.cell(w) for w in COLUMNS)
        lines.append(f"| {r.label} | {cells} | {ratio} | {r.target_text()} | {met} |")
        if r.note:
            notes.append(f"- {r.label}: {r.note}")
    if notes:
        lines += ["", "Notes:", *notes]
    return "\n".join(lines) + "\n"
