"""The collection's execution-environment metadata is accepted by ``ansible-builder create``.

``create`` only writes a build context (no container engine needed). Paths in
``meta/execution-environment.yml`` are relative to the collection root, as ansible-builder's
introspection reads them when the collection is installed into an EE.
"""
import glob
import os
import shutil
import subprocess
import sys

import yaml

REPO = os.environ.get('MEMDUMP_REPO') or os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
BIN = os.path.dirname(sys.executable)


def builder(*args, cwd):
    exe = os.path.join(BIN, 'ansible-builder')
    if not os.path.exists(exe):
        exe = shutil.which('ansible-builder')
    return subprocess.run([exe, 'create', '-v', '2'] + list(args), cwd=cwd, capture_output=True, text=True,
                          timeout=300, check=False)


def test_meta_execution_environment_is_accepted(tmp_path):
    with open(os.path.join(REPO, 'meta', 'execution-environment.yml')) as f:
        ee = yaml.safe_load(f)
    deps = ee['dependencies']
    # Introspection resolves these from the collection root.
    for key in ('python', 'system'):
        assert os.path.isfile(os.path.join(REPO, deps[key])), deps[key]
    for name in ('execution-environment.yml', deps['python'], deps['system']):
        shutil.copy(os.path.join(REPO, 'meta', name) if name.endswith('environment.yml') else os.path.join(REPO, name),
                    tmp_path / os.path.basename(name))
    proc = builder('-f', 'execution-environment.yml', '-c', 'context', cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    context = tmp_path / 'context'
    assert (context / 'Containerfile').exists() or (context / 'Dockerfile').exists()
    with open(os.path.join(REPO, deps['python'])) as f:
        assert (context / '_build' / 'requirements.txt').read_text() == f.read()
    assert (context / '_build' / 'bindep.txt').exists()


def test_user_execution_environment_with_the_collection(tmp_path):
    """An EE definition as the README shows it: this collection's tarball plus its requirements."""
    build = subprocess.run(['ansible-galaxy', 'collection', 'build', '--force', '--output-path', str(tmp_path), REPO],
                           capture_output=True, text=True, timeout=300, check=False)
    assert build.returncode == 0, build.stdout + build.stderr
    tarball = os.path.basename(glob.glob(str(tmp_path / 'vmforensics-memdump-*.tar.gz'))[0])
    (tmp_path / 'requirements.yml').write_text(yaml.safe_dump({'collections': [{'name': tarball, 'type': 'file'}]}))
    shutil.copy(os.path.join(REPO, 'requirements.txt'), tmp_path / 'requirements.txt')
    shutil.copy(os.path.join(REPO, 'bindep.txt'), tmp_path / 'bindep.txt')
    ee = {
        'version': 3,
        'images': {'base_image': {'name': 'quay.io/ansible/awx-ee:latest'}},
        'dependencies': {'galaxy': 'requirements.yml', 'python': 'requirements.txt', 'system': 'bindep.txt'},
        'additional_build_files': [{'src': tarball, 'dest': 'collections'}],
    }
    (tmp_path / 'execution-environment.yml').write_text(yaml.safe_dump(ee))
    proc = builder('-f', 'execution-environment.yml', '-c', 'context', cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / 'context' / '_build' / 'requirements.yml').exists()
    assert (tmp_path / 'context' / '_build' / 'collections' / tarball).exists()
