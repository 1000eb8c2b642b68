"""The figures of docs/benchmarks.md, from the JSON report of ``repzoo bench --json`` (nothing is measured here).

    repzoo bench --models RepVGG-A0,... --json benchmarks/results/bench_cpu.json --no-train --no-load --quiet
    python benchmarks/plot_bench.py benchmarks/results/bench_cpu.json --out docs/assets --docs docs/benchmarks.md

writes ``deploy_speedup.png`` (the train → deploy speed-up per model, grouped by family) and
``top1_vs_speed.png`` (released top-1 against images/s, both forms), and with ``--docs`` replaces the table
between ``<!-- bench:start -->`` and ``<!-- bench:end -->`` with what ``repzoo bench`` prints for that report
(tests/test_docs.py checks that the page and the JSON agree).
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from repzoo.bench import markdown, plot, plot_speedup

START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def docs_block(report: dict) -> str:
    """What the page holds between the markers: the command's own markdown of the report."""
    return f"{START}\n{markdown(report)}\n{END}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", help="the JSON of `repzoo bench --json`")
    parser.add_argument("--out", default="docs/assets", help="folder of the PNGs")
    parser.add_argument("--docs", help="a markdown page whose bench block to replace with this report's table")
    args = parser.parse_args(argv)
    report = json.loads(Path(args.report).read_text(encoding="utf-8"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(plot_speedup(report, str(out / "deploy_speedup.png")))
    print(plot(report, str(out / "top1_vs_speed.png")))
    if args.docs:
        page = Path(args.docs)
        text = page.read_text(encoding="utf-8")
        block = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
        if not block.search(text):
            parser.error(f"{page} has no {START} ... {END} block")
        page.write_text(block.sub(lambda _: docs_block(report), text), encoding="utf-8")
        print(f"{page}: table replaced")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
