"""`python -m llmlab.bench [--only NAME[,NAME]] [benchmark flags...]`: run llmlab's benchmarks one after another.

Flags this entry point does not know (`--queries`, `--threads`, ...) are passed on to every selected benchmark;
`python -m llmlab.bench.<name> --help`-style help is available with `--only <name> --help`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from llmlab.bench import BENCHMARKS

# The benchmarks run offline: set before anything imports huggingface_hub, datasets or wandb.
for _key, _value in (
    ("HF_HUB_OFFLINE", "1"),
    ("HF_DATASETS_OFFLINE", "1"),
    ("WANDB_MODE", "disabled"),
    ("TOKENIZERS_PARALLELISM", "false"),
):
    os.environ.setdefault(_key, _value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmlab.bench", description=__doc__.splitlines()[0], add_help=False)
    parser.add_argument(
        "--only",
        default=",".join(BENCHMARKS),
        help=f"comma-separated benchmarks to run (default: all of {', '.join(BENCHMARKS)})",
    )
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args, rest = parser.parse_known_args(argv)
    if args.list:
        print("\n".join(BENCHMARKS))
        return 0
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown or not names:
        print(
            f"llmlab.bench: unknown benchmark(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(BENCHMARKS)}",
            file=sys.stderr,
        )
        return 2
    for name in names:
        importlib.import_module(BENCHMARKS[name]).main(rest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
