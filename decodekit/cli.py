"""``decodekit info | bench | zoo | demo | profile | generate``: what is built here, the microbenchmarks,
the model zoo, its demo, the speed/quality profile and generation with any method (or ``auto``)."""

from __future__ import annotations

import argparse
import json
import sys


def _info(args) -> int:
    from decodekit._info import format_info, info

    report = info()
    print(json.dumps(report, indent=2) if args.json else format_info(report))
    return 0


def _bench(args) -> int:
    import importlib

    module = importlib.import_module(f"decodekit.bench.bench_{args.family}")
    return module.main(args.rest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="decodekit", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="versions, devices and usable backends")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(run=_info)
    bench = commands.add_parser("bench", help="run a microbenchmark (e.g. `decodekit bench sampling --quick`)")
    bench.add_argument(
        "family", choices=["sampling", "spec_verify", "denoise", "paged_kv", "discrete_diffusion", "generate"],
        help="op family (or `generate`: end-to-end decoders vs Hugging Face) to benchmark"
    )
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="options passed to the benchmark (see --help)")
    bench.set_defaults(run=_bench)
    from decodekit.zoo.cli import add_parser as add_zoo_parser

    add_zoo_parser(commands)
    from decodekit.demo import add_parser as add_demo_parser

    add_demo_parser(commands)
    from decodekit.generate import add_parser as add_generate_parser
    from decodekit.profile import add_parser as add_profile_parser

    add_profile_parser(commands)
    add_generate_parser(commands)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
