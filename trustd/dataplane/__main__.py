"""``python -m trustd.dataplane --config F``: the same as ``trustd proxy --config F``."""

from __future__ import annotations

import argparse
import sys

from trustd.dataplane.run import run
from trustd.errors import TrustdError
from trustd.telemetry.logging import configure as configure_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trustd proxy", description="the bundled mTLS sidecar")
    parser.add_argument("--config", required=True, help="proxy configuration file (YAML)")
    parser.add_argument("--log-level", default="info", help="debug, info, warning or error")
    args = parser.parse_args(argv)
    configure_logging(level=args.log_level)
    try:
        return run(args.config)
    except TrustdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
