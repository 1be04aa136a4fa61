"""`trispec-vllm` command line: demo, self-check, fetch-models, train-drafter, serve, cpu-env."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trispec-vllm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("selfcheck", help="check the margin kernel and router (no model needed)")
    demo = sub.add_parser("demo", help="run a TriSpec generation on an embedded default")
    demo.add_argument("--lam", type=float, default=0.5, help="margin threshold (lambda)")
    demo.add_argument("--max-tokens", type=int, default=None)
    demo.add_argument(
        "--tiny", action="store_true", help="tiny random pair (no download, noise text)"
    )
    demo.add_argument("--verbose", action="store_true", help="show vLLM's INFO logging")
    sub.add_parser(
        "cpu-env",
        help='print the exports vLLM\'s CPU runtime wants (eval "$(trispec-vllm cpu-env)")',
    )
    from trispec_vllm import fetch, serve
    from trispec_vllm.drafter import cli as drafter_cli

    fetch.add_arguments(
        sub.add_parser(
            "fetch-models",
            help="download and convert the Qwen2.5-Coder 1.5B/0.5B pair (cached)",
        )
    )

    drafter_cli.add_arguments(
        sub.add_parser(
            "train-drafter",
            help="distil the learned drafter's head from the proxy (offline warm start)",
        )
    )
    serve.add_arguments(
        sub.add_parser(
            "serve",
            help="vLLM's OpenAI-compatible server with TriSpec (other flags go to vLLM)",
        )
    )
    args, rest = parser.parse_known_args(argv)
    if args.command == "serve":
        return serve.run(args, rest)
    if args.command == "fetch-models":
        return fetch.run(args)
    if args.command == "train-drafter":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return drafter_cli.run(args)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")

    if args.command == "cpu-env":
        from trispec_vllm import cpu_runtime

        sys.stdout.write(cpu_runtime.shell_exports(cpu_runtime.recommended()))
        return 0
    if args.command == "selfcheck":
        from trispec_vllm import selfcheck

        return selfcheck.run()
    if args.command == "demo":
        from trispec_vllm import demo as demo_mod

        return demo_mod.run(
            margin_threshold=args.lam,
            max_tokens=args.max_tokens,
            tiny=args.tiny,
            verbose=args.verbose,
        )
    return 2


if __name__ == "__main__":
    sys.exit(main())
