"""The rules the service enforces on names, labels and formats: one definition, which the request checks use and
/health publishes (``rules``), so that the collection asks the service instead of keeping a copy."""

import re
import typing as t

from memdump_service.virt import FORMATS, LIVE_FORMAT

VM_NAME_MAX = 255
# Characters a VM name may not hold: '/' (it would leave the dump dir) and every character str.splitlines()
# splits on or a terminal interprets: the control characters C0, DEL and C1 (Unicode category Cc) and the line
# and paragraph separators (Zl, Zp).
CONTROL_CLASS = "\\x00-\\x1f\\x7f-\\x9f\\u2028\\u2029"
VM_NAME_FORBIDDEN = "[/" + CONTROL_CLASS + "]"
VM_NAME_RESERVED = (".", "..")
LABEL_PATTERN = "^[A-Za-z0-9._:@+-]{1,128}$"

CONTROL_RE = re.compile("[" + CONTROL_CLASS + "]")
VM_NAME_FORBIDDEN_RE = re.compile(VM_NAME_FORBIDDEN)
LABEL_RE = re.compile(LABEL_PATTERN)


def is_label(value: str) -> bool:
    """Whether the whole of value matches LABEL_PATTERN ("$" alone would also match before a trailing newline)."""
    return LABEL_RE.fullmatch(value) is not None


def extension(fmt: str) -> str:
    """The file extension of an image of format fmt."""
    return FORMATS[fmt][1]


def published() -> t.Dict[str, t.Any]:
    """The rules as /health publishes them."""
    formats = {fmt: extension(fmt) for fmt in FORMATS}
    # A live dump (method live) always writes LIVE_FORMAT.
    formats["live"] = extension(LIVE_FORMAT)
    return {
        "vm_name": {"max_length": VM_NAME_MAX, "forbidden": VM_NAME_FORBIDDEN, "reserved": list(VM_NAME_RESERVED)},
        "label": {"pattern": LABEL_PATTERN},
        "formats": formats,
    }
