"""P9: converting a live dump (QEMU migration stream) to ELF, and what the ELF saves the analyst.

One live dump (`virsh dump --live`) and one memory-only ELF dump (`virsh dump --memory-only --format elf`)
of the same Linux guest of more than 4 GiB (convert-env's MEMDUMP_CONVERT_VM_PC, 4608 MiB, `pc`), then:
- conversion throughput: the converter (stream -> ELF, one pass, the stream's SHA-256 included) with and
  without its page check, in MiB of stream per second, against the disk's sequential read rate of the same
  stream (`dd iflag=direct`) and against SHA-256 alone over it (`sha256sum`, and Python's hashlib, which the
  converter uses), which no converter that records the stream's hash can outrun;
- Volatility 3's time to open each image (stack its format layer, read one page; the Python imports are
  left out) on the derived ELF, the stream and the memory-only ELF, REPS times alternating;
- Volatility 3's time to the kernel banner (`vol -q -r csv banners.Banners`), once per image.
Target: conversion >= the disk's sequential rate; opening the derived ELF as fast as the memory-only ELF.
"""
import hashlib
import json
import os
import re
import subprocess
import sys
import time

import benchlib as b

OPEN = r'''
import json, sys, time
from volatility3 import framework
from volatility3.framework import contexts
from volatility3.framework.layers import elf, physical, qemu
started = time.monotonic()
ctx = contexts.Context()
ctx.config['base.location'] = 'file://' + sys.argv[1]
ctx.add_layer(physical.FileLayer(ctx, 'base', 'base'))
name = 'base'
# The format stackers automagic tries first (stack order 10); the stream's layer parses the whole stream here.
for stacker in (elf.Elf64Stacker, qemu.QemuStacker):
    layer = stacker.stack(ctx, name)
    if layer is not None:
        ctx.add_layer(layer)
        name = layer.name
        break
data = ctx.layers[name].read(int(sys.argv[2], 0), 4096, pad=True)
print(json.dumps({'seconds': time.monotonic() - started, 'layer': type(ctx.layers[name]).__name__, 'nonzero': any(data)}))
'''


def virsh_dump(vm, path, *args):
    started = time.monotonic()
    subprocess.run(b.VIRSH + ['dump'] + list(args) + [vm, path], check=True, capture_output=True, timeout=1800)
    return time.monotonic() - started


def drop_cache(path):
    """Read rates without the page cache: the kernel forgets this file's cached pages."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def disk_read_mib_s(path):
    drop_cache(path)
    proc = subprocess.run(['dd', 'if=' + path, 'of=/dev/null', 'bs=8M', 'iflag=direct'], capture_output=True, text=True, check=True)
    match = re.search(r'(\d+) bytes .* copied, ([\d.]+) s', proc.stderr)
    return int(match.group(1)) / 1048576.0 / float(match.group(2))


def sha256_mib_s(path, tool):
    """SHA-256 of the stream alone, read from disk: `sha256sum`, or Python's hashlib in 1 MiB pieces."""
    drop_cache(path)
    started = time.monotonic()
    if tool == 'sha256sum':
        subprocess.run(['sha256sum', path], check=True, capture_output=True)
    else:
        digest = hashlib.sha256()
        with open(path, 'rb', buffering=0) as handle:
            while True:
                data = handle.read(1 << 20)
                if not data:
                    break
                digest.update(data)
    return os.path.getsize(path) / 1048576.0 / (time.monotonic() - started)


def converter(coll):
    sys.path.insert(0, coll)
    from ansible_collections.vmforensics.memdump.plugins.plugin_utils import _qevm2elf  # pylint: disable=import-outside-toplevel
    return _qevm2elf


def main():
    vm = b.env('MEMDUMP_CONVERT_VM_PC')
    reps = b.int_env('MEMDUMP_BENCH_P9_REPS', 3)
    probe = b.env('MEMDUMP_BENCH_P9_PROBE', '0x140000000')     # a page above 4 GiB: the loader's blob
    conv = converter(b.collections_path())
    busy = os.environ.get('MEMDUMP_CONVERT_VM_BUSY')
    if busy:    # it rewrites its memory without pause: a whole CPU under TCG, which P9 would measure too
        subprocess.run(b.VIRSH + ['suspend', busy], check=True, capture_output=True)
    try:
        measure(vm, reps, probe, conv)
    finally:
        if busy:
            subprocess.run(b.VIRSH + ['resume', busy], check=False, capture_output=True)


def measure(vm, reps, probe, conv):
    work = b.workdir('p9')
    os.chmod(work, 0o755)      # libvirt's QEMU (another user) writes the dumps here
    stream, mo_elf = os.path.join(work, 'live.qevm'), os.path.join(work, 'memory-only.elf')
    load_before = b.loadavg()
    b.log('P9: live dump of %s' % vm)
    live_sec = virsh_dump(vm, stream, '--live')
    b.log('P9: memory-only ELF dump of %s' % vm)
    mo_sec = virsh_dump(vm, mo_elf, '--memory-only', '--format', 'elf')
    xml = subprocess.run(b.VIRSH + ['dumpxml', vm], check=True, capture_output=True, text=True).stdout
    size = os.path.getsize(stream)
    rows = {'convert': [], 'convert_and_check': [], 'disk_read': [], 'sha256sum': [], 'sha256_hashlib': []}
    report = None
    for rep in range(reps):
        for variant in b.rotate(sorted(rows), rep):
            if variant == 'disk_read':
                rows[variant].append(round(disk_read_mib_s(stream), 1))
                continue
            if variant.startswith('sha256'):
                rows[variant].append(round(sha256_mib_s(stream, variant), 1))
                continue
            out = os.path.join(work, 'derived-%s.elf' % variant)
            if os.path.exists(out):
                os.unlink(out)
            drop_cache(stream)
            started = time.monotonic()
            report = conv.convert(stream, out, domain_xml=xml, verify=variant == 'convert_and_check')
            seconds = time.monotonic() - started
            rows[variant].append(round(size / 1048576.0 / seconds, 1))
            b.log('P9 rep %d %s: %.2f s, %.0f MiB/s of stream' % (rep, variant, seconds, size / 1048576.0 / seconds))
            if variant == 'convert_and_check' and not report['check']['ok']:
                raise SystemExit('the converter\'s check failed: %s' % json.dumps(report['check']))
    derived = os.path.join(work, 'derived-convert_and_check.elf')
    images = {'derived ELF': derived, 'live stream': stream, 'memory-only ELF': mo_elf}
    opens = {k: [] for k in images}
    for rep in range(reps):
        for label in b.rotate(sorted(images), rep):
            drop_cache(images[label])
            proc = subprocess.run([sys.executable, '-c', OPEN, images[label], probe], capture_output=True, text=True, timeout=1800, check=False)
            if proc.returncode:
                raise SystemExit('opening %s with Volatility failed: %s' % (label, proc.stderr[-2000:]))
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            opens[label].append(round(result['seconds'], 3))
            b.log('P9 rep %d open %s: %.2f s (%s)' % (rep, label, result['seconds'], result['layer']))
    vol = os.path.join(os.path.dirname(sys.executable), 'vol')
    banners = {}
    for label in sorted(images):
        drop_cache(images[label])
        started = time.monotonic()
        proc = subprocess.run([vol, '-q', '-r', 'csv', '-f', images[label], 'banners.Banners'], capture_output=True, text=True,
                              timeout=1800, check=False)
        found = [line for line in proc.stdout.splitlines() if 'Linux version' in line]
        banners[label] = {'seconds': round(time.monotonic() - started, 1), 'found': bool(found)}
        b.log('P9 banners %s: %.0f s, found %s' % (label, banners[label]['seconds'], bool(found)))
    conv_mib_s = b.summary(rows['convert'], 1)
    disk = b.summary(rows['disk_read'], 1)
    b.write_result('P9', {
        'title': 'live-dump conversion throughput and Volatility 3 open/banner times',
        'guest': vm, 'ram_mib': int(b.env('MEMDUMP_CONVERT_VM_PC_MIB', '4608')), 'reps': reps,
        'stream_bytes': size, 'derived_elf_bytes': os.path.getsize(derived), 'derived_elf_allocated_bytes': os.stat(derived).st_blocks * 512,
        'memory_only_elf_bytes': os.path.getsize(mo_elf), 'live_dump_sec': round(live_sec, 2), 'memory_only_dump_sec': round(mo_sec, 2),
        'convert_mib_s': conv_mib_s, 'convert_and_check_mib_s': b.summary(rows['convert_and_check'], 1), 'disk_read_mib_s': disk,
        'sha256sum_mib_s': b.summary(rows['sha256sum'], 1), 'sha256_hashlib_mib_s': b.summary(rows['sha256_hashlib'], 1),
        'convert_vs_hashlib': round(conv_mib_s['median'] / b.summary(rows['sha256_hashlib'], 1)['median'], 3),
        'convert_vs_disk': round(conv_mib_s['median'] / disk['median'], 3),
        'pages': report['pages'], 'check_ok': report['check']['ok'],
        'open_sec': {k: b.summary(v, 3) for k, v in opens.items()}, 'banners': banners,
        'target': 'conversion >= disk sequential read; derived ELF opens as fast as the memory-only ELF',
        'met': conv_mib_s['median'] >= disk['median'],
        'load_before': load_before, 'load_after': b.loadavg(),
        'command': 'bash bench/run.sh P9 (MEMDUMP_BENCH_P9_REPS=%d)' % reps})
    for path in list(images.values()) + [os.path.join(work, 'derived-convert.elf')]:
        if os.path.exists(path):
            os.unlink(path)


if __name__ == '__main__':
    main()
