"""Command line: memdump-service [options]."""

import logging
import os
import sys
import typing as t

from memdump_service.config import ConfigError, parse_args, split_listen


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
    import uvicorn  # pylint: disable=import-outside-toplevel

    from memdump_service.app import create_app  # pylint: disable=import-outside-toplevel

    try:
        app = create_app(settings)
    except (ConfigError, OSError) as exc:
        print(f"memdump-service: {exc}", file=sys.stderr)
        return 2
    host, port = split_listen(settings.listen)
    uvicorn.run(app, host=host, port=port, ssl_certfile=settings.tls_cert, ssl_keyfile=settings.tls_key,
                log_level=settings.log_level.lower(), timeout_graceful_shutdown=10)
    return 0
