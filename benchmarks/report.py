"""Tables and charts from a benchmark results file: benchmarks/results/tables.md and results/img/bench-*.png.

    python benchmarks/report.py benchmarks/results/full.json

``run.py`` calls ``write()`` at the end of a suite; this script redoes it from
saved figures. The free text of ``benchmarks/FINDINGS.md`` (what the profiles
show) is included as it is.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
NAMES = {
    "sagakit": "sagakit",
    "dbos": "DBOS",
    "pso": "python-saga-orchestrator",
    "raw-tx": "raw, 1 tx per transition",
    "raw-batch": "raw, 50 sagas per commit",
}
PEER_NAMES = {"dbos": "dbos", "pso": "python-saga-orchestrator", "raw": "asyncpg (raw)"}
STORES = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
WORKLOADS = {
    "A": "3 no-op steps, happy path",
    "B": "step 3 fails, 2 and 1 compensated",
    "C": "10 sequential steps",
    "D": "8 parallel steps, then a join",
}
STEP_RUNS = {"A": 3, "B": 5, "C": 10, "D": 9}


# ---------------------------------------------------------------- figures


def typo(text: str) -> str:
    """The page's typography: ~x~ is a multiplication sign, ~-~ an en dash (kept out of the source as such)."""
    return text.replace("~x~", "\u00d7").replace("~-~", "\u2013")


def rate(m: dict[str, Any]) -> float:
    """Sagas/s; worker runs: from the first saga's start to the last one's end."""
    return m["n"] / (m.get("processing_seconds") or m["seconds"])


def spawn_rate(m: dict[str, Any]) -> float:
    return m["n"] / m["seconds"]


def busy(m: dict[str, Any]) -> float:
    """Cores the workers and the server kept busy while the sagas ran (of the machine's 2)."""
    secs = m.get("processing_seconds") or m["seconds"]
    return float((m.get("worker_cpu_seconds") or 0) + (m.get("server_cpu_seconds") or 0)) / secs


def ok(m: dict[str, Any]) -> bool:
    return "error" not in m and "unsupported" not in m and bool(m.get("ok"))


class Figures:
    def __init__(self, result: dict[str, Any]) -> None:
        self.result = result
        self.cfg = result["config"]
        self.ms = result.get("measurements", [])
        self.by: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
        for m in self.ms:
            self.by[(m["section"], m["system"], m["store"], m["workload"], m["n"], m.get("workers", 0))].append(m)

    def get(self, section: str, system: str, store: str, w: str, n: int, workers: int = 0) -> list[dict[str, Any]]:
        return self.by.get((section, system, store, w, n, workers), [])

    def peer_n(self, system: str, w: str) -> int:
        if system in ("dbos", "pso"):
            return int(self.cfg["peer_n"][w])
        if system.startswith("raw"):
            return int(self.cfg["raw_n"])
        return int(self.cfg["ns"][0])

    def raw_ns(self, store: str, w: str) -> list[int]:
        """The N at which the raw baseline ran for this store and workload."""
        ms = self.ms
        return sorted({m["n"] for m in ms if m["system"] == "raw-tx" and m["store"] == store and m["workload"] == w})

    def raw_n_for(self, store: str, w: str, n: int) -> int | None:
        """The raw baseline's N to compare sagakit at *n* with: the same, else the nearest smaller one."""
        ns = [x for x in self.raw_ns(store, w) if x <= n] or self.raw_ns(store, w)
        return ns[-1] if ns else None

    def raw_runs(self, system: str, store: str, w: str, n: int) -> dict[int, float]:
        rn = self.raw_n_for(store, w, n)
        return self.runs_of("matrix", system, store, w, rn) if rn is not None else {}

    def series(self, store: str, w: str) -> list[tuple[str, int]]:
        """(system, N) rows of the matrix for one store and workload."""
        rows = [("sagakit", n) for n in self.cfg["ns"]]
        rows += [(s, self.peer_n(s, w)) for s in ("dbos", "pso")]
        rows += [(s, n) for s in ("raw-tx", "raw-batch") for n in self.raw_ns(store, w)]
        return rows

    def runs_of(self, section: str, system: str, store: str, w: str, n: int, workers: int = 0) -> dict[int, float]:
        return {m["run"]: rate(m) for m in self.get(section, system, store, w, n, workers) if ok(m)}

    def pairs_of(self, store: str, w: str, n: int) -> dict[tuple[int, int], float]:
        """The back-to-back A/B measurements of workload *w*, by (run, pair within the run)."""
        return {(m["run"], m.get("pair", 0)): rate(m) for m in self.get("pair", "sagakit", store, w, n) if ok(m)}

    def worker_pairs(self, workers: int) -> dict[tuple[int, int], float]:
        """sagakit on PostgreSQL with *workers* processes, by (run, pair): the workers section is pair 0."""
        n = self.cfg["workers_n"]
        out = {(r, 0): v for r, v in self.runs_of("workers", "sagakit", "postgresql", "A", n, workers).items()}
        for m in self.get("workers_pair", "sagakit", "postgresql", "A", n, workers):
            if ok(m):
                out[(m["run"], m["pair"])] = rate(m)
        return out

    def ratio(self, a: Mapping[Any, float], b: Mapping[Any, float]) -> list[float]:
        """Per-run ratios a/b, runs that have both."""
        return [a[r] / b[r] for r in sorted(a) if r in b and b[r] > 0]

    def fastest_peer(self, store: str, w: str) -> dict[int, float]:
        runs: dict[int, float] = {}
        for s in ("dbos", "pso"):
            for r, v in self.runs_of("matrix", s, store, w, self.peer_n(s, w)).items():
                runs[r] = max(runs.get(r, 0.0), v)
        return runs


def med(xs: Sequence[float]) -> float | None:
    return statistics.median(xs) if xs else None


def fmt(x: float | None, spec: str = ",.0f") -> str:
    if x is None:
        return "—"
    if spec == "auto":
        spec = ",.0f" if abs(x) >= 100 else ",.1f" if abs(x) >= 10 else ",.2f"
    return format(x, spec)


def span(xs: Sequence[float], spec: str = "auto") -> str:
    if not xs:
        return "—"
    if len(xs) == 1:
        return fmt(xs[0], spec)
    return f"{fmt(statistics.median(xs), spec)} ({fmt(min(xs), spec)}~-~{fmt(max(xs), spec)})"


def lat(ms: Sequence[dict[str, Any]], key: str) -> float | None:
    xs = [m["latency"][key] * 1000 for m in ms if ok(m) and m.get("latency") and m["latency"].get(key) is not None]
    return med(xs)


# ---------------------------------------------------------------- tables


def table(head: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    align = align or "l" + "r" * (len(head) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def headline(f: Figures, store: str) -> str:
    ns = f.cfg["ns"]
    n_small = ns[0]
    head = ["workload", *(f"sagakit N={n:,}" for n in ns), "DBOS", "python-saga-orchestrator",
            f"raw 1 tx/transition N={n_small:,}", f"raw batched N={n_small:,}", "sagakit ÷ DBOS",
            "sagakit ÷ p-s-o", *(f"sagakit ÷ raw 1 tx, N={n:,}" for n in ns),
            *(f"sagakit ÷ raw batched, N={n:,}" for n in ns)]  # fmt: skip
    rows = []
    for w, what in WORKLOADS.items():
        if not any(f.get("matrix", "sagakit", store, w, n) for n in ns):
            continue
        sk = {n: f.runs_of("matrix", "sagakit", store, w, n) for n in ns}
        cells = [f"{w}: {what}"]
        cells += [span(list(sk[n].values())) for n in ns]
        for s in ("dbos", "pso"):
            ms = f.get("matrix", s, store, w, f.peer_n(s, w))
            if ms and all("unsupported" in m for m in ms):
                cells.append("not supported")
            else:
                cells.append(span(list(f.runs_of("matrix", s, store, w, f.peer_n(s, w)).values())))
        for s in ("raw-tx", "raw-batch"):
            cells.append(span(list(f.raw_runs(s, store, w, n_small).values())))
        for s in ("dbos", "pso"):
            peer = f.runs_of("matrix", s, store, w, f.peer_n(s, w))
            cells.append(span(f.ratio(sk[n_small], peer), ",.0f") + " ~x~")
        for s in ("raw-tx", "raw-batch"):
            for n in ns:
                mark = "" if f.raw_n_for(store, w, n) == n else " \u2020"
                cells.append(span(f.ratio(sk[n], f.raw_runs(s, store, w, n)), ".2f") + " ~x~" + mark)
        rows.append([c.replace("\u2014 ~x~", "\u2014") for c in cells])
    return table(head, rows)


def per_saga_ms(ms: Sequence[dict[str, Any]], key: str) -> float | None:
    """Median over runs of a CPU figure (seconds) per saga, in milliseconds."""
    return med([m[key] * 1000 / m["n"] for m in ms if ok(m) and m.get(key) is not None])


def _short_error(lines: Sequence[str]) -> str:
    """The telling line of a failed run's output (the exception), shortened."""
    for ln in reversed(lines):
        if "Error" in ln or "error" in ln:
            return ln.strip()[:100].replace("|", "/")
    return (lines[-1].strip()[:100] if lines else "?").replace("|", "/")


def detail(f: Figures, store: str) -> str:
    head = ["workload", "system", "N", "sagas/s", "steps/s", "p50 step-to-step (ms)", "p99 (ms)",
            "peak RSS (MiB)", "write tx / saga", "CPU ms / saga"]  # fmt: skip
    if store == "postgresql":
        head.append("server CPU ms / saga")
    rows = []
    for w in WORKLOADS:
        for system, n in f.series(store, w):
            ms = f.get("matrix", system, store, w, n)
            if not ms:
                continue
            good = [m for m in ms if ok(m)]
            if not good:
                why = ms[0].get("unsupported") or ms[0].get("error", "failed").splitlines()[-1][:80]
                rows.append([w, NAMES[system], f"{n:,}", f"not run: {why}", *([""] * (len(head) - 4))])
                continue
            failed = [m for m in ms if not ok(m)]
            note = ""
            if failed:
                why = failed[0].get("error", "failed").strip().splitlines()
                note = f" ({len(failed)} of {len(ms)} runs failed: {_short_error(why)})"
            row = [
                w,
                NAMES[system],
                f"{n:,}",
                span([rate(m) for m in good]) + note,
                span([m["step_runs"] / m["seconds"] for m in good]),
                fmt(lat(good, "p50"), ".1f"),
                fmt(lat(good, "p99"), ".1f"),
                fmt(max(m.get("peak_rss_mb", 0) for m in good), ".0f"),
                fmt(med([m["write_tx"] / m["n"] for m in good if m.get("write_tx") is not None]), ".2f"),
                fmt(per_saga_ms(good, "cpu_seconds"), ".2f"),
            ]
            if store == "postgresql":
                row.append(fmt(per_saga_ms(good, "server_cpu_seconds"), ".2f"))
            rows.append(row)
    return table(head, rows, "lll" + "r" * (len(head) - 3))


def workers_table(f: Figures) -> str:
    k_list = f.cfg["workers"]
    n, dn = f.cfg["workers_n"], f.cfg["dbos_workers_n"]
    base = f.runs_of("workers", "sagakit", "postgresql", "A", n, 1)
    head = ["worker processes", f"sagakit sagas/s (N={n:,})", "from spawn", "vs 1 worker", "worker peak RSS (MiB)",
            "write tx / saga", "worker CPU ms / saga", "server CPU ms / saga", "cores busy",
            f"DBOS sagas/s (N={dn:,})", "DBOS from spawn", "DBOS worker CPU ms / saga", "DBOS server CPU ms / saga",
            "sagakit ÷ DBOS"]  # fmt: skip
    rows = []
    for k in k_list:
        sk = f.get("workers", "sagakit", "postgresql", "A", n, k)
        db = f.get("workers", "dbos", "postgresql", "A", dn, k)
        skr = f.runs_of("workers", "sagakit", "postgresql", "A", n, k)
        dbr = f.runs_of("workers", "dbos", "postgresql", "A", dn, k)
        good = [m for m in sk if ok(m)]
        rows.append([
            str(k),
            span(list(skr.values())),
            span([spawn_rate(m) for m in good]),
            span(f.ratio(skr, base), ".2f") if k != 1 else "1",
            fmt(max((m.get("worker_peak_rss_mb") or 0 for m in good), default=None), ".0f"),
            fmt(med([m["write_tx"] / m["n"] for m in good if m.get("write_tx") is not None]), ".3f"),
            fmt(per_saga_ms(good, "worker_cpu_seconds"), ".2f"),
            fmt(per_saga_ms(good, "server_cpu_seconds"), ".2f"),
            fmt(med([busy(m) for m in good if m.get("worker_cpu_seconds") is not None]), ".2f"),
            span(list(dbr.values())),
            span([spawn_rate(m) for m in db if ok(m)]),
            fmt(per_saga_ms(db, "worker_cpu_seconds"), ".1f"),
            fmt(per_saga_ms(db, "server_cpu_seconds"), ".1f"),
            span(f.ratio(skr, dbr), ",.0f") + " ~x~" if dbr else "~-~",
        ])  # fmt: skip
    return table(head, rows)


def scaling_table(res: dict[str, Any]) -> str:
    head = ["store", "finished sagas in the store", "claim of 50 (ms)", "vs empty", "sagas/s (workload A)", "vs empty",
            "build (s)"]  # fmt: skip
    rows = []
    for store, sizes in res.get("stores", {}).items():
        base = sizes.get("0") or next(iter(sizes.values()))
        for size, v in sizes.items():
            # Per round, against the empty store measured in the same round; then the median.
            c = [x / y for x, y in zip(v["claim_ms"], base["claim_ms"], strict=False)]
            r = [x / y for x, y in zip(v["sagas_per_s"], base["sagas_per_s"], strict=False)]
            rows.append([
                STORES[store],
                f"{int(size):,}",
                span(v["claim_ms"], ".2f"),
                span(c, ".2f"),
                span(v["sagas_per_s"]),
                span(r, ".2f"),
                fmt(v["build_seconds"], ".0f"),
            ])  # fmt: skip
    return table(head, rows)


def cli_section(summary: dict[str, Any]) -> str:
    """The figures of `sagakit bench --store postgresql://… --workers 1,2,4 --json`, saved beside the suite's."""
    dbos = summary.get("dbos") or {}
    env = summary.get("environment", {})
    rows = []
    for k, m in summary["modes"].items():
        sk = m["sagakit"]
        scale = summary.get("scaling_vs_1_worker", {}).get(k)
        rows.append([
            "0 (in the bench process)" if k == "0" else k,
            span(sk["sagas_per_s"]["values"]),
            span(sk.get("sagas_per_s_from_spawn", {}).get("values", [])),
            fmt(sk.get("store_transactions_per_saga"), ".3f"),
            span(m["dbos"]["sagas_per_s"]["values"]) if m.get("dbos") else "not run",
            (span(m["ratio"]["values"], ",.0f") + " ~x~") if m.get("ratio") else "",
            span(scale["values"], ".2f") if scale else "",
        ])  # fmt: skip
    head = ["worker processes", f"sagakit sagas/s (N={summary['n']:,})", "from spawn", "store tx / saga",
            f"DBOS sagas/s (N={dbos.get('n', 0):,})", "sagakit ÷ DBOS", "vs 1 worker"]  # fmt: skip
    return (
        "## `sagakit bench` on PostgreSQL (issue 4)\n\n"
        f"The command itself: `sagakit bench --store postgresql://postgres@127.0.0.1:5432/test --workers 1,2,4 "
        f"--n {summary['n']} --runs {summary['runs']} --dbos-n {dbos.get('n', '?')} --json`, workload "
        f"{summary['workload']} ({summary['description']}), {summary['in_flight']} in flight per process, "
        f"{dbos.get('version') or 'DBOS'} on the same database in the same runs; run on {env.get('date', '?')}"
        + (f" at commit `{summary['commit']}`" if summary.get("commit") else "")
        + " (figures in `benchmarks/results/cli-postgres.json`).\n\n"
        + table(head, rows)
        + "\n"
    )


# ---------------------------------------------------------------- targets


def targets(f: Figures) -> list[tuple[str, str, str]]:
    out: list[tuple[str, str, str]] = []
    n_small = f.cfg["ns"][0]

    def verdict(values: Sequence[float], good: Callable[[float], bool]) -> str:
        if not values:
            return "not measured"
        return "**met**" if good(statistics.median(values)) else "**not met**"

    for store, peer_goal, raw_goal in (("sqlite", 50, 0.5), ("postgresql", 25, 1.0)):
        sk = f.runs_of("matrix", "sagakit", store, "A", n_small)
        r = f.ratio(sk, f.fastest_peer(store, "A"))
        out.append((f"A on {STORES[store]}: ≥ {peer_goal} ~x~ the fastest peer",
                    f"{span(r, ',.0f')} ~x~ (sagakit N={n_small:,} ÷ the faster of DBOS and p-s-o, per run)",
                    verdict(r, lambda x, g=peer_goal: x >= g)))  # fmt: skip
        what = "the raw rate with a pool of 8" if store == "postgresql" else "the raw 1-tx-per-transition rate"
        for nn in f.cfg["ns"]:
            r = f.ratio(f.runs_of("matrix", "sagakit", store, "A", nn), f.raw_runs("raw-tx", store, "A", nn))
            rn = f.raw_n_for(store, "A", nn) or 0
            out.append((f"A on {STORES[store]}: ≥ {raw_goal} ~x~ {what} (N={nn:,})",
                        f"{span(r, '.2f')} ~x~ (sagakit N={nn:,} ÷ raw N={rn:,})",
                        verdict(r, lambda x, g=raw_goal: x >= g)))  # fmt: skip
    n = f.cfg["workers_n"]
    r = f.ratio(f.worker_pairs(2), f.worker_pairs(1))
    out.append(("PostgreSQL: 2 workers ≥ 1.6 ~x~ 1 worker",
                f"{span(r, '.2f')} ~x~ (N={n:,}; {len(r)} pairs of 1 worker, then 2)",
                verdict(r, lambda x: x >= 1.6)))  # fmt: skip
    cli = HERE / "results" / "cli-postgres.json"
    if cli.exists():
        scale = json.loads(cli.read_text()).get("scaling_vs_1_worker", {}).get("2")
        if scale:
            out.append(("PostgreSQL: 2 workers ≥ 1.6 ~x~ 1 worker (the `sagakit bench` run below)",
                        f"{span(scale['values'], '.2f')} ~x~ (N=10,000)",
                        verdict(scale["values"], lambda x: x >= 1.6)))  # fmt: skip
    for store in ("sqlite", "postgresql"):
        for nn in f.cfg["ns"]:
            # The back-to-back pairs when the suite ran them (older results: the matrix runs).
            paired = bool(f.pairs_of(store, "A", nn))

            def of(w: str, store: str = store, nn: int = nn, paired: bool = paired) -> Mapping[Any, float]:
                return f.pairs_of(store, w, nn) if paired else f.runs_of("matrix", "sagakit", store, w, nn)

            a, b = of("A"), of("B")
            r = f.ratio(a, b)  # = B's time per saga / A's
            how = f"{len(r)} pairs of A and B back to back" if paired else "the matrix runs"
            out.append((f"B within 1.5 ~x~ A's time per saga ({STORES[store]}, N={nn:,})",
                        f"{span(r, '.2f')} ~x~ A's time ({how})", verdict(r, lambda x: x <= 1.5)))  # fmt: skip
    sc = f.result.get("scaling", {}).get("stores", {})
    for store, sizes in sc.items():
        big = max(sizes, key=int)
        if big == "0" or "0" not in sizes:
            continue
        c = [a / b for a, b in zip(sizes[big]["claim_ms"], sizes["0"]["claim_ms"], strict=False)]
        t = [a / b for a, b in zip(sizes[big]["sagas_per_s"], sizes["0"]["sagas_per_s"], strict=False)]
        out.append((f"{STORES[store]}: claim latency with {int(big):,} finished within 10 % of empty",
                    f"{span(c, '.2f')} ~x~ empty", verdict(c, lambda x: x <= 1.10)))  # fmt: skip
        out.append((f"{STORES[store]}: throughput with {int(big):,} finished within 10 % of empty",
                    f"{span(t, '.2f')} ~x~ empty", verdict(t, lambda x: x >= 0.90)))  # fmt: skip
    return out


# ---------------------------------------------------------------- charts


def charts(f: Figures, img: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    img.mkdir(parents=True, exist_ok=True)
    made = []
    colors = {"sagakit": "#1b6ca8", "sagakit-big": "#6fa8dc", "dbos": "#d9822b", "pso": "#8e44ad",
              "raw-tx": "#7f7f7f", "raw-batch": "#bfbfbf"}  # fmt: skip

    # Throughput per workload and store, log scale.
    stores = [s for s in STORES if any(m["store"] == s for m in f.ms if m["section"] == "matrix")]
    if stores:
        fig, axes = plt.subplots(1, len(stores), figsize=(6.5 * len(stores), 4.6), squeeze=False)
        n_small, n_big = f.cfg["ns"][0], f.cfg["ns"][-1]
        bars = [("sagakit", n_small, "sagakit", f"sagakit N={n_small:,}")]
        if n_big != n_small:
            bars.append(("sagakit", n_big, "sagakit-big", f"sagakit N={n_big:,}"))
        bars += [
            ("dbos", None, "dbos", "DBOS"),
            ("pso", None, "pso", "python-saga-orchestrator"),
            ("raw-tx", None, "raw-tx", "raw, 1 tx/transition"),
            ("raw-batch", None, "raw-batch", "raw, batched"),
        ]
        width = 0.8 / len(bars)
        for ax, store in zip(axes[0], stores, strict=True):
            for i, (system, n, color, label) in enumerate(bars):
                xs, ys, lo, hi = [], [], [], []
                for j, w in enumerate(WORKLOADS):
                    vals = list(f.runs_of("matrix", system, store, w, n or f.peer_n(system, w)).values())
                    if vals:
                        m = statistics.median(vals)
                        xs.append(j + (i - len(bars) / 2 + 0.5) * width)
                        ys.append(m)
                        lo.append(m - min(vals))
                        hi.append(max(vals) - m)
                ax.bar(xs, ys, width, color=colors[color], label=label, yerr=[lo, hi], capsize=2)
            ax.set_yscale("log")
            ax.set_xticks(range(len(WORKLOADS)), list(WORKLOADS))
            ax.set_title(typo(f"{STORES[store]}: sagas/s (median of runs, min~-~max)"))
            ax.set_xlabel("workload")
            ax.grid(axis="y", which="both", alpha=0.3)
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=len(bars), fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0.06, 1, 1))
        fig.savefig(img / "bench-throughput.png", dpi=110)
        plt.close(fig)
        made.append("bench-throughput.png")

        # Step-to-step latency, workload A and C.
        fig, axes = plt.subplots(1, len(stores), figsize=(6.5 * len(stores), 4.2), squeeze=False)
        systems = [("sagakit", n_small, "sagakit"), ("dbos", None, "dbos"), ("pso", None, "pso")]
        for ax, store in zip(axes[0], stores, strict=True):
            for i, (system, n, color) in enumerate(systems):
                p50, p99, xs = [], [], []
                for j, w in enumerate(WORKLOADS):
                    ms = f.get("matrix", system, store, w, n or f.peer_n(system, w))
                    a, b = lat(ms, "p50"), lat(ms, "p99")
                    if a is not None and b is not None:
                        xs.append(j + (i - 1) * 0.27)
                        p50.append(a)
                        p99.append(b)
                ax.bar(xs, p99, 0.25, color=colors[color], alpha=0.35)
                ax.bar(xs, p50, 0.25, color=colors[color], label=NAMES[system])
            ax.set_yscale("log")
            ax.set_xticks(range(len(WORKLOADS)), list(WORKLOADS))
            ax.set_title(f"{STORES[store]}: step-to-step latency, ms (p50 solid, p99 pale)")
            ax.grid(axis="y", which="both", alpha=0.3)
        axes[0][0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(img / "bench-latency.png", dpi=110)
        plt.close(fig)
        made.append("bench-latency.png")

    # Worker processes.
    if any(m["section"] == "workers" for m in f.ms):
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        ks = f.cfg["workers"]
        for system, n, color in (("sagakit", f.cfg["workers_n"], "sagakit"), ("dbos", f.cfg["dbos_workers_n"], "dbos")):
            meds, los, his, kk = [], [], [], []
            for k in ks:
                vals = list(f.runs_of("workers", system, "postgresql", "A", n, k).values())
                if vals:
                    m = statistics.median(vals)
                    kk.append(k)
                    meds.append(m)
                    los.append(m - min(vals))
                    his.append(max(vals) - m)
            if meds:
                ax.errorbar(
                    kk, meds, yerr=[los, his], marker="o", color=colors[color], label=f"{NAMES[system]}", capsize=3
                )
                ax.plot(kk, [meds[0] * k / kk[0] for k in kk], ls=":", color=colors[color], alpha=0.6)
        ax.set_yscale("log")
        ax.set_xticks(ks)
        ax.set_xlabel("worker processes (2 cores)")
        ax.set_title("PostgreSQL, workload A: sagas/s per worker count\n(dotted: linear from 1 worker)")
        ax.grid(which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(img / "bench-workers.png", dpi=110)
        plt.close(fig)
        made.append("bench-workers.png")

    sc = f.result.get("scaling", {}).get("stores", {})
    if sc:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
        for store, sizes in sc.items():
            xs = [int(s) for s in sizes]
            labels = [f"{x:,}" for x in xs]
            a1.plot(labels, [med(v["sagas_per_s"]) for v in sizes.values()], marker="o", label=STORES[store])
            a2.plot(labels, [med(v["claim_ms"]) for v in sizes.values()], marker="o", label=STORES[store])
        a1.set_title("sagas/s (workload A) vs finished sagas in the store")
        a2.set_title("claim of 50 due sagas, ms")
        for ax in (a1, a2):
            ax.set_xlabel("finished sagas already in the store")
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(img / "bench-scaling.png", dpi=110)
        plt.close(fig)
        made.append("bench-scaling.png")

    tm = f.result.get("timers")
    if tm and "points" in tm:
        fig, ax = plt.subplots(figsize=(6.5, 4))
        ax.plot([p["waiting"] for p in tm["points"]], [p["rss_mb"] for p in tm["points"]], marker="o")
        ax.set_xlabel("sagas waiting on a timer (one hour away)")
        ax.set_ylabel("resident set size, MiB")
        ax.set_ylim(0, max(p["rss_mb"] for p in tm["points"]) * 1.25)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:,.0f}"))
        ax.set_title("sagakit engine memory vs sagas waiting on timers")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(img / "bench-timers.png", dpi=110)
        plt.close(fig)
        made.append("bench-timers.png")
    return made


# ---------------------------------------------------------------- the page

STATIC_USAGE = """\
## Running it

```bash
python benchmarks/run.py --setup     # the peers' virtual environments (benchmarks/.venvs/, from PyPI)
python benchmarks/run.py --quick     # every section at small sizes, 1 run: ~2-3 minutes (rewrites this page too)
python benchmarks/run.py             # the full suite, median of 3 runs: ~35 minutes
python benchmarks/report.py benchmarks/results/full.json   # this page and the charts again, from saved figures

sagakit bench                        # SQLite: workloads A and B beside raw sqlite3 (N=5000, 3 runs)
sagakit bench --store postgresql://postgres@127.0.0.1:5432/test --workers 1,2,4   # beside DBOS (issue 4)
sagakit bench --store postgresql://… --workers 0 --workload C --no-dbos           # the engine in this process
```

`run.py` options: `--pg URL` (default `postgresql://postgres@127.0.0.1:5432/test`, every run in a schema
of its own, dropped after), `--stores`, `--workloads`, `--sections matrix,peers,workers,scaling,timers`,
`--upgrade-peers` (reinstall the peers' latest releases), `--no-docs`.

`sagakit bench --store postgresql://…` runs workload A (or `--workload`) at N=10,000 (or `--n`) per
`--workers` count (default 1,2,4), median of `--runs` (3), and DBOS the same workload on the same database
in the same runs when `benchmarks/.venvs/dbos` exists (`--dbos-n`, default min(N, 500): at ~50 workflows/s
DBOS would need minutes per run at 10,000). Without `--store` it measures SQLite as before.
"""

METHOD = """\
## Method

**Workloads** (the same in every system; every step is an `async` no-op with a compensation):
- **A** — 3 sequential steps, happy path (4 durable transitions in the raw baseline: created, 3 steps).
- **B** — the third step fails without retry, steps 2 and 1 are compensated (6 transitions).
- **C** — 10 sequential steps (11 transitions).
- **D** — a fan-out of 8 parallel steps, then a join step (10 transitions).

**Systems**, each measured in a process of its own, started by `benchmarks/run.py`:
- **sagakit** (`benchmarks/peers/sagakit_peer.py`, the code of `sagakit bench`): sagas started with
  `engine.start()`, at most 50 unfinished at a time, default engine settings.
- **DBOS** (`dbos_peer.py`, own virtual environment): a saga is a `@DBOS.workflow()` of `@DBOS.step()`
  coroutines; a failed step raises, the workflow catches it and runs the completed steps' compensation
  steps in reverse (the saga pattern as DBOS documents it); D's fan-out is `asyncio.gather` over 8 steps.
  50 workflows in flight; `max_executor_threads=64` (DBOS's pool is unbounded by default). On SQLite,
  `pysqlite3-binary` provides the SQLite ≥ 3.42 DBOS needs.
- **python-saga-orchestrator** (`pso_peer.py`, own virtual environment on Python ≥ 3.12, which it
  requires): `SagaBuilder` steps (`BaseStep` with `compensate`), `NoRetry`, `SagaOrchestrator.start()`,
  50 at once; SQLite through `aiosqlite`, PostgreSQL through `asyncpg`. It runs steps one after another
  only, so workload D is *not supported* there. Its virtual environment is made on the newest Python ≥ 3.12
  `run.py --setup` finds on the machine (`python3.1x` on `PATH`, pyenv's versions, `/usr/bin`) — here the
  machine image's pyenv CPython 3.12.1 (Debian 12's apt offers no `python3.12`). On a machine without one
  the suite reports python-saga-orchestrator as not set up and runs the rest.
- **raw** (`raw_peer.py`, own virtual environment): the same durable writes with no orchestration at all —
  a table of the saga table's shape, an INSERT and then one revision-fenced UPDATE per step function run.
  *1 tx per transition*: SQLite one connection, `BEGIN IMMEDIATE`…`COMMIT` each; PostgreSQL an `asyncpg`
  pool of 8, 50 sagas at once, each statement its own transaction. *Batched*: 50 sagas' transitions per
  commit (PostgreSQL: up to 8 batches at once, one per connection). On SQLite the raw baseline runs at
  each N sagakit runs at (a file that grows past SQLite's 4 MB WAL auto-checkpoint pays checkpoints during
  the run, a small one does not), on PostgreSQL at the first N only (its cost per transaction does not
  depend on N; at 10,000 sagas the 1-tx-per-transition runs of C and D would take a minute each).

**Stores.** SQLite: a new file per measurement, WAL, `synchronous=NORMAL` (sagakit's defaults; set on
the peers' connections too). PostgreSQL: the local server with its default settings (every commit flushed),
a new schema per measurement.

**Worker processes** (PostgreSQL): sagakit — N sagas stored as PENDING by an engine that is not running,
then K `sagakit worker` processes (`--concurrency 50`); DBOS — N workflows enqueued on a DBOS queue, then
K DBOS worker processes (`worker_concurrency=50`, queue polling every 50 ms). Sagas/s are taken from the
first saga's start to the last one's end (read from the stores: sagakit's history and `updated_at`, DBOS's
`started_at_epoch_ms` and `updated_at`), so the processes' start-up (≈0.5 s for sagakit, ≈3 s for DBOS)
is left out; *from spawn* includes it. The table shows each run's 1, 2 and 4 workers; 2 workers against
1 is the median over those and, in the full suite, two more pairs per run (1 worker, then 2, back to
back), since one pair's ratio scatters widely on this machine.

**Figures.** sagas/s and steps/s (step functions run: A 3, B 5, C 10, D 9 per saga): median of the runs
with min~-~max. *Step-to-step latency*: from each saga's history, the time between the end of one step and
the end of the next (steps of one parallel stage count as one stage, ending with the last of them;
compensations are stages of their own); p50 and p99 over all sagas, median over the runs. *Peak RSS*:
the measuring process's peak resident set (sagakit, DBOS, p-s-o and their drivers; worker runs: the largest
worker). *Write tx / saga*: committed transactions that wrote, per saga — sagakit counts its store's write
calls (commits, claims, lease renewals and releases); DBOS and python-saga-orchestrator count SQLAlchemy
commits after an INSERT, UPDATE or DELETE (or a `SELECT … FOR UPDATE`, which takes row locks); raw: exact.
Worker runs count the workers' transactions (the producer's one INSERT per saga is not included).

**Ratios** are taken within one run (the systems of a workload and store run back to back, in the order
raw, sagakit, DBOS, python-saga-orchestrator, sagakit at the larger N, raw batched) and their median over
the runs is reported. B's time per saga against A's comes from pairs run for it at the end of each run
and store: sagakit A, then B, at each N, back to back, three times per run in the full suite (a run of
1,000 sagas lasts a fraction of a second and one pair's ratio scatters widely); the median over all
pairs is reported. The machine is shared and noisy (2 cores; other
jobs ran during the suite): absolute rates move by up to 2~x~ within minutes; the ratios are the figures
to compare.

**Peer sizes.** DBOS and python-saga-orchestrator run ~20~-~70 sagas/s here: 10,000 sagas would take
3~-~8 minutes per run each, so they run at the smaller N given in the tables (50 in flight either way; the
rate of a run is steady after the first few sagas). The peer ratios compare sagakit at its smaller N with
the peers' rates.
"""


def write(result: dict[str, Any], doc: Path, img: Path) -> None:
    f = Figures(result)
    made = charts(f, img)
    mach = result["machine"]
    pg = result.get("postgresql", {})
    peers = result.get("peers", {})
    cfg = result["config"]
    parts = ["# Benchmarks\n"]
    parts.append(
        "sagakit beside its peers — DBOS, python-saga-orchestrator and the raw durable writes — on the same "
        "workloads, the same machine and in the same run. Generated by `benchmarks/run.py` "
        f"({result['mode']} mode) on {mach['date']}"
        + (f", commit `{mach.get('commit')}`" if mach.get("commit") else "")
        + "; every figure below is in `benchmarks/results/"
        + f"{result['mode']}.json`.\n"
    )
    if result["mode"] == "quick":
        parts.append("> **Quick mode**: one run at small sizes — a smoke test of the suite, not figures to quote.\n")
    env = [
        f"{mach['cpus']} cores ({mach.get('cpu', '?')}), {mach.get('memory_gb', '?')} GiB, {mach['platform']}",
        f"Python {mach['python']}, SQLite {mach['sqlite']} (sagakit, raw); PostgreSQL {pg.get('version', '?')} "
        f"(synchronous_commit={pg.get('synchronous_commit', '?')}, fsync={pg.get('fsync', '?')}, "
        f"shared_buffers={pg.get('shared_buffers', '?')}) on loopback",
        "peers: "
        + ", ".join(
            f"{PEER_NAMES.get(k, k)} {v.get('version', '?')} (Python {v.get('python', '?')})"
            if "version" in v
            else f"{k}: {v.get('error')}"
            for k, v in peers.items()
        ),
        "load average (1, 5, 15 min) at the start {} and at the end {}; the suite took {:.1f} minutes".format(
            ", ".join(f"{x:.1f}" for x in mach.get("load_average_start", [])),
            ", ".join(f"{x:.1f}" for x in mach.get("load_average_end", [])),
            result.get("seconds", 0) / 60,
        ),
        f"runs: {cfg['runs']}; sagakit N = {', '.join(f'{n:,}' for n in cfg['ns'])}; peers N = "
        + ", ".join(f"{w} {n}" for w, n in cfg["peer_n"].items())
        + f"; raw N = {cfg['raw_n']:,} (SQLite: every sagakit N); 50 sagas in flight",
    ]
    parts.append("**Machine and run.** " + "; ".join(env) + ".\n")

    parts.append("## Targets (issue 7)\n")
    parts.append(table(["target", "measured (median of per-run ratios, min~-~max)", "verdict"],
                       [list(t) for t in targets(f)], "llc"))  # fmt: skip
    parts.append("")
    findings = HERE / "FINDINGS.md"
    if findings.exists():
        parts.append(findings.read_text().strip() + "\n")

    for store, store_name in STORES.items():
        if not any(m["store"] == store and m["section"] == "matrix" for m in f.ms):
            continue
        parts.append(f"## {store_name}: sagakit ÷ peers\n")
        parts.append(
            "Sagas/s, median of the runs (min~-~max); ratios are per run, then the median. Peer ratios use sagakit "
            f"at N={cfg['ns'][0]:,}; ratios to raw compare the same N, except where marked \u2020 (the raw "
            f"baseline ran at N={cfg['raw_n']:,} only).\n"
        )
        parts.append(headline(f, store) + "\n")
    if "bench-throughput.png" in made:
        parts.append("![sagas/s per workload, store and system](img/bench-throughput.png)\n")
    for store, store_name in STORES.items():
        if not any(m["store"] == store and m["section"] == "matrix" for m in f.ms):
            continue
        parts.append(f"### {store_name}: every figure\n")
        parts.append(detail(f, store) + "\n")
    if "bench-latency.png" in made:
        parts.append("![step-to-step latency](img/bench-latency.png)\n")

    if any(m["section"] == "workers" for m in f.ms):
        parts.append("## PostgreSQL: worker processes (issue 4)\n")
        parts.append(
            "Workload A. sagakit: N PENDING sagas, then K `sagakit worker` processes; DBOS: N enqueued workflows, "
            "then K DBOS worker processes; same database, same runs. Sagas/s exclude process start-up (see Method); "
            "*from spawn* includes it. The machine has 2 cores, which the workers share with PostgreSQL.\n"
        )
        parts.append(workers_table(f) + "\n")
        if "bench-workers.png" in made:
            parts.append("![worker processes](img/bench-workers.png)\n")

    cli = HERE / "results" / "cli-postgres.json"
    if cli.exists():
        parts.append(cli_section(json.loads(cli.read_text())))

    sc = result.get("scaling")
    if sc and "stores" in sc:
        parts.append("## Scaling: finished sagas already in the store\n")
        parts.append(
            f"Each store is built once per size: one real saga of workload A runs through the engine, then its row "
            f"and its history rows are copied with SQL (`INSERT … SELECT` over a generated series). Per round "
            f"(sizes interleaved, {sc['runs']} rounds) every store is first brought to rest, the same for every size: "
            f"on PostgreSQL the saga and history tables get `VACUUM ANALYZE` (this machine's server runs with "
            f"autovacuum off) and the server a `CHECKPOINT`; on SQLite the WAL is checkpointed into the file. "
            f"The finished sagas themselves are vacuumed, frozen and checkpointed once after the bulk load, as "
            f"long-finished work is on a running server. Then *claim* — "
            f"{sc['claim_sagas']:,} due PENDING sagas are stored in every store, then the stores take turns, "
            f"claim by claim, timing `store.claim(limit={sc['claim_limit']})` until none is left (median claim "
            f"of the round, per store; the sizes side by side as in an A/B pair); *sagas/s* — workload A, "
            f"N={sc['n']:,}, 50 in flight, in one process, every size twice per round (the sizes in order, "
            f"then in reverse; the mean of the two).\n"
        )
        if sc.get("note"):
            parts.append(sc["note"] + "\n")
        parts.append(scaling_table(sc) + "\n")
        if "bench-scaling.png" in made:
            parts.append("![scaling with finished sagas](img/bench-scaling.png)\n")
    elif sc:
        parts.append(f"## Scaling\n\nNot measured: {sc.get('error', '?')[-300:]}\n")

    tm = result.get("timers")
    if tm and "points" in tm:
        pts = tm["points"]
        after = pts[1] if len(pts) > 2 else pts[0]
        slope = (tm["rss_end_mb"] - after["rss_mb"]) * 2**20 / max(tm["n"] - after["waiting"], 1)
        parts.append("## Memory: sagas waiting on timers\n")
        parts.append(
            f"{tm['n']:,} sagas started (SQLite store) whose first step fails with a retryable error and a "
            "one-hour back-off: each runs one attempt, then waits on a timer an hour away.\n"
        )
        parts.append(table(["figure", "value"], [
            ["sagas waiting on a timer (in the store)", f"{tm['waiting_in_store']:,}"],
            ["engine RSS before the first saga", f"{tm['rss_start_mb']:.1f} MiB"],
            [f"engine RSS after {after['waiting']:,} waiting", f"{after['rss_mb']:.1f} MiB"],
            [f"engine RSS with all {tm['n']:,} waiting", f"{tm['rss_end_mb']:.1f} MiB"],
            [f"memory per further waiting saga (from {after['waiting']:,} on)", f"{slope:.0f} bytes"],
            ["sagas held in the engine's memory at the end", f"{tm['held_at_end']:,}"],
            ["timer handles on the event loop at the end", f"{tm['loop_timers_at_end']}"],
            ["time to start them all", f"{tm['seconds']:.1f} s ({tm['n'] / tm['seconds']:,.0f} sagas/s)"],
        ], "lr") + "\n")  # fmt: skip
        if "bench-timers.png" in made:
            parts.append("![memory vs waiting sagas](img/bench-timers.png)\n")

    parts.append(METHOD)
    parts.append(STATIC_USAGE)
    doc.write_text(typo("\n".join(parts)))


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit("usage: python benchmarks/report.py benchmarks/results/full.json")
    result = json.loads(Path(sys.argv[1]).read_text())
    root = HERE.parent
    write(result, root / "benchmarks" / "results" / "tables.md", root / "benchmarks" / "results" / "img")
    print("wrote benchmarks/results/tables.md and benchmarks/results/img/bench-*.png", file=sys.stderr)


if __name__ == "__main__":
    main()
