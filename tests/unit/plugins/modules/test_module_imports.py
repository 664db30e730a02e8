# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A task imports only what it runs, and its payload still holds everything it may run.

Ansible runs a module from a zip file, where Python caches no bytecode: every module a task
imports is compiled from source on every task.  So a disk_image_info task on a qcow2 image, or
a disk_image task that creates one, must not import the other format drivers, the operations it
does not run, or libvirt-python (only pools need it).  Ansible's payload finder packs imports
found anywhere in the syntax tree (also inside functions): the real payload, built by Ansible,
must still hold every file of the image library, and a module run from it must read any format.
"""

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

import components
from ansible_collections.kvm.storage.plugins.module_utils import diskimage

MODULE_UTILS = os.path.dirname(os.path.dirname(diskimage.__file__))
CHECKOUT = os.path.dirname(os.path.dirname(MODULE_UTILS))
# The directory holding the ansible_collections tree the tests import from (conftest.py).
COLLECTIONS_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(CHECKOUT)))
PACKAGE = "ansible_collections.kvm.storage.plugins.module_utils."
OTHER_DRIVERS = ["vmdk", "vhdx", "vpc", "vdi", "qed", "qcow", "luks", "dmg", "parallels", "bochs", "cloop"]
OTHER_OPERATIONS = ["convert", "check", "compare", "map", "measure", "rebase", "commit", "amend", "resize"]

RUN_MODULE = r'''
import json, sys
sys.path.insert(0, %(root)r)
from ansible.module_utils.testing import patch_module_args
from ansible_collections.kvm.storage.plugins.modules import %(module)s as module
with patch_module_args(%(args)r):
    try:
        module.main()
    except SystemExit:
        pass
with open(%(out)r, "w") as handle:
    json.dump(sorted(sys.modules), handle)
'''


def run_module_imports(tmp_path, module, args):
    """The result of running ``module`` with ``args`` in a fresh interpreter, and what it imported."""
    out = str(tmp_path / "modules.json")
    script = RUN_MODULE % dict(root=COLLECTIONS_ROOT, module=module, args=args, out=out)
    proc = subprocess.run([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, check=False)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    with open(out) as handle:
        return result, set(json.load(handle))


def assert_imports_only_qcow2(imported):
    assert PACKAGE + "diskimage.formats.qcow2" in imported     # what it runs is there
    unrelated = [name for name in OTHER_DRIVERS if PACKAGE + "diskimage.formats." + name in imported]
    assert unrelated == []
    assert [name for name in OTHER_OPERATIONS if PACKAGE + "diskimage.ops." + name in imported] == []
    assert "libvirt" not in imported and "libvirtmod" not in imported
    assert PACKAGE + "_pool_volume" not in imported        # the backend of a pool's volumes
    assert PACKAGE + "diskimage.ova" not in imported       # the OVA and Vagrant box reader
    assert "ctypes.util" not in imported                   # slow to import: only when libc is first called
    assert PACKAGE + "diskimage.formats.qcow2_map" not in imported  # the L2 walk of map and measure


def qcow2_image(tmp_path):
    path = str(tmp_path / "disk.qcow2")
    diskimage.create(path, "qcow2", "1M")
    return path


def test_disk_image_info_on_qcow2_imports_no_other_driver_nor_libvirt(tmp_path):
    path = qcow2_image(tmp_path)
    result, imported = run_module_imports(tmp_path, "disk_image_info", dict(path=path))
    assert not result.get("failed"), result
    assert result["images"][0]["format"] == "qcow2"
    assert_imports_only_qcow2(imported)
    assert PACKAGE + "_libvirt" not in imported


def test_disk_image_creating_qcow2_imports_no_other_driver_nor_libvirt(tmp_path):
    path = str(tmp_path / "new.qcow2")
    args = dict(path=path, format="qcow2", size="1M")
    result, imported = run_module_imports(tmp_path, "disk_image", args)
    assert result["changed"] and not result.get("failed"), result
    assert_imports_only_qcow2(imported)
    result, imported = run_module_imports(tmp_path, "disk_image", args)     # the same task again: no change
    assert not result["changed"] and not result.get("failed"), result
    assert_imports_only_qcow2(imported)


LVM_INFO = r'''
import json, sys
sys.path.insert(0, %(root)r)
from ansible_collections.kvm.storage.plugins.modules import lvm_volume_image_info
print(json.dumps(sorted(name for name in sys.modules if ".diskimage.ops." in name)))
'''


def test_the_lvm_backend_imports_no_operation_before_it_runs_one():
    proc = subprocess.run([sys.executable, "-c", LVM_INFO % dict(root=COLLECTIONS_ROOT)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


REGISTRY = r'''
import json, sys
sys.path.insert(0, %(root)r)
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats import DRIVERS, driver_class
names = sorted(DRIVERS)
assert "qcow2" in DRIVERS and len(DRIVERS) == len(names)
before = sorted(name for name in sys.modules if ".diskimage.formats." in name)
driver_class("vdi")
after = sorted(name for name in sys.modules if ".diskimage.formats." in name)
print(json.dumps([names, before, after]))
'''


def test_the_registry_imports_a_driver_only_when_asked_for_it():
    proc = subprocess.run([sys.executable, "-c", REGISTRY % dict(root=COLLECTIONS_ROOT)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, check=False)
    assert proc.returncode == 0, proc.stderr
    names, before, after = json.loads(proc.stdout)
    assert len(names) == 13 and "raw" in names
    assert before == []
    assert [name.rsplit(".", 1)[1] for name in after] == ["base", "vdi"]


# ----------------------------------------------------------------- the payload
def library_files():
    """Every Python file of the image library, as the payload names it."""
    found = set()
    top = os.path.join(MODULE_UTILS, "diskimage")
    for directory, dummy, files in os.walk(top):
        for name in files:
            if name.endswith(".py"):
                relative = os.path.relpath(os.path.join(directory, name), CHECKOUT)
                found.add("ansible_collections/kvm/storage/" + relative.replace(os.sep, "/"))
    return found


def ansible(tmp_path, *args):
    remote_tmp = tmp_path / "remote"
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS_ROOT, ANSIBLE_KEEP_REMOTE_FILES="1",
               ANSIBLE_REMOTE_TMP=str(remote_tmp), ANSIBLE_LOCAL_TEMP=str(tmp_path / "local"),
               ANSIBLE_HOME=str(tmp_path / "home"), ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
               ANSIBLE_STDOUT_CALLBACK="ansible.builtin.oneline", ANSIBLE_NOCOLOR="1")
    command = [os.path.join(os.path.dirname(sys.executable), "ansible"), "localhost", "-i", "localhost,",
               "-c", "local", "-e", "ansible_python_interpreter=%s" % sys.executable] + list(args)
    proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                          env=env, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    payloads = []
    for directory, dummy, files in os.walk(str(remote_tmp)):
        payloads += [os.path.join(directory, name) for name in files if name.startswith("AnsiballZ_")]
    assert len(payloads) == 1
    with open(payloads[0]) as handle:
        encoded = re.search(r"^zip_data='([A-Za-z0-9+/=]+)'", handle.read(), re.M).group(1)
    with zipfile.ZipFile(io.BytesIO(base64.b64decode(encoded))) as payload:
        return proc.stdout, set(payload.namelist())


@components.needs(shutil.which("qemu-img"), "qemu-img")
@pytest.mark.parametrize("module", ["disk_image_info", "disk_image"])
def test_the_payload_holds_the_whole_image_library_and_reads_any_format(tmp_path, module):
    image = tmp_path / "disk.vmdk"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vmdk", str(image), "1M"], check=True)
    args = "path=%s" % image if module == "disk_image_info" else "path=%s format=vmdk size=1M" % image
    output, packed = ansible(tmp_path, "-m", "kvm.storage." + module, "-a", args)
    missing = sorted(library_files() - packed)
    assert missing == []
    # run from the zip, the module read the vmdk (its driver was imported from the payload)
    assert "SUCCESS" in output and '"failed"' not in output
    if module == "disk_image_info":
        assert '"format": "vmdk"' in output
    else:
        assert '"changed": false' in output
