"""`trispec-vllm` command line: demo, self-check."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trispec-vllm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("selfcheck", help="check the margin kernel and router (no model needed)")
    demo = sub.add_parser("demo", help="run a TriSpec generation on an embedded default")
    demo.add_argument("--lam", type=float, default=0.5, help="margin threshold (lambda)")
    args = parser.parse_args(argv)

    if args.command == "selfcheck":
        from trispec_vllm import selfcheck

        return selfcheck.run()
    if args.command == "demo":
        from trispec_vllm import selfcheck

        return selfcheck.run(lam=args.lam)
    return 2


if __name__ == "__main__":
    sys.exit(main())
