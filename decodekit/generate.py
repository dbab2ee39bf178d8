"""``decodekit generate``: write a continuation of a prompt with any demo method on the zoo, or let
``--method auto`` pick one from the measured profile (see :mod:`decodekit.decoders.auto`)."""

from __future__ import annotations

import argparse


def slug(name: str) -> str:
    """The CLI spelling of a demo method name (``"spec chain"`` -> ``"spec-chain"``)."""
    return name.replace(" ", "-")


def _method_slugs() -> list[str]:
    from decodekit.demo import methods
    from decodekit.zoo.tokenizer import ByteTokenizer

    return [slug(m.name) for m in methods(ByteTokenizer())]


def build_auto(models: dict, tokenizer, profile, preference):
    """An AutoDecoder over every demo method the profile measured, each with its demo sampling."""
    from decodekit.decoders import AutoDecoder
    from decodekit.demo import methods

    rows = [m for m in methods(tokenizer) if m.name in profile.candidates]
    return AutoDecoder({m.name: m.build(models) for m in rows}, profile, preference=preference,
                       sampling={m.name: m.sampling for m in rows})


def add_parser(commands) -> None:
    parser = commands.add_parser("generate", help="generate from a prompt on the zoo with one method (or auto)")
    parser.add_argument("--method", required=True, choices=_method_slugs() + ["auto"])
    parser.add_argument("--prompt", required=True, help="text to continue (the corpus layout works best: "
                                                        "'Ruth1:1 Now it came to pass ...\\n')")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", default=None,
                        help="profile JSON for auto (default: ~/.cache/decodekit/profile.json if `decodekit "
                             "profile` wrote it, else the shipped decodekit/zoo/profile_cpu.json)")
    parser.add_argument("--prefer", choices=["fastest", "best"], default="fastest", help="auto's objective")
    parser.add_argument("--max-perplexity", type=float, default=None, help="auto's quality floor (per byte)")
    parser.add_argument("--latency-budget", type=float, default=None, help="auto's latency budget (seconds)")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from decodekit.decoders import NoQualifyingMethodError, Preference, Profile
    from decodekit.demo import load_zoo, methods
    from decodekit.profile import default_profile_path

    if args.max_new_tokens < 1:
        raise SystemExit(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    models, tok = load_zoo()
    prompt = tok.encode(args.prompt.replace("\\n", "\n"))
    if args.method == "auto":
        try:
            preference = Preference(args.prefer, args.max_perplexity, args.latency_budget)
        except ValueError as error:
            raise SystemExit(f"auto preference: {error}")
        path = args.profile or default_profile_path()
        decoder, sampling = build_auto(models, tok, Profile.load(path), preference), None
        print(f"profile: {path}")
    else:
        method = next(m for m in methods(tok) if slug(m.name) == args.method)
        decoder, sampling = method.build(models), method.sampling
    try:
        result = decoder.generate([prompt], max_new_tokens=args.max_new_tokens, sampling=sampling,
                                  stop_token_ids=[tok.eos_token_id], seed=args.seed)
    except NoQualifyingMethodError as error:
        raise SystemExit(str(error))
    stats = result.stats[0]
    print(args.prompt.replace("\\n", "\n") + tok.decode(result.sequences[0]))
    print(f"\n{stats.generated_tokens} tokens in {result.wall_time:.3f} s ({result.tokens_per_second:.1f} tokens/s), "
          f"{stats.forward_calls} forward calls ({stats.tokens_per_forward:.2f} tokens/forward), "
          f"finish: {stats.finish_reason}"
          + ("" if stats.acceptance_rate is None else f", acceptance {stats.acceptance_rate:.3f}"))
    if stats.choice is not None:
        print(format_choice(stats.choice))
    return 0


def format_choice(choice: dict) -> str:
    """Why auto picked its method: the rule's reason and every candidate's profile estimate."""
    lines = [f"auto chose {choice['method']!r}: {choice['reason']}",
             f"estimates at batch size {choice['batch_size']}, {choice['max_new_tokens']} new tokens:"]
    for name, e in choice["estimates"].items():
        verdict = choice["rejected"].get(name, "chosen" if name == choice["method"] else "qualifies")
        lines.append(f"  {name:24s} {e['tokens_per_second']:9.1f} tok/s  {e['latency_s']:8.3f} s  "
                     f"perplexity {e['perplexity']:7.2f}  {verdict}")
    return "\n".join(lines)
