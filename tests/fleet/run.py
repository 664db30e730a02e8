# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A fleet in one play (`make fleet`, the ``fleet`` suite of scripts/test.sh; docs/fleet.md).

usage: run.py [--hosts N] [--forks N] [--out DIR] [--port-base PORT] [--keep]

N podman containers (Debian 12 with python3 and sshd, no qemu-img, no libvirt) are the managed hosts. Each runs its
own sshd on 127.0.0.1:PORT (host network, its own file system) and Ansible reaches them over its ssh connection
plugin, with pipelining and ControlPersist as a fleet would run. tests/fleet/fleet.yml runs on all of them with
``forks``; every host creates, converts and describes images of its own, and writes one into a directory that every
container mounts (/srv/shared: what an NFS export shared by hypervisors would be), then a summary play on the
controller adds up the facts every host reported. The play runs twice: the first run must change every host, the
second nothing (changed=0 in the recap for every host).

Checked besides the play's own assertions: the shared directory holds one image per host and no temporary file
(no two hosts chose the same temporary name, none was left), and the images of three hosts, copied out of their
containers, pass ``qemu-img check`` and equal the golden image by ``qemu-img compare``.

Reported (printed, and written to DIR/report.md and DIR/report.json): the wall time per task (first start to last
result over the fleet) and per host (each task's start to its result, the play's sum per host), how many hosts ran a
task at the same time (forks sets the most), and the bytes every task sent to each host and read back over ssh:
tests/fleet/bin/ssh, first in the play's PATH, counts what goes through ssh's stdin and stdout (with pipelining, a
module's payload is ssh's stdin; a file transfer is sftp's, which runs the same ssh).
"""

import argparse
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BASE_IMAGE = "localhost/kvmstorage-debian12-systemd:latest"     # built by scripts/molecule.sh --prepare-only
IMAGE = "localhost/kvmstorage-fleet-sshd:latest"
NAME = "kvmstorage-fleet-%02d"
LABEL = "kvmstorage-fleet"
CONTAINERFILE = """FROM %s
RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends openssh-server \\
    && rm -rf /var/lib/apt/lists/* && mkdir -p /run/sshd && ssh-keygen -A
""" % BASE_IMAGE
# the ulimits runc can set in these machines' containers (docs/testing.md)
ULIMITS = ["--ulimit", "nofile=1000:1000", "--ulimit", "nproc=2000:2000"]
MIB = 1 << 20


class Failure(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failure(what)


def log(message):
    print("== fleet: %s" % message, flush=True)


def run(argv, **kwargs):
    """Run a command; its output is returned, a failure raises Failure with the output's tail."""
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                          stdin=subprocess.DEVNULL, check=False, **kwargs)
    if proc.returncode != 0:
        raise Failure("%s failed (%d):\n%s" % (" ".join(argv), proc.returncode, proc.stdout[-4000:]))
    return proc.stdout


def remove_containers():
    names = run(["podman", "ps", "-a", "--filter", "label=%s" % LABEL, "--format", "{{.Names}}"]).split()
    if names:
        run(["podman", "rm", "-f", "-t", "0"] + names)


def prepare_image():
    """podman, runc and the Debian 12 image (scripts/molecule.sh --prepare-only), then the image with sshd."""
    if shutil.which("podman") is None or run(["podman", "images", "-q", BASE_IMAGE]).strip() == "":
        log("preparing podman and the Debian 12 image (scripts/molecule.sh --prepare-only)")
        run(["bash", os.path.join(ROOT, "scripts", "molecule.sh"), "--prepare-only"])
    if run(["podman", "images", "-q", IMAGE]).strip() == "":
        log("building %s (Debian 12, python3, openssh-server)" % IMAGE)
        context = os.path.join(ARGS.out, "image")
        os.makedirs(context)
        with open(os.path.join(context, "Containerfile"), "w") as handle:
            handle.write(CONTAINERFILE)
        run(["podman", "build", "--network", "host", "-t", IMAGE, context])


def golden_image(path):
    """A compressed qcow2 of 64 MiB virtual with 12 MiB of data (pseudo-random and text runs between holes)."""
    raw = path + ".raw"
    rng = random.Random(16)
    with open(raw, "wb") as handle:
        handle.truncate(64 * MIB)
        for index in range(6):
            handle.seek((index * 10 + 1) * MIB)
            if index % 2:
                handle.write(rng.randbytes(2 * MIB))
            else:
                line = b"fleet golden image, run %d of 6\n" % index
                handle.write((line * (2 * MIB // len(line) + 1))[:2 * MIB])
    run(["qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", raw, path])
    os.unlink(raw)


def free_port(port):
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)     # as sshd: connections in TIME_WAIT are fine
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start_hosts(key):
    shared = os.path.join(ARGS.out, "shared")
    os.makedirs(shared)
    hosts = []
    for index in range(1, ARGS.hosts + 1):
        port = ARGS.port_base + index
        check(free_port(port), "port %d is in use: choose another --port-base" % port)
        name = NAME % index
        run(["podman", "run", "-d", "--name", name, "--label", LABEL, "--network", "host"] + ULIMITS +
            ["-v", "%s.pub:/root/.ssh/authorized_keys:ro" % key, "-v", "%s:/srv/shared" % shared,
             IMAGE, "/usr/sbin/sshd", "-D", "-e", "-p", str(port), "-o", "ListenAddress=127.0.0.1"])
        hosts.append({"name": "fleet%02d" % index, "index": index, "port": port, "container": name})
    deadline = time.monotonic() + 60
    for host in hosts:
        while True:
            proc = subprocess.run(["ssh", "-i", key, "-p", str(host["port"]), "-o", "BatchMode=yes",
                                   "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                                   "-o", "LogLevel=ERROR", "root@127.0.0.1", "true"],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  universal_newlines=True, check=False)
            if proc.returncode == 0:
                break
            check(time.monotonic() < deadline, "%s does not answer ssh on port %d: %s\n%s" % (
                host["container"], host["port"], proc.stdout, run(["podman", "logs", host["container"]])[-2000:]))
            time.sleep(0.5)
    return hosts


def write_config(hosts, key):
    inventory = os.path.join(ARGS.out, "inventory.ini")
    with open(inventory, "w") as handle:
        handle.write("[fleet]\n")
        for host in hosts:
            handle.write("%s ansible_host=127.0.0.1 ansible_port=%d fleet_index=%d\n" % (
                host["name"], host["port"], host["index"]))
        handle.write("\n[fleet:vars]\nansible_connection=ssh\nansible_user=root\n"
                     "ansible_ssh_private_key_file=%s\nansible_python_interpreter=/usr/bin/python3\n"
                     "ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'\n"
                     "\n[local]\nlocalhost ansible_connection=local ansible_python_interpreter=%s\n" % (
                         key, sys.executable))
    config = os.path.join(ARGS.out, "ansible.cfg")
    with open(config, "w") as handle:
        handle.write("[defaults]\nforks = %d\ncallbacks_enabled = fleet_times\ncallback_plugins = %s\n"
                     "host_key_checking = False\nretry_files_enabled = False\n"
                     "\n[ssh_connection]\npipelining = True\ncontrol_path_dir = %s\n"
                     "ssh_args = -o ControlMaster=auto -o ControlPersist=300s -o LogLevel=ERROR\n"
                     # sftp runs /usr/bin/ssh unless told otherwise: the file transfers are counted too
                     "sftp_extra_args = -S %s\n" % (
                         ARGS.forks, os.path.join(HERE, "callback_plugins"), os.path.join(ARGS.out, "cp"),
                         os.path.join(HERE, "bin", "ssh")))
    return inventory, config


def play(number, inventory, config, golden):
    """One run of the play; its events (the callback's and the ssh wrapper's) are returned."""
    times = os.path.join(ARGS.out, "times-%d.jsonl" % number)
    sshlog = os.path.join(ARGS.out, "ssh-%d.jsonl" % number)
    env = dict(os.environ, ANSIBLE_CONFIG=config, FLEET_TIMES=times, FLEET_SSH_LOG=sshlog, ANSIBLE_NOCOLOR="1",
               # bin/ssh runs as "env python": this interpreter's directory comes next
               PATH=os.pathsep.join([os.path.join(HERE, "bin"), os.path.dirname(sys.executable), os.environ["PATH"]]))
    started = time.monotonic()
    playbook = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
    proc = subprocess.run([playbook if os.path.exists(playbook) else "ansible-playbook", "-i", inventory, os.path.join(HERE, "fleet.yml"),
                           "-e", "fleet_golden=%s" % golden], env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, check=False)
    wall = time.monotonic() - started
    with open(os.path.join(ARGS.out, "run-%d.log" % number), "w") as handle:
        handle.write(proc.stdout)
    check(proc.returncode == 0, "run %d of the play failed (%d):\n%s" % (number, proc.returncode, proc.stdout[-6000:]))
    events = [json.loads(line) for line in open(times)]
    ssh = [json.loads(line) for line in open(sshlog)] if os.path.exists(sshlog) else []
    return {"wall": wall, "events": events, "ssh": ssh}


def analyse(result, hosts):
    """Per task and per host: times, concurrency, bytes over ssh; the recap."""
    port_host = dict((str(host["port"]), host["name"]) for host in hosts)
    tasks, order = {}, []
    for event in result["events"]:
        if event["event"] == "task":
            if event["uuid"] not in tasks:
                order.append(event["uuid"])
                tasks[event["uuid"]] = {"name": event["task"], "start": event["time"], "hosts": {}}
        elif event["event"] == "start":
            tasks[event["uuid"]]["hosts"].setdefault(event["host"], {})["start"] = event["time"]
        elif event["event"] == "result":
            entry = tasks[event["uuid"]]["hosts"].setdefault(event["host"], {})
            entry.setdefault("start", tasks[event["uuid"]]["start"])
            # a loop's task has one result per item: the last one ends it
            entry.update(end=event["time"], status=event["status"], changed=entry.get("changed") or event["changed"])
            if "fleet_summary" in event:
                result["summary"] = event["fleet_summary"]
        elif event["event"] == "stats":
            result["stats"] = event["hosts"]
    # every ssh exchange belongs to the host's first task whose result came after the exchange ended
    for exchange in result["ssh"]:
        host = port_host.get(exchange["port"])
        candidates = [uuid for uuid in order if host in tasks[uuid]["hosts"]
                      and tasks[uuid]["hosts"][host]["end"] >= exchange["end"] - 0.01]
        check(host is not None and candidates, "an ssh exchange belongs to no task: %r" % exchange)
        entry = tasks[candidates[0]]["hosts"][host]
        entry["sent"] = entry.get("sent", 0) + exchange["sent"]
        entry["received"] = entry.get("received", 0) + exchange["received"]
        entry["exchanges"] = entry.get("exchanges", 0) + 1
    rows = []
    for uuid in order:
        task = tasks[uuid]
        entries = list(task["hosts"].values())
        durations = [entry["end"] - entry["start"] for entry in entries]
        points = sorted([(entry["start"], 1) for entry in entries] + [(entry["end"], -1) for entry in entries],
                        key=lambda point: (point[0], point[1]))
        running = most = 0
        for _when, step in points:
            running += step
            most = max(most, running)
        sent = [entry.get("sent", 0) for entry in entries]
        received = [entry.get("received", 0) for entry in entries]
        rows.append({"task": task["name"], "hosts": len(entries), "controller": sorted(task["hosts"]) == ["localhost"],
                     "changed": sum(1 for entry in entries if entry["changed"]),
                     "failed": sum(1 for entry in entries if entry["status"] in ("failed", "unreachable")),
                     "wall": max(entry["end"] for entry in entries) - task["start"],
                     "host_median": statistics.median(durations), "host_max": max(durations),
                     "concurrent": most,
                     "sent_per_host": statistics.median(sent), "received_per_host": statistics.median(received),
                     "sent_total": sum(sent), "received_total": sum(received)})
    per_host = {}
    for host in [host["name"] for host in hosts]:
        entries = [tasks[uuid]["hosts"][host] for uuid in order if host in tasks[uuid]["hosts"]]
        per_host[host] = {"seconds": sum(entry["end"] - entry["start"] for entry in entries),
                          "sent": sum(entry.get("sent", 0) for entry in entries),
                          "received": sum(entry.get("received", 0) for entry in entries),
                          "changed": sum(1 for entry in entries if entry["changed"])}
    return {"wall": result["wall"], "tasks": rows, "per_host": per_host, "stats": result.get("stats", {}),
            "summary": result.get("summary")}


def judge(first, second, hosts):
    names = [host["name"] for host in hosts]
    for number, outcome in ((1, first), (2, second)):
        stats = outcome["stats"]
        check(sorted(set(stats) - {"localhost"}) == names, "run %d: the recap's hosts are %s" % (number, sorted(stats)))
        for host, counts in stats.items():
            check(counts["failures"] == 0 and counts["unreachable"] == 0, "run %d: %s: %r" % (number, host, counts))
        check(outcome["summary"] is not None and int(outcome["summary"]["reported"]) == len(hosts),
              "run %d: the summary did not count every host: %r" % (number, outcome["summary"]))
    for host in names:
        # file, copy, 5 disk_image tasks and the fact change on the first run (set_fact never reports a change)
        check(first["stats"][host]["changed"] == 7, "run 1: %s changed %d tasks, not 7: %r" % (
            host, first["stats"][host]["changed"], first["stats"][host]))
    changed = dict((host, counts["changed"]) for host, counts in second["stats"].items() if counts["changed"])
    check(not changed, "run 2 changed something: %r" % changed)
    for number, outcome in ((1, first), (2, second)):
        for row in outcome["tasks"]:
            check(row["controller"] or row["hosts"] == len(hosts),
                  "run %d: %s ran on %d hosts" % (number, row["task"], row["hosts"]))
        check(max(row["concurrent"] for row in outcome["tasks"]) >= min(ARGS.forks, len(hosts)),
              "run %d: no task ran on %d hosts at once (forks): %r" % (
                  number, min(ARGS.forks, len(hosts)), [row["concurrent"] for row in outcome["tasks"]]))
        sent = [row["sent_per_host"] for row in outcome["tasks"] if row["task"].startswith("Convert")]
        check(sent and sent[0] > 100 * 1024, "run %d: the ssh wrapper counted no module payload: %r" % (number, sent))


def check_shared_and_images(hosts, golden):
    shared = os.path.join(ARGS.out, "shared")
    names = sorted(os.listdir(shared))
    check(names == sorted("%s.raw" % host["name"] for host in hosts),
          "the shared directory holds %s, not one image per host and nothing else" % names)
    checked = sorted(set([hosts[0]["index"], hosts[len(hosts) // 2]["index"], hosts[-1]["index"]]))
    for host in hosts:
        run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", os.path.join(shared, "%s.raw" % host["name"]), golden])
        if host["index"] not in checked:
            continue
        copy = os.path.join(ARGS.out, "copied", host["name"])
        os.makedirs(copy)
        run(["podman", "cp", "%s:/srv/fleet/." % host["container"], copy])
        for name, fmt in (("base.qcow2", "qcow2"), ("guest.qcow2", "qcow2"), ("export.vmdk", "vmdk"),
                          ("export.vhdx", "vhdx")):
            image = os.path.join(copy, name)
            run(["qemu-img", "check", "-f", fmt, image])
            # the guest is larger than the golden image: compare checks that the rest reads as zeroes
            run(["qemu-img", "compare", "-f", fmt, "-F", "qcow2", image, golden])
        info = json.loads(run(["qemu-img", "info", "--output=json", os.path.join(copy, "guest.qcow2")]))
        check(info["virtual-size"] == (1 + host["index"]) << 30, "%s: guest.qcow2 is %d bytes" % (
            host["name"], info["virtual-size"]))
        shutil.rmtree(copy)
    return checked


def kib(value):
    return "%.1f" % (value / 1024.0)


def report(first, second, hosts, checked):
    lines = ["# A fleet in one play", "",
             "- %d hosts (podman containers, Debian 12, python3 and sshd only), ssh connection with pipelining and "
             "ControlPersist, forks %d; play tests/fleet/fleet.yml; machine: %d CPUs, load average %s" % (
                 len(hosts), ARGS.forks, os.cpu_count(), " ".join("%.2f" % v for v in os.getloadavg())),
             "- run 1: %.1f s wall, run 2 (no change): %.1f s wall" % (first["wall"], second["wall"]),
             "- checked: the recap of both runs, run 2 changed=0 on every host; the shared directory holds one image "
             "per host and no temporary file; qemu-img compare of every shared image; qemu-img check and compare of "
             "hosts %s's images" % ", ".join("fleet%02d" % index for index in checked), ""]
    for number, outcome in ((1, first), (2, second)):
        lines += ["## Run %d: per task" % number, "",
                  "Seconds: the task's wall time over the fleet, and per host (its start to its result on the host). "
                  "KiB over ssh per host (median): sent (module payload, file data) and received (results).", "",
                  "| task | hosts | changed | wall s | per host median s | per host max s | at once | KiB sent/host "
                  "| KiB received/host | KiB sent, all hosts |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for row in outcome["tasks"]:
            lines.append("| %s | %d | %d | %.2f | %.2f | %.2f | %d | %s | %s | %s |" % (
                row["task"], row["hosts"], row["changed"], row["wall"], row["host_median"], row["host_max"],
                row["concurrent"], kib(row["sent_per_host"]), kib(row["received_per_host"]), kib(row["sent_total"])))
        lines += ["", "## Run %d: per host" % number, "",
                  "| host | seconds in tasks | tasks changed | KiB sent | KiB received |", "|---|---:|---:|---:|---:|"]
        for host in sorted(outcome["per_host"]):
            entry = outcome["per_host"][host]
            lines.append("| %s | %.2f | %d | %s | %s |" % (host, entry["seconds"], entry["changed"], kib(entry["sent"]),
                                                           kib(entry["received"])))
        lines.append("")
    summary = second["summary"]
    lines += ["## The summary play's facts (run 2)", "",
              "hosts %s, images %s, problems found by check %s, allocated %.1f MiB in all" % (
                  summary["hosts"], summary["images"], summary["problems"], int(summary["allocated_bytes"]) / MIB), ""]
    return "\n".join(lines)


def main():
    global ARGS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--hosts", type=int, default=int(os.environ.get("FLEET_HOSTS", "20")))
    parser.add_argument("--forks", type=int, default=int(os.environ.get("FLEET_FORKS", "10")))
    parser.add_argument("--out", default=os.environ.get("FLEET_OUT", "/var/tmp/kvm-storage-fleet"))
    parser.add_argument("--port-base", type=int, default=int(os.environ.get("FLEET_PORT_BASE", "22200")))
    parser.add_argument("--keep", action="store_true", help="leave the containers running at the end")
    ARGS = parser.parse_args()
    check(os.geteuid() == 0, "run as root (podman containers)")
    ARGS.out = os.path.abspath(ARGS.out)
    remove_containers()
    if os.path.exists(ARGS.out):
        shutil.rmtree(ARGS.out)
    os.makedirs(os.path.join(ARGS.out, "cp"))
    prepare_image()
    key = os.path.join(ARGS.out, "id_ed25519")
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "kvm-storage fleet", "-f", key])
    golden = os.path.join(ARGS.out, "golden.qcow2")
    golden_image(golden)
    log("starting %d hosts" % ARGS.hosts)
    hosts = start_hosts(key)
    try:
        inventory, config = write_config(hosts, key)
        log("run 1 of the play (forks %d)" % ARGS.forks)
        first = analyse(play(1, inventory, config, golden), hosts)
        log("run 2 of the play (nothing may change)")
        second = analyse(play(2, inventory, config, golden), hosts)
        judge(first, second, hosts)
        checked = check_shared_and_images(hosts, golden)
        text = report(first, second, hosts, checked)
        with open(os.path.join(ARGS.out, "report.md"), "w") as handle:
            handle.write(text)
        with open(os.path.join(ARGS.out, "report.json"), "w") as handle:
            json.dump({"first": first, "second": second, "hosts": hosts}, handle, indent=1, sort_keys=True)
        print(text)
        log("passed: %d hosts, forks %d, run 2 changed nothing (report: %s)" % (
            len(hosts), ARGS.forks, os.path.join(ARGS.out, "report.md")))
    finally:
        if not ARGS.keep:
            remove_containers()


ARGS = None

if __name__ == "__main__":
    try:
        main()
    except Failure as error:
        print("fleet: FAILED: %s" % error, file=sys.stderr)
        sys.exit(1)
