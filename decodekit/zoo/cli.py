"""``decodekit zoo train``: train (some of) the zoo's models on the KJV and write their weights."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path


def add_parser(commands) -> None:
    """Register ``zoo train`` on the top-level CLI's subcommands."""
    from decodekit.zoo import NAMES

    zoo = commands.add_parser("zoo", help="the tiny KJV model zoo (train it)")
    sub = zoo.add_subparsers(dest="zoo_command", required=True)
    train = sub.add_parser("train", help="train zoo models (CPU: minutes per model; GPU: much faster)")
    train.add_argument("--models", nargs="+", choices=NAMES, default=list(NAMES), help="default: all")
    train.add_argument("--steps", type=int, default=None, help="optimiser steps per model (default: the zoo's)")
    train.add_argument("--corpus", default=None,
                       help="KJV text, one verse per line (default: run `bible`, from apt-get install bible-kjv)")
    train.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default cpu)")
    train.add_argument("--out", default=None, help="weights directory (default: inside the package)")
    train.add_argument("--seed", type=int, default=None, help="override every model's seed")
    train.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    train.set_defaults(run=run_train)


def run_train(args) -> int:
    import torch

    from decodekit.zoo import WEIGHTS_DIR, ZOO
    from decodekit.zoo.corpus import HELD_OUT_BOOKS, fetch_kjv, parse_verses, split_by_books
    from decodekit.zoo.train import train

    if args.steps is not None and args.steps < 1:
        raise SystemExit(f"--steps must be >= 1, got {args.steps}")
    if args.threads:
        torch.set_num_threads(args.threads)
    train_verses, held_out = split_by_books(parse_verses(fetch_kjv(args.corpus)))
    print(f"corpus: {len(train_verses)} training verses, {len(held_out)} held out ({', '.join(HELD_OUT_BOOKS)})")
    out_root = Path(args.out) if args.out else WEIGHTS_DIR
    for name in args.models:
        spec = ZOO[name]
        settings = spec.settings
        if args.steps is not None:
            settings = replace(settings, steps=args.steps)
        if args.seed is not None:
            settings = replace(settings, seed=args.seed)
        _, meta = train(spec.kind, spec.config, train_verses, held_out, settings, device=args.device,
                        out_dir=out_root / name, name=name)
        print(json.dumps({k: meta[k] for k in ("name", "parameters", "final_loss", "held_out_bits_per_byte",
                                                "seconds_per_step")}))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="decodekit")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.run(args)
