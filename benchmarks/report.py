"""Benchmark results: medians per server, the trivmc / spice-server ratio of each pair of
runs (median and interquartile range), server CPU per GB, the table; and the tables of
`--repeat` combined into one (median of the medians, min-max)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field

COLUMNS = ("trivmc", "spice-server", "pump")
CPU = "cpu_s_per_gb"  # server CPU seconds (user + sys) per GB moved, one value per run
KEYS_CPU = "keys_cpu_s_per_gb"  # trivmc's key-maker workers (child processes), the same
UNIT_OF = {
    "MBps": "MB/s",
    "msgs_per_s": "msg/s",
    "median_us": "µs",
    "p99_us": "µs p99",
    "last50_median_ms": "ms last 50",
    "last50_per_s": "sessions/s last 50",
}
DASH = "\N{EN DASH}"  # between the two ends of a spread
MIN_IQR = 3  # pairs needed for an interquartile range (rows of one run show the ratio alone)


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(first quartile, median, third quartile), linear between the sorted values
    (`statistics.quantiles` "inclusive", numpy's default); of 5 values, the 2nd, 3rd
    and 4th. One value is all three."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def pair_ratios(trivmc: list[float], spice: list[float]) -> list[float]:
    """trivmc / spice-server for each pair of runs: sample i of each server comes from
    counted run i, where the two ran back to back (`__main__.run_order`)."""
    if len(trivmc) != len(spice):
        raise ValueError(f"unpaired samples: {len(trivmc)} trivmc, {len(spice)} spice-server")
    return [t / c for t, c in zip(trivmc, spice, strict=True) if c]


def cpu_per_gb(cpu_seconds: float, nbytes: int, session: float = 0.0) -> float:
    """CPU seconds per GB (10^9 bytes, as MB/s is 10^6 bytes a second) of one run that
    moved `nbytes`, less `session`, the CPU of its session without the data (its link):
    what moving the bytes cost. Not clamped: noise may take a tiny figure below 0."""
    return (cpu_seconds - session) / (nbytes / 1e9)


@dataclass
class Result:
    """One row's samples. `target` is a ratio bound (>= when higher is better, else <=);
    `limit` an absolute bound on trivmc's own figure (same direction).

    A row of one table holds every counted run's figures. A row combined from `tables`
    tables (`combine`) holds each table's median instead, and each table's ratio in
    `table_ratios`; its figures are the medians of those, its spread their min-max."""

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
    tables: int = 1
    table_ratios: list[float | None] = field(default_factory=list)  # combined rows only
    runs: dict[str, int] = field(default_factory=dict)  # combined rows: n of one table

    def add(self, who: str, res: dict[str, object], metric: str | None = None) -> None:
        """Record the main metric (required) and those of `also` the client reports."""
        main = metric or self.metric or self._primary(res)
        for m in [main, *(m for m in self.also if m in res)]:
            value = res[m]
            assert isinstance(value, int | float), (m, value)
            self.samples[who][m].append(float(value))

    def add_value(self, who: str, metric: str, value: float) -> None:
        """One more figure of a side metric (server CPU per GB) for this run."""
        self.samples[who][metric].append(value)

    def _primary(self, res: dict[str, object]) -> str:
        for m in ("msgs_per_s", "MBps", "median_us", "median_ms"):
            if m in res and not self.metric:
                self.metric = m
                return m
        return self.metric

    def values(self, who: str, metric: str | None = None) -> list[float]:
        return self.samples.get(who, {}).get(metric or self.metric) or []

    def median(self, who: str, metric: str | None = None) -> float | None:
        values = self.values(who, metric)
        return statistics.median(values) if values else None

    def ratios(self, metric: str | None = None) -> list[float]:
        """trivmc / spice-server of each pair of runs (of each table, combined); empty
        when a server has no figure. Should the runs not pair up (one server's run
        missing), the one ratio of the two medians."""
        if self.tables > 1 and metric is None:
            return [r for r in self.table_ratios if r is not None]
        t, c = self.values("trivmc", metric), self.values("spice-server", metric)
        if not t or not c:
            return []
        if len(t) != len(c):
            ct = statistics.median(c)
            return [statistics.median(t) / ct] if ct else []
        return pair_ratios(t, c)

    @property
    def ratio(self) -> float | None:
        """The median of the paired ratios (not the ratio of the medians)."""
        ratios = self.ratios()
        return statistics.median(ratios) if ratios else None

    def spread(self) -> tuple[str, float, float] | None:
        """("IQR", Q1, Q3) of the paired ratios of one table; ("range", min, max) of
        the tables' ratios, combined; None when too few."""
        ratios = self.ratios()
        if self.tables > 1:
            return ("range", min(ratios), max(ratios)) if len(ratios) > 1 else None
        if len(ratios) < MIN_IQR:
            return None
        q1, _, q3 = quartiles(ratios)
        return "IQR", q1, q3

    def ratio_text(self) -> str:
        r = self.ratio
        if r is None:
            return "—"
        spread = self.spread()
        if spread is None:
            return f"{r:.2f}"
        name, lo, hi = spread
        return f"{r:.2f} ({name} {lo:.2f}{DASH}{hi:.2f})"

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
        first = f"{fmt(main)} {self.unit}"
        if self.tables > 1 and len(self.values(who)) > 1:
            values = self.values(who)
            first += f" ({fmt(min(values))}{DASH}{fmt(max(values))})"
        parts = [first]
        for m in self.also:
            v = self.median(who, m)
            if v is not None:
                parts.append(f"{fmt(v)} {UNIT_OF.get(m, m)}")
        if self.tables > 1:
            count = f"n={self.runs.get(who, 0)}, {len(self.values(who))} tables"
        else:
            count = f"n={len(self.values(who))}"
        return " · ".join(parts) + f" ({count})"

    def cpu_cell(self) -> str:
        """Server CPU s/GB: trivmc + its key makers · spice-server · pump ("" when the row
        does not measure it)."""
        if not any(self.values(who, CPU) for who in COLUMNS):
            return ""

        def one(who: str, metric: str = CPU) -> str:
            v = self.median(who, metric)
            return "—" if v is None else f"{v:.2f}"

        trivmc = f"{one('trivmc')} + {one('trivmc', KEYS_CPU)}"
        return f"{trivmc} · {one('spice-server')} · {one('pump')}"

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


def combine(tables: list[list[Result]]) -> list[Result]:
    """The tables of `--repeat`, one row each: each figure (and each server's CPU per
    GB) the median of the tables' medians, the ratio the median of the tables' ratios;
    the spread is their min-max. Text cells and notes are the last table's."""
    keys = list(dict.fromkeys(r.key for table in tables for r in table))
    by_key = [{r.key: r for r in table} for table in tables]
    combined = []
    for key in keys:
        same = [rows[key] for rows in by_key if key in rows]
        last = same[-1]
        c = Result(
            last.key,
            last.label,
            last.unit,
            last.higher,
            last.target,
            list(last.also),
            last.metric,
            last.limit,
            note=last.note,
            text=dict(last.text),
            tables=len(tables),
        )
        for r in same:
            for who, metrics in r.samples.items():
                for m, values in metrics.items():
                    if values:
                        c.samples[who][m].append(statistics.median(values))
        c.table_ratios = [rows[key].ratio if key in rows else None for rows in by_key]
        c.runs = {who: len(last.values(who)) for who in last.samples}
        combined.append(c)
    return combined


def render(results: list[Result], machine: list[str], command: str) -> str:
    tables = max((r.tables for r in results), default=1)
    if tables > 1:
        how = [
            f"`{command}`: the whole table was run {tables} times; each figure is the",
            f"median of the {tables} tables' medians (of n runs each) with their range (lowest",
            f"to highest), the ratio the median of the {tables} tables' ratios with their range.",
        ]
    else:
        how = [
            f"`{command}`: each figure is the median of n runs, all taken in this one run.",
            "The ratio is trivmc / spice-server of each pair of runs (the two servers back to",
            "back), their median and interquartile range (IQR: the middle half of the pairs).",
        ]
    lines = [
        "# trivmc benchmarks",
        "",
        *how,
        "spice-server is the C reference (`../shared/anchor`); the raw pump",
        "(`benchmarks/pump.py`) moves the same payload over a plain loopback socket. Server",
        "CPU: user + system seconds of the server process per GB moved (trivmc + its",
        "key-maker processes · spice-server · pump), median of the runs.",
        "",
        *machine,
        "",
        "| measure | trivmc | spice-server | raw pump | trivmc / spice-server"
        " | server CPU s/GB: trivmc + keys · spice-server · pump | target | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for r in results:
        met = {True: "yes", False: "**no**", None: ""}[r.met]
        cells = " | ".join(r.cell(w) for w in COLUMNS)
        lines.append(
            f"| {r.label} | {cells} | {r.ratio_text()} | {r.cpu_cell()}"
            f" | {r.target_text()} | {met} |"
        )
        if r.note:
            notes.append(f"- {r.label}: {r.note}")
    if notes:
        lines += ["", "Notes" + (" (of the last table):" if tables > 1 else ":"), *notes]
    if tables > 1:
        lines += [
            "",
            "Each table's ratio (median of its pairs):",
            "",
            "| measure | " + " | ".join(f"table {i + 1}" for i in range(tables)) + " |",
            "|---|" + "---|" * tables,
        ]
        for r in results:
            each = [f"{x:.2f}" if x is not None else "—" for x in r.table_ratios]
            each += [""] * (tables - len(each))
            lines.append(f"| {r.label} | " + " | ".join(each) + " |")
    return "\n".join(lines) + "\n"
