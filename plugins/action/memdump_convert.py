# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Action plugin memdump_convert: derive an ELF core from a collected live dump (QEMU migration stream)
and record it as a ``derived`` custody event (documentation: plugins/modules/memdump_convert.py).
Runs on the controller only."""

from __future__ import annotations

import os

from ansible_collections.vmforensics.memdump.plugins.plugin_utils._action import MemdumpActionBase
from ansible_collections.vmforensics.memdump.plugins.plugin_utils import _custody_log as log_
from ansible_collections.vmforensics.memdump.plugins.plugin_utils import _custody_names as names
from ansible_collections.vmforensics.memdump.plugins.plugin_utils import _qevm2elf as qevm2elf

CustodyError = names.CustodyError
# The record's format of a live dump (QEMU's migration stream).
STREAM_FORMAT = 'qemu-migration'
# What the event keeps of the converter's page-by-page check (the whole report goes to the task result).
CHECK_FIELDS = ('ok', 'pages_checked', 'pages_equal', 'pages_mismatched', 'pages_missing_from_elf',
                'elf_pages_not_in_stream_nonzero', 'records_kept_apart', 'layout_problems')


def derived_relpath(source_rel):
    """The derived ELF sits next to the stream it comes from: ``<stream file>.elf``."""
    return source_rel + '.elf'


class ActionModule(MemdumpActionBase):

    NAME = 'memdump_convert'
    ARGSPEC = dict(
        evidence_dir=dict(type='path', required=True),
        label=dict(type='str', required=True),
        dump_id=dict(type='str', required=True),
        signing_key=dict(type='path', no_log=False),
        operator=dict(type='str'),
        collection_version=dict(type='str'),
    )

    def execute(self, args, task_vars):
        label = names.check_label(args['label'])
        dump_id = names.check_dump_id(args['dump_id'])
        incident = names.incident_dir(args['evidence_dir'], label)
        self.where.update(dump=dump_id, incident=incident)
        if not os.path.isfile(os.path.join(incident, log_.LOG_NAME)):
            raise CustodyError('no custody log in %s: collect the dump first (memdump_collect)' % incident)
        kinds = log_.by_dump(log_.CustodyLog(incident, create=False).events()).get(dump_id, {})
        verified = kinds.get('verified')
        if verified is None:
            raise CustodyError('dump %s has no verified collection in %s: only a collected, verified image is converted'
                               % (dump_id, incident))
        self.where['vm'] = verified.get('vm')
        out = {'changed': False, 'dump_id': dump_id, 'vm': verified.get('vm'), 'converted': False,
               'source_file': verified.get('evidence_file'), 'derived_file': None, 'report': None,
               'custody_log': os.path.join(incident, log_.LOG_NAME), 'custody_head': None}
        if verified.get('format') != STREAM_FORMAT:
            out['msg'] = 'dump %s is a %s image, not a live stream: nothing to convert' % (dump_id, verified.get('format'))
            return out
        source_rel = verified['evidence_file']
        rel = derived_relpath(source_rel)
        dest = os.path.join(incident, rel)
        self.where['file'] = dest
        out['derived_file'] = rel
        derived = kinds.get('derived')
        if derived is not None and derived.get('evidence_file') == rel:
            size, sha = log_.sha256_file(dest) if os.path.isfile(dest) else (None, None)
            if (size, sha) != (derived.get('size_bytes'), derived.get('sha256')):
                raise CustodyError('%s was derived before (custody event seq %s) but is now %s: run verify, the derived '
                                   'file is not re-made over a changed one'
                                   % (dest, derived.get('seq'), 'missing' if size is None else 'different'))
            out['custody_head'] = log_.head_of(label, log_.CustodyLog(incident, create=False).lines())
            return out
        if self.check_mode:
            out['changed'] = True
            return out

        source = os.path.join(incident, source_rel)
        context = self._context(kinds)
        part = os.path.join(os.path.dirname(dest), '.%s.part' % os.path.basename(dest))
        if os.path.lexists(part):
            os.unlink(part)  # a conversion that was interrupted: not evidence, made again
        try:
            report = qevm2elf.convert(source, part, domain_xml=context.get('domain_xml'))
        except qevm2elf.ConvertError as e:
            raise CustodyError('converting %s failed: %s (the stream stays the evidence; open it with a tool that reads '
                               'QEMU migration streams, or report the message)' % (source_rel, e))
        try:
            self._check(report, verified, source_rel)
            if os.path.lexists(dest):
                # A run that stopped between the rename and its event: the same content is recorded, other is refused.
                if log_.sha256_file(dest)[1] != report['elf']['sha256']:
                    raise CustodyError('%s exists, is not recorded in the custody log and differs from a fresh '
                                       'conversion: move it aside and re-run' % dest)
                os.unlink(part)
            else:
                os.chmod(part, 0o400)
                os.rename(part, dest)
        finally:
            if os.path.lexists(part):
                os.unlink(part)
        ctx = self.custody_context(args, task_vars)
        with log_.CustodyLog(incident, args.get('signing_key')) as log:
            if 'derived' in log_.by_dump(log.events()).get(dump_id, {}):
                raise CustodyError('another run recorded a derived file of dump %s meanwhile: re-run' % dump_id)
            event = log_.event_like(
                'derived', verified, ctx, evidence_file=rel, format='elf', size_bytes=report['elf']['size'],
                sha256=report['elf']['sha256'], source_file=source_rel, source_sha256=report['stream']['sha256'],
                converter=report['converter'], converter_version=report['converter_version'],
                machine=report['machine'], check=dict((k, report['check'].get(k)) for k in CHECK_FIELDS))
            event = log.append(event)
            log.write_manifest()
            out['custody_head'] = log.head(label)
            out['event'] = event['seq']
        out.update(changed=True, converted=True, report=report)
        return out

    @staticmethod
    def _context(kinds):
        acquired = kinds.get('acquired') or {}
        return acquired.get('context') or {}

    @staticmethod
    def _check(report, verified, source_rel):
        stream = report['stream']
        if (stream['size'], stream['sha256']) != (verified.get('size_bytes'), verified.get('sha256')):
            raise CustodyError('%s is %s bytes with SHA-256 %s, the custody log verified %s bytes with %s: run verify; '
                               'nothing was derived' % (source_rel, stream['size'], stream['sha256'],
                                                        verified.get('size_bytes'), verified.get('sha256')))
        check = report['check']
        if not check.get('ok'):
            raise CustodyError('the ELF derived from %s does not match the stream page by page (%s): nothing was '
                               'recorded' % (source_rel, ', '.join('%s %s' % (k, check.get(k)) for k in CHECK_FIELDS[1:])))
