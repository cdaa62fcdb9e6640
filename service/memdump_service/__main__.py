"""Entry point for ``python -m memdump_service``."""

import sys

from memdump_service.cli import main

sys.exit(main())
