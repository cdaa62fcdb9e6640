# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Action plugin memdump_verify: check an incident's evidence against its custody log and its witnesses
(documentation: plugins/modules/memdump_verify.py). Runs on the controller only."""

from __future__ import annotations

import copy
import os

from ansible_collections.vmforensics.memdump.plugins.module_utils._connection_options import COLLECT_OPTIONS, HOST_OPTIONS
from ansible_collections.vmforensics.memdump.plugins.module_utils._influxdb import influxdb_argument_spec
from ansible_collections.vmforensics.memdump.plugins.plugin_utils._action import MemdumpActionBase
from ansible_collections.vmforensics.memdump.plugins.plugin_utils import _custody_log as log_
from ansible_collections.vmforensics.memdump.plugins.plugin_utils import _custody_names as names
from ansible_collections.vmforensics.memdump.plugins.plugin_utils._custody_verify import verify_incident
from ansible_collections.vmforensics.memdump.plugins.plugin_utils._custody_witness import influxdb_heads, service_heads

CustodyError = names.CustodyError


def _argspec():
    spec = copy.deepcopy(COLLECT_OPTIONS)
    spec.update(
        token=copy.deepcopy(HOST_OPTIONS['token']),
        evidence_dir=dict(type='path', required=True),
        label=dict(type='str', required=True),
        allowed_signers=dict(type='path'),
        allow_unsigned=dict(type='bool', default=False),
        skip_signatures=dict(type='bool', default=False),
        repair_torn_line=dict(type='bool', default=False),
        influxdb=dict(type='dict', options=influxdb_argument_spec()),
        signing_key=dict(type='path', no_log=False),
        operator=dict(type='str'),
        collection_version=dict(type='str'),
    )
    return spec


class ActionModule(MemdumpActionBase):

    NAME = 'memdump_verify'
    ARGSPEC = _argspec()

    def execute(self, args, task_vars):
        label = names.check_label(args['label'])
        incident = names.incident_dir(args['evidence_dir'], label)
        self.where['incident'] = incident
        if args.get('allowed_signers') and not os.path.isfile(args['allowed_signers']):
            raise CustodyError('allowed_signers file %s does not exist' % args['allowed_signers'])
        if not os.path.isdir(incident):
            raise CustodyError('no evidence of %s: %s is not a directory' % (label, incident))
        ctx = self.custody_context(args, task_vars)
        repaired = None
        if args['repair_torn_line'] and not self.check_mode:
            with log_.CustodyLog(incident, args.get('signing_key'), create=False) as log:
                repaired = log.repair_torn_line(lambda info: dict(
                    log_.base_event('repaired', label, None, None, None, None, ctx), dump_id=None, **info))
                if repaired is not None:
                    log.write_manifest()

        heads, witnesses = self._witness_heads(args, label)
        report = verify_incident(incident, args.get('allowed_signers'), args['allow_unsigned'],
                                 args['skip_signatures'], heads, label=label)
        result = report.as_result()
        result['checked']['witnesses'] = witnesses
        result.update(changed=repaired is not None, incident_dir=incident, reverified=[],
                      signatures_checked=bool(args.get('allowed_signers')),
                      repaired=repaired['seq'] if repaired else None,
                      custody_head=log_.head_of(label, report.lines))
        for warning in report.warnings:
            self.warn(warning)
        for w in witnesses:
            if not w['reached']:
                self.warn('witness %s at %s was not reached (%s): a cut tail of the log cannot be checked against it'
                          % (w['witness'], w['url'], w['note']))
        if not witnesses:
            self.warn('no witness was asked (give collect_url for the service, influxdb for InfluxDB): a cut tail of '
                      'the log (events removed from its end) cannot be detected')
        if not report.ok:
            result['failed'] = True
            result['msg'] = 'the evidence of %s in %s does NOT verify: %s' % (label, incident, '; '.join(report.problems))
            return result
        if args.get('signing_key') and not self.check_mode:
            self._reverify(args, incident, label, report, result, ctx)
        result['msg'] = self._summary(label, result, args)
        return result

    def _witness_heads(self, args, label):
        heads, witnesses = [], []
        if args.get('collect_url'):
            found, status = service_heads(self.collect_client(args), label)
            heads += found
            witnesses.append(status)
        if args.get('influxdb') is not None:
            found, status = influxdb_heads(args['influxdb'], label)
            heads += found
            witnesses.append(status)
        return heads, witnesses

    def _reverify(self, args, incident, label, report, result, ctx):
        with log_.CustodyLog(incident, args['signing_key'], create=False) as log:
            lines = log.lines()
            if lines[:len(report.lines)] != report.lines:
                raise CustodyError('the custody log of %s changed while it was verified: run verify again' % label)
            kinds = log_.by_dump(log.events())
            checked = result['checked']
            for image in report.images:
                ver = kinds[image['dump_id']]['verified']
                event = log_.event_like('reverified', ver, self.custody_context(args, {}) if ctx is None else ctx,
                                        evidence_file=image['file'], verified_head=report.head,
                                        signatures_checked=bool(args.get('allowed_signers')),
                                        signatures_verified=checked['signatures_verified'],
                                        signers=checked['signers'],
                                        witnesses=[w['witness'] for w in checked['witnesses'] if w['reached']])
                result['reverified'].append(log.append(event)['seq'])
            lines = log.lines()
            result['head'] = log_.sha256_hex(lines[-1])
            result['events'] = len(lines)
            result['custody_head'] = log_.head_of(label, lines)
        result['changed'] = result['changed'] or bool(result['reverified'])

    @staticmethod
    def _summary(label, result, args):
        checked = result['checked']
        if args.get('allowed_signers'):
            sigs = '%d signatures verified against %s (signers: %s)' % (
                checked['signatures_verified'], args['allowed_signers'], ', '.join(checked['signers']) or 'none')
        else:
            sigs = 'signatures NOT checked (%d signed events, skip_signatures)' % checked['signatures_not_checked']
        reached = [w['witness'] for w in checked['witnesses'] if w['reached'] and w['heads']]
        return ('the evidence of %s verifies: chain of %d events (head %s), %s, %d unsigned, %d images re-hashed, '
                'witnesses: %s' % (label, result['events'], result['head'], sigs, len(result['unsigned']),
                                   checked['images_rehashed'], ', '.join(reached) or 'none'))
