"""Entry point: ``python -m bench <benchmark> [options]``.

A benchmark is a module of this package with a docstring (its help text), ``add_arguments(parser)`` and
``run(args) -> int``; register it in BENCHMARKS to make it a subcommand.
"""

from __future__ import annotations

import argparse
import importlib
import sys

BENCHMARKS = {
    "losses": "bench.losses",
    "loader": "bench.loader",
    "metrics": "bench.metrics",
    "inference": "bench.inference",
    "window": "bench.window",
    "gpu-check": "bench.gpu_check",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description="petseg micro-benchmarks.")
    commands = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name, module_name in BENCHMARKS.items():
        module = importlib.import_module(module_name)
        doc = (module.__doc__ or name).strip()
        command = commands.add_parser(
            name,
            help=doc.splitlines()[0],
            description=doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
