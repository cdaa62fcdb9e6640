# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Base module class of the collection (connection options: ``_connection_options.py``).

For internal collection use only: this is not a public API and may change without notice.
"""

from __future__ import annotations

import gc
import traceback

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vmforensics.memdump.plugins.module_utils._client import MemdumpClient, MemdumpError
from ansible_collections.vmforensics.memdump.plugins.module_utils._connection_options import (  # noqa: F401  pylint: disable=unused-import
    HOST_OPTIONS as CONNECTION_ARGSPEC,
    generate_argspec,
)


class MemdumpModule(AnsibleModule):
    """An AnsibleModule with a :class:`MemdumpClient` built from the connection options.

    :meth:`run` owns the error path: a :class:`MemdumpError` becomes ``fail_json`` here, once for
    every module.
    """

    def __init__(self, *args, **kwargs):
        super(MemdumpModule, self).__init__(*args, **kwargs)
        self._client = None

    def exit_json(self, **kwargs):
        # The result is final and the process is about to end: frozen objects are skipped by the
        # interpreter's last garbage collection, which otherwise costs ~30 ms between a dump's
        # completion and the task's end (docs/performance.md, P1). Nothing relies on finalizers here.
        gc.freeze()
        super(MemdumpModule, self).exit_json(**kwargs)

    def fail_json(self, msg, **kwargs):
        gc.freeze()
        super(MemdumpModule, self).fail_json(msg, **kwargs)

    def run(self, fn):
        """Calls ``fn(self)``, which ends with ``exit_json``; a MemdumpError fails the task with its URL and HTTP status."""
        try:
            fn(self)
        except MemdumpError as e:
            self.fail_json(msg=e.msg, url=e.url, status=e.status, exception=traceback.format_exc())

    @property
    def client(self):
        if self._client is None:
            params = self.params
            self._client = MemdumpClient(
                url=params['url'], token=params['token'], timeout=params['request_timeout'],
                validate_certs=params['validate_certs'], ca_path=params['ca_path'])
        return self._client
