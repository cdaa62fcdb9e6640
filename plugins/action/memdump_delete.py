# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Action plugin memdump_delete: with a custody log, delete only a verified image and record the deletion.

The module (plugins/modules/memdump_delete.py) runs on the host as usual; this part, on the
controller, checks the custody log before and appends the ``deleted_from_host`` event after."""

from __future__ import annotations

import os

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.text.converters import to_native
from ansible.plugins.action import ActionBase

from ansible_collections.vmforensics.memdump.plugins.action.memdump_collect import custody_context
from ansible_collections.vmforensics.memdump.plugins.module_utils import _custody as custody


class ActionModule(ActionBase):

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        del tmp
        task_vars = task_vars or {}
        args = dict(self._task.args)
        if not args.get('evidence_dir'):
            result.update(self._execute_module(module_name='vmforensics.memdump.memdump_delete', module_args=args,
                                               task_vars=task_vars))
            return result
        try:
            label = custody.check_label(args.get('label'))
            dump_id = custody.check_dump_id(args.get('dump_id'))
            host = custody.check_host(args.get('host') or task_vars.get('inventory_hostname') or 'localhost')
            incident = custody.incident_dir(args['evidence_dir'], label)
            if not os.path.exists(os.path.join(incident, custody.LOG_NAME)):
                raise custody.CustodyError('no custody log %s: deletion needs a verified collection'
                                           % os.path.join(incident, custody.LOG_NAME))
            kinds = custody.by_dump(custody.CustodyLog(incident, create=False).events()).get(dump_id, {})
            verified = kinds.get('verified')
            if verified is None:
                raise custody.CustodyError('dump %s has no verified collection in %s: its image stays on the host'
                                           % (dump_id, os.path.join(incident, custody.LOG_NAME)))
            if args.get('vm') and verified.get('vm') != args['vm']:
                raise custody.CustodyError('the verified collection of dump %s is of VM %r, not %r: not deleted'
                                           % (dump_id, verified.get('vm'), args['vm']))
        except custody.CustodyError as e:
            raise AnsibleActionFail(to_native(e))
        args['sha256'] = verified['sha256']
        args['vm'] = verified['vm']
        module_result = self._execute_module(module_name='vmforensics.memdump.memdump_delete', module_args=args,
                                             task_vars=task_vars)
        result.update(module_result)
        if module_result.get('failed') or self._task.check_mode:
            return result
        record = module_result.get('dump') or {}
        if record.get('file_deleted') and 'deleted_from_host' not in kinds:
            ctx = custody_context(args, task_vars)
            try:
                with custody.CustodyLog(incident, args.get('signing_key')) as log:
                    if 'deleted_from_host' not in custody.by_dump(log.events()).get(dump_id, {}):
                        event = custody.base_event('deleted_from_host', label, host, verified['vm'], dump_id,
                                                   dict(record, sha256=verified['sha256'],
                                                        size_bytes=verified.get('size_bytes')), ctx)
                        event['deleted_by_this_run'] = bool(module_result.get('deleted'))
                        event['evidence_file'] = verified.get('evidence_file')
                        result['event'] = log.append(event)['seq']
                    log.write_manifest()
            except custody.CustodyError as e:
                raise AnsibleActionFail('the image of dump %s was deleted but the custody event could not be written: %s'
                                        % (dump_id, to_native(e)))
            result['changed'] = True
        return result
