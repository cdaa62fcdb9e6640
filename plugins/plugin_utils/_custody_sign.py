# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""SSHSIG signing and verifying of custody events with ``ssh-keygen -Y`` (namespace ``memdump-custody``).

For internal collection use only: this is not a public API and may change without notice.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from ansible_collections.vmforensics.memdump.plugins.plugin_utils._custody_names import CustodyError

NAMESPACE = 'memdump-custody'


def ssh_keygen():
    path = shutil.which('ssh-keygen')
    if not path:
        raise CustodyError('ssh-keygen is not installed on the controller (Debian/Ubuntu package openssh-client); '
                           'it signs and verifies the custody events')
    return path


def _run(args, payload=None, timeout=60):
    try:
        return subprocess.run(args, input=payload, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                              check=False)
    except (OSError, subprocess.SubprocessError) as e:
        raise CustodyError('%s failed: %s' % (' '.join(args[:4]), e))


def sign(payload, key_path):
    """The armored SSHSIG of payload with the OpenSSH private key at key_path."""
    if not os.path.isfile(key_path):
        raise CustodyError('signing key %s does not exist (signing_key / memdump_acquire_signing_key): give the path '
                           'of an OpenSSH private key on the controller' % key_path)
    proc = _run([ssh_keygen(), '-q', '-Y', 'sign', '-f', key_path, '-n', NAMESPACE], payload)
    sig = proc.stdout.decode('ascii', 'replace')
    if proc.returncode != 0 or '-----BEGIN SSH SIGNATURE-----' not in sig:
        raise CustodyError('ssh-keygen -Y sign -f %s failed (rc %s): %s (the key must be an OpenSSH private key '
                           'without a passphrase, or loaded in ssh-agent)'
                           % (key_path, proc.returncode, proc.stderr.decode('utf-8', 'replace').strip()))
    return sig


def key_fingerprint(key_path):
    """``SHA256:...`` of the key (its .pub if present, else derived by ssh-keygen)."""
    proc = _run([ssh_keygen(), '-l', '-E', 'sha256', '-f', key_path], timeout=30)
    parts = proc.stdout.decode('utf-8', 'replace').split()
    return parts[1] if proc.returncode == 0 and len(parts) > 1 else None


class Verifier(object):
    """Checks SSHSIG signatures against one allowed-signers file, in a private scratch directory."""

    def __init__(self, allowed_signers, workdir):
        self.allowed_signers = allowed_signers
        self.workdir = workdir
        self.checked = 0

    def verify(self, payload, signature):
        """``(True, principal)`` if an allowed signer signed payload, else ``(False, reason)``."""
        self.checked += 1
        sig_path = os.path.join(self.workdir, 'event.sig')
        with open(sig_path, 'w') as f:
            f.write(signature)
        proc = _run([ssh_keygen(), '-Y', 'find-principals', '-f', self.allowed_signers, '-s', sig_path])
        principals = proc.stdout.decode('utf-8', 'replace').split()
        if proc.returncode != 0 or not principals:
            return False, 'signed by a key that is not in %s' % self.allowed_signers
        proc = _run([ssh_keygen(), '-Y', 'verify', '-f', self.allowed_signers, '-I', principals[0], '-n', NAMESPACE,
                     '-s', sig_path], payload)
        if proc.returncode != 0:
            return False, 'signature does not match the event (%s)' % proc.stderr.decode('utf-8', 'replace').strip()
        return True, principals[0]
