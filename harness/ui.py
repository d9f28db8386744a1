"""What a person sees: a progress bar while a run goes, and a readable table at the end (rich)."""
from __future__ import annotations

import contextlib
import math
import sys
from typing import Callable, Iterable, Iterator

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

console = Console(stderr=True)
out_console = Console(width=None if sys.stdout.isatty() else 200)   # pipes and CI logs: wide, not 80

STATUS_STYLE = {"ok": "green", "incorrect": "bold red", "error": "red", "skipped": "dim"}


@contextlib.contextmanager
def progress(total: int, enabled: bool = True) -> Iterator:
    if not enabled or not sys.stderr.isatty():
        def advance(desc: str) -> None:
            pass
        yield advance
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as prog:
        task = prog.add_task("", total=total)
        first = [True]

        def advance(desc: str) -> None:
            if not first[0]:
                prog.advance(task)
            first[0] = False
            prog.update(task, description=desc[:60])
        yield advance
        prog.advance(task)


@contextlib.contextmanager
def loss_bar(enabled: bool, title: str, total: int, describe: Callable[[float], str] = lambda loss: f"loss {loss:.3f}",
             remaining: bool = False) -> Iterator[Callable[[int, float], None]]:
    """A training bar (models/train.py, distill/experiment.py): `advance(step, loss)` moves it one step and shows
    "<title>: <describe(loss)>"; a no-op when disabled. `remaining` adds the estimated time left."""
    if not enabled:
        yield lambda step, loss: None
        return
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    if remaining:
        columns.append(TimeRemainingColumn())
    with Progress(*columns, console=console) as prog:
        task = prog.add_task(title, total=total)
        yield lambda step, loss: prog.update(task, advance=1, description=f"{title}: {describe(loss)}")


def _num(x, fmt: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return format(x, fmt)


def results_table(rows: Iterable[dict], title: str = "") -> Table:
    t = Table(title=title, show_lines=False, header_style="bold")
    for col, justify in (("suite", "left"), ("case", "left"), ("variant", "left"), ("dtype", "left"),
                         ("status", "left"), ("median ms", "right"), ("p20-p80", "right"), ("n", "right"),
                         ("TFLOP/s", "right"), ("GB/s", "right"), ("% peak", "right"), ("speedup", "right"),
                         ("max err", "right")):
        t.add_column(col, justify=justify, overflow="fold")
    last = None
    for r in rows:
        st = r["status"]
        status = f"[{STATUS_STYLE.get(st, '')}]{st}[/]"
        if st != "ok" and r.get("reason"):
            status += f" [dim]{escape(str(r['reason'])[:70])}[/]"   # reasons hold [brackets]: not markup
        if r.get("throttled") is True:          # measured while the GPU was held back by power or heat
            status += f" [yellow]throttled {r.get('throttle_reasons') or ''}[/]"
        key = (r["suite"], r["case"], r["dtype"])
        t.add_row(r["suite"] if key != last else "", r["case"] if key != last else "", r["variant"],
                  r["dtype"] if key != last else "", status,
                  _num(r.get("median_ms"), ".4g"),
                  f"{_num(r.get('p20_ms'), '.3g')}-{_num(r.get('p80_ms'), '.3g')}" if st == "ok" else "",
                  _num(r.get("n"), "d") if st == "ok" else "",
                  _num(r.get("tflops"), ".3g"), _num(r.get("gbps"), ".4g"), _num(r.get("pct_peak"), ".1f"),
                  _num(r.get("speedup"), ".2f") + ("x" if st == "ok" and r.get("speedup") else ""),
                  _num(r.get("max_abs_err"), ".1e"))
        last = key
    return t
