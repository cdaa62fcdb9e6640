# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The one lock of the custody code: an exclusive ``flock`` on a (created, empty) file.

For internal collection use only: this is not a public API and may change without notice.
"""

from __future__ import annotations

import fcntl
import os

LOCK_MODE = 0o600


class FileLock(object):
    """An exclusive flock on ``path`` as a context manager; the kernel drops it if the process dies."""

    def __init__(self, path):
        self.path = path
        self._fd = None

    @property
    def held(self):
        return self._fd is not None

    def __enter__(self):
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, LOCK_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def __exit__(self, *exc):
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
