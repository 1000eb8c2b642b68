"""Put the tables of the deploy benchmarks' JSON reports into a docs page (nothing is measured here).

    python benchmarks/deploy_docs.py benchmarks/results/deploy_a0.json benchmarks/results/deploy_b1.json \\
        benchmarks/results/repvgg_vs_resnet_cpu.json --docs docs/benchmarks.md

    python benchmarks/deploy_docs.py --compare first.json second.json    # the same command run twice: within 10 %?

Each report replaces the block ``<!-- <stem>:start -->`` ... ``<!-- <stem>:end -->`` of the page (``stem``: the
JSON file's name without ``.json``) with its markdown: `repzoo bench --runtimes`'s (``repzoo.deploy.markdown``)
or bench_repvgg_vs_resnet.py's. tests/test_deploy.py checks that the page and the committed JSON agree.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def table(report: dict) -> str:
    """The markdown of a report of either benchmark."""
    if "paper" in report:
        from bench_repvgg_vs_resnet import markdown
    else:
        from repzoo.deploy import markdown
    return markdown(report)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+")
    parser.add_argument("--docs", default="docs/benchmarks.md")
    parser.add_argument("--compare", action="store_true", help="two reports of `repzoo bench --runtimes`: the ratio "
                        "of every figure they share, and whether each is within 10 %%")
    args = parser.parse_args(argv)
    if args.compare:
        from repzoo.deploy import STEADY, compare

        first, second = (json.loads(Path(p).read_text(encoding="utf-8")) for p in args.reports)
        ratios = compare(first, second)
        for model, runtime, batch, ratio in ratios:
            print(f"{model} {runtime} batch {batch}: {ratio:.3f}x" + ("" if abs(ratio - 1) <= STEADY else "  (over 10 %)"))
        off = [r for r in ratios if abs(r[3] - 1) > STEADY]
        print(f"{len(ratios) - len(off)} of {len(ratios)} figures within 10 %")
        return 1 if off else 0
    page = Path(args.docs)
    text = page.read_text(encoding="utf-8")
    for path in map(Path, args.reports):
        stem = path.name[: -len(".json")]
        block = re.compile(rf"(<!-- {re.escape(stem)}:start -->\n).*?(<!-- {re.escape(stem)}:end -->)", re.S)
        if not block.search(text):
            sys.exit(f"{page} has no <!-- {stem}:start --> ... <!-- {stem}:end --> block for {path}")
        body = table(json.loads(path.read_text(encoding="utf-8")))
        text = block.sub(lambda m, body=body: m.group(1) + body + "\n" + m.group(2), text)
    page.write_text(text, encoding="utf-8")
    print(f"updated {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
