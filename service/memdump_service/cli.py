"""Command line: memdump-service [options]."""

import logging
import os
import sys
import typing as t

from memdump_service.config import ConfigError, parse_args


def main(argv: t.Optional[t.Sequence[str]] = None) -> int:
    """Run the service until interrupted."""
    try:
        settings = parse_args(argv)
    except ConfigError as exc:
        print(f"memdump-service: {exc}", file=sys.stderr)
        return 2
    # Images, the job database and its WAL/SHM files are evidence: nothing the service creates is for other users.
    os.umask(0o077)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # pylint: disable=import-outside-toplevel
    from memdump_service.app import create_app
    from memdump_service.server import serve

    try:
        serve(settings, create_app(settings))
    except (ConfigError, OSError) as exc:
        print(f"memdump-service: {exc}", file=sys.stderr)
        return 2
    return 0
