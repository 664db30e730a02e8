# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Write a playbook that runs a module's EXAMPLES, in the order written, on this host.

usage: examples_playbook.py MODULE WORK PLAYBOOK [--device NAME=PATH ...] [--var-file FILE] [--keep-going]

MODULE is a short name (disk_image); its EXAMPLES are read with ansible-doc, as users read them.
The examples stay what users read.  The only rewrites (see REWRITES and CHECK_MODE below):
- host paths (/var/lib/libvirt/images, /var/lib/libvirt/shared, /var/lib/images, /srv) live under WORK;
- device paths (/dev/sdb1, /dev/sdc, /dev/mapper/shared_lun) are loop devices (--device);
- libvirt names (domain:, pool:, name:, loop: values naming domains or pools, and <name> in XML definitions)
  and the VG vg_guests get a prefix unique to this test;
- another host (uri: qemu+ssh://...) is this host (qemu:///system);
- with --keep-going (to list every failing example at once), every example gets ignore_errors: true;
- an example that needs what no build machine has (an NFS server, a Ceph cluster, device-mapper, a guest
  agent, 100 GiB of free space) runs in check mode (CHECK_MODE): its arguments and plan are checked, nothing is
  changed; where a later example needs what it does, the one argument that cannot work here is changed instead
  (OVERRIDES), with a comment saying why.
"""

import json
import re
import subprocess
import sys

PREFIX = "kvmstorage_it_ex_"
VG = "kvmstorage_it_lvm_ex"  # setup_lvm wants VG names starting with kvmstorage_it_lvm
HOST_PATHS = ("/var/lib/libvirt/images", "/var/lib/libvirt/shared", "/var/lib/images", "/srv")
DOMAINS = ("web1", "web2", "db1", "test1", "dos1", "node1", "node2")
POOLS = ("images", "fast", "shared", "guests", "ceph", "old", "default", "backup")
# The keys whose values name a domain or a pool (and loops over domains).
NAME_KEYS = re.compile(r"^\s*(- )?(domain|name|pool|loop): ")
# The <name> of a domain or pool in XML definitions the examples write out (kvm.storage.domain's xml).
DEFINITION_NAMES = re.compile(r"(<name>)(%s)(?=</name>)" % "|".join(DOMAINS + POOLS))

# Examples run in check mode: {module: {start of the task name: why it cannot change anything here}}.
CHECK_MODE = {
    "storage_pool": {
        "An NFS export": "no NFS server",
        "An LVM volume group": "no device-mapper in the build machines' kernel",
        "A Ceph RBD pool": "no Ceph cluster",
    },
    "disk_image": {
        "Import a VMDK into an LVM pool": "libvirt's test driver (standing in for the LVM pool) takes no uploads",
        "Grow an image, reserving the new space on disk": "100 GiB of free space",
    },
    "lvm_volume_image": {
        "A qcow2 image on a thin volume": "no device-mapper: lvm2 cannot make a thin pool or thin volume",
    },
    "domain_snapshot": {
        "External disk-only snapshot with the guest's file systems frozen":
            "the test domains run no guest OS, hence no guest agent to answer",
    },
}

# Arguments that cannot be used here, changed in one example: {module: {start of the task name: [(line, new line)]}}.
# {work} is the work directory. LVM pools of libvirt need device-mapper: libvirt's test driver, whose node file
# (prepare_disk_image.yml) holds an LVM pool, stands in for them.
TEST_DRIVER = "    uri: test://{work}/lvm-pool-node.xml  # libvirt's test driver: an LVM pool without device-mapper"
OVERRIDES = {
    "disk_image": {
        "Create a 20 GiB qcow2 image": [
            ("    size: 20G", "    size: 64M  # not 20 GiB: the LUKS example below encrypts every byte of it (minutes)"),
        ],
        "Import a VMDK into an LVM pool": [("    uri: qemu:///system", TEST_DRIVER)],
        "Delete a volume of a remote host's LVM pool": [("    uri: qemu:///system", TEST_DRIVER)],
    },
    "lvm_volume_image": {
        "Roll out a new golden image, keeping a snapshot": [
            ("    snapshot_before_write: true",
             "    snapshot_before_write: false  # no device-mapper: lvm2 cannot make a snapshot volume here"),
        ],
    },
}


def examples_of(module):
    name = "kvm.storage." + module
    proc = subprocess.run(["ansible-doc", "--json", name], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, check=False)
    if proc.returncode != 0:
        raise SystemExit("ansible-doc %s failed: %s" % (name, proc.stderr))
    examples = json.loads(proc.stdout)[name].get("examples")
    if not examples:
        raise SystemExit("%s has no EXAMPLES" % name)
    return examples


def rewrite(text, work, devices):
    """The rewrites of the module docstring, line by line; task names (``- name:`` at column 0) stay as written."""
    paths = re.compile(r"(?<![\w/])(%s)(?=[/\s\"'\],]|$)" % "|".join(re.escape(p) for p in HOST_PATHS))
    names = re.compile(r"(?<![\w./:-])(%s)(?![\w./(-])" % "|".join(DOMAINS + POOLS))
    lines = []
    for line in text.splitlines():
        if not line.startswith("- name:"):
            line = paths.sub(lambda m: work + m.group(1), line)
            for device, replacement in devices.items():
                line = re.sub(r"(?<![\w/])%s(?![\w/])" % re.escape(device), replacement, line)
            line = line.replace("/dev/vg_guests", "/dev/" + VG)
            line = re.sub(r"(?<![\w./-])vg_guests(?![\w./-])", VG, line)
            if NAME_KEYS.match(line):
                line = names.sub(lambda m: PREFIX + m.group(1), line)
            line = DEFINITION_NAMES.sub(lambda m: m.group(1) + PREFIX + m.group(2), line)
            line = re.sub(r"(uri: )qemu\+ssh://\S+", r"\1qemu:///system", line)
        lines.append(line)
    return lines


def insert_task_keys(lines, keys_of):
    """Add the lines keys_of(task name) returns to each task, after its name (which may span lines)."""
    out = []
    pending = []
    for line in lines:
        if line.startswith("- name: "):
            pending = keys_of(line[8:])
        elif pending and not line.startswith("    "):  # the first line past the name
            out.extend(pending)
            pending = []
        out.append(line)
    return out + pending


def with_ignore_errors(lines):
    return insert_task_keys(lines, lambda name: ["  ignore_errors: true  # --keep-going"])


def with_overrides(lines, module, work):
    wanted = OVERRIDES.get(module, {})
    done = set()
    task = None
    out = []
    for line in lines:
        if line.startswith("- name: "):
            task = next((start for start in wanted if line.startswith("- name: " + start)), None)
        elif task is not None:
            for old, new in wanted[task]:
                if line == old:
                    line = new.format(work=work)
                    done.add((task, old))
        out.append(line)
    missing = set((task, old) for task in wanted for old, dummy in wanted[task]) - done
    if missing:
        raise SystemExit("%s: no line to override for %s (update OVERRIDES)" % (module, sorted(missing)))
    return out


def with_check_mode(lines, module):
    wanted = CHECK_MODE.get(module, {})
    seen = set()

    def keys_of(name):
        for start, why in wanted.items():
            if name.startswith(start):
                seen.add(start)
                return ["  check_mode: true  # cannot run here: %s" % why]
        return []

    out = insert_task_keys(lines, keys_of)
    missing = set(wanted) - seen
    if missing:
        raise SystemExit("%s: no example named %s (update CHECK_MODE)" % (module, sorted(missing)))
    return out


def main(argv):
    module, work, playbook = argv[:3]
    devices = {}
    var_file = None
    keep_going = False
    rest = argv[3:]
    while rest:
        if rest[0] == "--keep-going":
            keep_going = True
            rest = rest[1:]
            continue
        if rest[0] == "--device":
            name, path = rest[1].split("=", 1)
            devices[name] = path
        elif rest[0] == "--var-file":
            var_file = rest[1]
        else:
            raise SystemExit("unknown argument %s" % rest[0])
        rest = rest[2:]
    tasks = with_check_mode(with_overrides(rewrite(examples_of(module).strip("\n"), work, devices), module, work), module)
    if keep_going:
        tasks = with_ignore_errors(tasks)
    play = [
        "---",
        "# Generated by examples_playbook.py from the EXAMPLES of %s (see its docstring for the rewrites)." % module,
        "- name: The EXAMPLES of kvm.storage.%s, in the order written" % module,
        "  hosts: localhost",
        "  connection: local",
        "  gather_facts: false",
    ]
    if var_file:
        play += ["  vars_files:", "    - %s" % var_file]
    play += ['  environment: "{{ examples_environment | default({}) }}"', "  tasks:"]
    play += [("    " + line) if line else "" for line in tasks]
    with open(playbook, "w") as stream:
        stream.write("\n".join(play) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
