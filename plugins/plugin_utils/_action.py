# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The base class of the collection's action plugins (the controller-side counterpart of amazon.aws
``AnsibleAWSModule``): arguments validated against the spec (types checked, ``type: path`` expanded),
check mode in one place, and every exception turned into a clear ``failed`` result.

For internal collection use only: this is not a public API and may change without notice.
"""

from __future__ import annotations

import getpass
import json
import os
import socket

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.text.converters import to_native
from ansible.plugins.action import ActionBase

from ansible_collections.vmforensics.memdump.plugins.module_utils._client import MemdumpClient, MemdumpError
from ansible_collections.vmforensics.memdump.plugins.module_utils._connection_options import (
    ConnectionOptionsError, collect_connection)
from ansible_collections.vmforensics.memdump.plugins.plugin_utils._custody_names import CustodyError

# Failures whose message already says what failed and what to do.
KNOWN_ERRORS = (CustodyError, MemdumpError, ConnectionOptionsError)


def collection_version():
    """The version of this collection (MANIFEST.json when installed, galaxy.yml in a checkout)."""
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
    try:
        with open(os.path.join(root, 'MANIFEST.json')) as f:
            return json.load(f)['collection_info']['version']
    except (IOError, ValueError, KeyError):
        pass
    try:
        with open(os.path.join(root, 'galaxy.yml')) as f:
            for line in f:
                if line.startswith('version:'):
                    return line.split(':', 1)[1].strip().strip('"\'')
    except IOError:
        pass
    return 'unknown'


class MemdumpActionBase(ActionBase):
    """Subclasses set ``ARGSPEC`` (and optionally the other validation rules) and implement
    ``execute(args, task_vars)``, which returns the result dict. Failures are raised: a
    :class:`~._custody_names.CustodyError` or ``MemdumpError`` with its message, anything else
    (an ``OSError`` of the evidence file system, a bug) is reported with its type and the context
    the plugin recorded in ``self.where`` (VM, dump, file)."""

    TRANSFERS_FILES = False
    _requires_connection = False
    _supports_check_mode = True
    _supports_async = False

    ARGSPEC = {}
    MUTUALLY_EXCLUSIVE = None
    REQUIRED_TOGETHER = None
    REQUIRED_IF = None
    # What the task is, for messages: "memdump_collect".
    NAME = 'memdump'

    def run(self, tmp=None, task_vars=None):
        result = super(MemdumpActionBase, self).run(tmp, task_vars)
        del tmp
        self.where = {}
        self.warnings = []
        try:
            dummy, args = self.validate_argument_spec(
                argument_spec=self.ARGSPEC, mutually_exclusive=self.MUTUALLY_EXCLUSIVE,
                required_together=self.REQUIRED_TOGETHER, required_if=self.REQUIRED_IF)
        except AnsibleActionFail as e:
            result.update(failed=True, msg='%s: %s' % (self.NAME, to_native(e.message)))
            return result
        try:
            result.update(self.execute(args, task_vars or {}))
        except KNOWN_ERRORS as e:
            result.update(failed=True, msg=self._message(to_native(e)))
        except Exception as e:  # pylint: disable=broad-except  # the one place that turns anything into a result
            result.update(failed=True, msg=self._message(
                'unexpected %s: %s. Nothing was deleted; fix the cause (for example the evidence file system) and '
                're-run: a re-run completes what this one started' % (type(e).__name__, to_native(e))))
        if self.warnings:
            result['warnings'] = result.get('warnings', []) + self.warnings
        return result

    def _message(self, text):
        context = ', '.join('%s %s' % (k, v) for k, v in self.where.items() if v)
        return '%s%s: %s' % (self.NAME, ' (%s)' % context if context else '', text)

    def execute(self, args, task_vars):
        raise NotImplementedError

    @property
    def check_mode(self):
        return bool(self._task.check_mode)

    def warn(self, text):
        self.warnings.append(text)

    # -- shared helpers ----------------------------------------------------------------------------

    def on_controller(self):
        """Whether the task's host is the controller itself (connection local, as for localhost)."""
        transport = getattr(self._connection, 'transport', None) or getattr(self._play_context, 'connection', '')
        return to_native(transport).rsplit('.', 1)[-1] == 'local'

    def collect_client(self, args):
        """The client of the service as the controller reaches it (collect_* options)."""
        return MemdumpClient(hints=MemdumpClient.COLLECT_HINTS, **collect_connection(args, self.on_controller()))

    @staticmethod
    def custody_context(args, task_vars):
        """Who, where and with what: the fields every custody event carries."""
        def var(*names):
            for name in names:
                value = task_vars.get(name)
                if value not in (None, ''):
                    return to_native(value)
            return None
        operator = args.get('operator') or var('tower_user_name', 'awx_user_name')
        if not operator:
            try:
                operator = getpass.getuser()
            except Exception:  # pylint: disable=broad-except  # no passwd entry in a container
                operator = str(os.getuid())
        return {'operator': operator.strip(), 'awx_job_id': var('tower_job_id', 'awx_job_id'),
                'controller': socket.getfqdn(),
                'collection_version': args.get('collection_version') or collection_version()}
