"""The `prefstudy` command. Each subcommand has --help."""

from __future__ import annotations

import argparse
import sys


def _demo(args) -> int:
    import pandas as pd

    from .data import data_dir, load_pairs
    from .logprobs import score_pairs
    from .models import load_model

    pairs = load_pairs(args.data or data_dir() / "pairs")
    per_lang = {}
    for p in pairs:  # a handful from each language
        per_lang.setdefault(p.meta.get("lang", "?"), []).append(p)
    chosen = [p for group in per_lang.values() for p in group[: args.pairs]]
    model, tokenizer = load_model(args.model, device=args.device)
    scores = score_pairs(model, tokenizer, chosen)
    scores.insert(1, "prompt", [p.prompt_text[:32] for p in chosen])
    cols = ["prompt", "len_p", "len_n", "nll_sum_p", "nll_sum_n", "gap_sum", "loss_p", "loss_n",
            "gap"]
    with pd.option_context("display.width", 160, "display.max_columns", 20,
                           "display.float_format", "{:.3f}".format):
        print(f"{args.model}: loss = cross-entropy of the response; gap = loss_n − loss_p")
        print(scores[cols].to_string(index=False))
        print("\nstd of gap across pairs:  summed = {:.2f} nats,  token-mean = {:.3f} nats".format(
            scores.gap_sum.std(), scores.gap.std()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prefstudy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="score a few bundled pairs with the real model")
    demo.add_argument("--model", default="smollm2-135m-instruct")
    demo.add_argument("--data", default=None, help="pairs file or folder (default: bundled)")
    demo.add_argument("--pairs", type=int, default=4, help="pairs per language")
    demo.add_argument("--device", default="auto")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
