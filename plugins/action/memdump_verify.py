# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Action plugin memdump_verify: check an incident's evidence against its custody log
(documentation: plugins/modules/memdump_verify.py). Runs on the controller only."""

from __future__ import annotations

import os

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.text.converters import to_native
from ansible.plugins.action import ActionBase

from ansible_collections.vmforensics.memdump.plugins.action.memdump_collect import custody_context
from ansible_collections.vmforensics.memdump.plugins.module_utils import _custody as custody


class ActionModule(ActionBase):

    TRANSFERS_FILES = False
    _requires_connection = False

    ARGSPEC = dict(
        evidence_dir=dict(type='path', required=True),
        label=dict(type='str', required=True),
        allowed_signers=dict(type='path'),
        allow_unsigned=dict(type='bool', default=False),
        signing_key=dict(type='path', no_log=False),
        operator=dict(type='str'),
        collection_version=dict(type='str'),
    )

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        del tmp
        dummy, args = self.validate_argument_spec(argument_spec=self.ARGSPEC)
        try:
            incident = custody.incident_dir(args['evidence_dir'], args['label'])
            if args.get('allowed_signers') and not os.path.isfile(args['allowed_signers']):
                raise custody.CustodyError('allowed_signers file %s does not exist' % args['allowed_signers'])
            if not os.path.isdir(incident):
                raise custody.CustodyError('no evidence of %s: %s is not a directory' % (args['label'], incident))
            report = custody.verify_incident(incident, args.get('allowed_signers'), args['allow_unsigned'])
        except custody.CustodyError as e:
            raise AnsibleActionFail(to_native(e))
        result.update(changed=False, incident_dir=incident, events=report['events'], head=report['head'],
                      images=report['images'], unsigned=report['unsigned'], signers=report['signers'],
                      problems=report['problems'], reverified=[])
        if report['warnings']:
            result['warnings'] = report['warnings']
        if not report['ok']:
            result['failed'] = True
            result['msg'] = 'the evidence of %s in %s does NOT verify: %s' % (
                args['label'], incident, '; '.join(report['problems']))
            return result
        if args.get('signing_key') and not self._task.check_mode:
            ctx = custody_context(args, task_vars)
            with custody.CustodyLog(incident, args['signing_key'], create=False) as log:
                lines = log.lines()
                if len(lines) != report['events'] or custody.sha256_hex(lines[-1]) != report['head']:
                    raise AnsibleActionFail('the custody log of %s changed while it was verified: run verify again'
                                            % args['label'])
                kinds = custody.by_dump(log.events())
                for image in report['images']:
                    ver = kinds[image['dump_id']]['verified']
                    event = custody.base_event('reverified', ver['label'], ver['host'], ver['vm'], image['dump_id'],
                                               {'host': ver.get('service_host'), 'vm_uuid': ver.get('vm_uuid'),
                                                'method': ver.get('method'), 'format': ver.get('format'),
                                                'size_bytes': image['size_bytes'], 'sha256': image['sha256'],
                                                'paused_sec': ver.get('paused_sec')}, ctx)
                    event['evidence_file'] = image['file']
                    event['verified_head'] = report['head']
                    result['reverified'].append(log.append(event)['seq'])
                result['head'] = custody.sha256_hex(log.lines()[-1])
                result['events'] += len(result['reverified'])
            result['changed'] = bool(result['reverified'])
        result['msg'] = 'the evidence of %s verifies: %d events, chain head %s, %d images intact%s' % (
            args['label'], result['events'], result['head'], len(report['images']),
            ', signed by %s' % ', '.join(report['signers']) if report['signers'] else ', UNSIGNED')
        return result
