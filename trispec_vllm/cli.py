"""`trispec-vllm` command line: demo, self-check, fetch-models, train-drafter, serve, cpu-env,
costs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


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
    costs = sub.add_parser(
        "costs",
        help="list the cost-aware step's measurements kept across engine restarts",
    )
    costs.add_argument("--clear", action="store_true", help="delete them (engines re-measure)")
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
        advice = cpu_runtime.dtype_advice()
        for line in [*cpu_runtime.missing(), *([advice] if advice else [])]:
            print(f"trispec-vllm cpu-env: {line}", file=sys.stderr)  # stdout is for `eval`
        return 0
    if args.command == "costs":
        return show_costs(clear=args.clear)
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


def show_costs(clear: bool) -> int:
    """One paragraph per kept cost file (`cost_memory`); `clear` deletes them."""
    from trispec_vllm import envs
    from trispec_vllm.policy.cost_file import describe

    folder = envs.cost_dir()
    files = describe(folder)
    if not files:
        print(f"no kept measurements in {folder}")
        return 0
    for entry in files:
        key = entry["key"]
        if clear:
            Path(entry["path"]).unlink(missing_ok=True)
            print(f"deleted {entry['path']}")
        elif key is None:
            print(f"{entry['path']}: unreadable (ignored by engines, replaced at their next save)")
        else:
            hw = key.get("hardware", {})
            print(
                f"{entry['path']}\n  target {key.get('target', ['?'])[0]}, drafter "
                f"{key.get('drafter')}, proxy {key.get('trispec', {}).get('proxy_model')}\n"
                f"  {hw.get('name') or hw.get('device')}, {hw.get('threads')} threads, "
                f"TP {hw.get('tp')}; saved {entry['days']:.1f} days ago"
            )
            for kind, per_class in entry["rates"].items():
                cells = ", ".join(f"batch <= {c}: {r}" for c, r in per_class.items())
                print(f"  {kind} tok/s: {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
