# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Action plugin memdump_delete: the deletion of an image from the host as a recorded transaction.

With ``evidence_dir``: the image's collection is verified in full first (the chain and the signatures
of the custody log, the controller's copy re-hashed), a signed ``deleting`` intent is appended, the
module (plugins/modules/memdump_delete.py) deletes on the host, and the outcome (``deleted_from_host``
or ``delete_failed``) is appended. A run stopped in between leaves the intent without an outcome, and
the next run completes it. Without ``evidence_dir`` the module runs on its own and needs ``sha256``."""

from __future__ import annotations

import os

from ansible_collections.vmforensics.memdump.plugins.module_utils._connection_options import (
    HOST_OPTIONS, delete_argspec)
from ansible_collections.vmforensics.memdump.plugins.plugin_utils._action import MemdumpActionBase
from ansible_collections.vmforensics.memdump.plugins.plugin_utils import _custody_log as log_
from ansible_collections.vmforensics.memdump.plugins.plugin_utils import _custody_names as names
from ansible_collections.vmforensics.memdump.plugins.plugin_utils._custody_verify import verify_incident

CustodyError = names.CustodyError
MODULE = 'vmforensics.memdump.memdump_delete'


class ActionModule(MemdumpActionBase):

    NAME = 'memdump_delete'
    ARGSPEC = delete_argspec()
    REQUIRED_TOGETHER = [('evidence_dir', 'label')]

    def _module_args(self, **values):
        """Host-side options as the task gave them (so the module's own environment fallbacks apply on
        the host), plus what the module checks."""
        raw = self._task.args
        out = dict((k, raw[k]) for k in HOST_OPTIONS if raw.get(k) is not None)
        out.update((k, v) for k, v in values.items() if v is not None)
        return out

    def _delete_on_host(self, task_vars, **values):
        return self._execute_module(module_name=MODULE, module_args=self._module_args(**values), task_vars=task_vars)

    def execute(self, args, task_vars):
        dump_id = names.check_dump_id(args['dump_id'])
        self.where.update(dump=dump_id, vm=args.get('vm'))
        if not args.get('evidence_dir'):
            if not args.get('sha256') or not names.SHA256_RE.match(args['sha256']):
                raise CustodyError('without evidence_dir (no custody log to check and record in), memdump_delete needs '
                                   'sha256: the SHA-256 of a copy you verified; the service deletes only an image with '
                                   'that hash. Prefer evidence_dir and label, which verify the collection and record '
                                   'the deletion')
            self.warn('dump %s: deleted without a custody log (no evidence_dir): nothing records this deletion'
                      % dump_id)
            return self._delete_on_host(task_vars, dump_id=dump_id, vm=args.get('vm'), sha256=args['sha256'])
        return self._transaction(args, task_vars, dump_id)

    def _transaction(self, args, task_vars, dump_id):
        label = names.check_label(args['label'])
        host = names.check_host(args.get('host') or task_vars.get('inventory_hostname') or 'localhost')
        incident = names.incident_dir(args['evidence_dir'], label)
        path = os.path.join(incident, log_.LOG_NAME)
        self.where['log'] = path
        if not os.path.exists(path):
            raise CustodyError('no custody log %s: an image is deleted only after its verified collection' % path)
        # Without allowed signers no signature is checked, so an unsigned event is no weaker than a signed one;
        # the deleting event records what was checked.
        signers = args.get('allowed_signers')
        report = verify_incident(incident, signers, allow_unsigned=args['allow_unsigned'] or not signers,
                                 skip_signatures=not signers, only_dump=dump_id, label=label)
        kinds = log_.by_dump(report.events).get(dump_id, {})
        verified = kinds.get('verified')
        if verified is None:
            raise CustodyError('dump %s has no verified collection in %s: its image stays on the host' % (dump_id, path))
        if args.get('vm') and verified.get('vm') != args['vm']:
            raise CustodyError('the verified collection of dump %s is of VM %r, not %r: not deleted'
                               % (dump_id, verified.get('vm'), args['vm']))
        if verified.get('host') != host:
            raise CustodyError('the verified collection of dump %s was collected from host %r, not %r: not deleted'
                               % (dump_id, verified.get('host'), host))
        self.where['vm'] = verified['vm']
        if not report.ok:
            raise CustodyError('the collection of dump %s does not verify, so its image stays on the host: %s'
                               % (dump_id, '; '.join(report.problems)))
        for warning in report.warnings:
            self.warn(warning)
        checked = report.as_result()['checked']
        out = {'changed': False, 'deleted': False, 'checked': checked, 'event': None,
               'custody_head': log_.head_of(label, report.lines)}
        if 'deleted_from_host' in kinds and not log_.pending_deletion(kinds) \
                and kinds['deleted_from_host']['seq'] > (kinds.get('deleting') or {}).get('seq', -1):
            out['msg'] = 'the image of dump %s was already deleted from the host (custody event seq %d)' % (
                dump_id, kinds['deleted_from_host']['seq'])
            return out
        if self.check_mode:
            result = self._delete_on_host(task_vars, dump_id=dump_id, vm=verified['vm'], sha256=verified['sha256'])
            result['checked'] = checked
            return result

        ctx = self.custody_context(args, task_vars)
        with log_.CustodyLog(incident, args.get('signing_key'), create=False) as log:
            lines = log.lines()
            if lines[:len(report.lines)] != report.lines:
                raise CustodyError('the custody log %s changed while it was verified: run again' % path)
            kinds = log_.by_dump(log.events()).get(dump_id, {})
            if log_.pending_deletion(kinds):
                intent = kinds['deleting']  # a run stopped after its intent: this one completes it
            else:
                intent = log.append(log_.event_like(
                    'deleting', verified, ctx, evidence_file=verified.get('evidence_file'),
                    verified_head=report.head, signatures_checked=bool(args.get('allowed_signers')),
                    signatures_verified=checked['signatures_verified'], signers=checked['signers'],
                    image_rehashed=True))
            log.write_manifest()
        result = self._delete_on_host(task_vars, dump_id=dump_id, vm=verified['vm'], sha256=verified['sha256'])
        with log_.CustodyLog(incident, args.get('signing_key'), create=False) as log:
            if result.get('failed'):
                event = log.append(log_.event_like('delete_failed', verified, ctx, intent_seq=intent['seq'],
                                                   error=str(result.get('msg'))[:2000]))
            else:
                record = result.get('dump') or {}
                if not record.get('file_deleted'):
                    result.update(failed=True, msg='the service did not delete the image of dump %s (its record says '
                                  'file_deleted=%r)' % (dump_id, record.get('file_deleted')))
                    event = log.append(log_.event_like('delete_failed', verified, ctx, intent_seq=intent['seq'],
                                                       error=result['msg']))
                else:
                    event = log.append(log_.event_like(
                        'deleted_from_host', verified, ctx, intent_seq=intent['seq'],
                        evidence_file=verified.get('evidence_file'), deleted_by_this_run=bool(result.get('deleted'))))
            log.write_manifest()
            result['custody_head'] = log.head(label)
        result.update(event=event['seq'], intent=intent['seq'], checked=checked, changed=True)
        if result.get('failed'):
            result['msg'] = ('%s; recorded as custody event seq %d (delete_failed); re-run to try again'
                             % (result.get('msg'), event['seq']))
        return result
