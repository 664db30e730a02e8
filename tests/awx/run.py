# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The collection as AWX runs it (the ``awx`` suite of scripts/test.sh; docs/awx.md).

usage: run.py [ee] [job]   (default: both)

ee   The collection's tarball is built and execution-environment.yml turned into a build context with
     ``ansible-builder create`` (no registry here: the image is not built). The context is checked: the
     Containerfile's stages name the base image, ansible-core and ansible-runner, the galaxy install, the
     introspection of requirements.txt and bindep.txt and the system package install; the tarball and the
     requirements are in it. Then the two stages that need no container run here as the Containerfile runs them:
     the galaxy stage's ``ansible-galaxy collection install -r requirements.yml`` (in the context's _build, the
     image's /build) into an empty collections path, and the builder stage's introspection of what it installed,
     whose package lists are checked for an RPM platform (the base image) and for Debian with bindep.
job  The demo (playbooks/demo.yml) runs as an AWX job: ``ansible-runner run`` on a private data dir laid out as
     tests/awx/private_data_dir (project/, inventory/, env/), the collection found only where the ee step
     installed it. The job's events must show every task ``ansible-playbook --list-tasks`` lists, none failed;
     a second job must report changed=0 in its stats event. The jobs use names and a directory of their own
     (the demo's variables), removed afterwards: `make demo` is left alone.
"""

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
VIRSH = ["virsh", "-q", "-c", "qemu:///system"]


class Failure(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failure(what)


def run(argv, **kwargs):
    """Run a command; its output is returned, a failure raises Failure with the output's tail."""
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                          check=False, **kwargs)
    if proc.returncode != 0:
        raise Failure("%s: exit %d\n%s" % (" ".join(argv), proc.returncode, proc.stdout[-3000:]))
    return proc.stdout


def galaxy_version():
    with open(os.path.join(ROOT, "galaxy.yml")) as f:
        return yaml.safe_load(f)["version"]


class Suite:
    def __init__(self, work):
        self.work = work
        self.tag = "awx%d" % os.getpid()
        self.collections = os.path.join(work, "collections")
        self.env = dict(os.environ, ANSIBLE_NOCOLOR="1", PYTHONWARNINGS="ignore")
        self.tarball = None

    # ------------------------------------------------------------------ ee
    def build_tarball(self):
        if self.tarball:
            return
        dist = os.path.join(self.work, "dist")
        run(["ansible-galaxy", "collection", "build", "--force", "--output-path", dist, ROOT], env=self.env)
        built = [n for n in os.listdir(dist) if n.startswith("kvm-storage-") and n.endswith(".tar.gz")]
        check(len(built) == 1, "ansible-galaxy collection build made %r" % built)
        self.tarball = os.path.join(dist, built[0])

    def step_ee(self):
        self.build_tarball()
        # the EE definition beside its files, the tarball where docs/awx.md puts it (build/ee/kvm-storage.tar.gz)
        ee = os.path.join(self.work, "ee")
        os.makedirs(os.path.join(ee, "build", "ee"))
        for name in ("execution-environment.yml", "requirements.txt", "bindep.txt"):
            shutil.copy(os.path.join(ROOT, name), ee)
        shutil.copy(self.tarball, os.path.join(ee, "build", "ee", "kvm-storage.tar.gz"))
        out = run(["ansible-builder", "create", "--file", "execution-environment.yml", "--context", "context"],
                  cwd=ee, env=self.env)
        print(out.strip().splitlines()[-1])
        check("No matches" not in out, "ansible-builder found no file to add to the context:\n" + out)
        context = os.path.join(ee, "context")
        build = os.path.join(context, "_build")
        with open(os.path.join(ee, "execution-environment.yml")) as f:
            definition = yaml.safe_load(f)
        check(definition["version"] == 3, "execution-environment.yml is not version 3")
        with open(os.path.join(context, "Containerfile")) as f:
            containerfile = f.read()
        base = definition["images"]["base_image"]["name"]
        refs = (definition["dependencies"]["ansible_core"]["package_pip"],
                definition["dependencies"]["ansible_runner"]["package_pip"])
        for needed in (
                'ARG EE_BASE_IMAGE="%s"' % base,
                "FROM $EE_BASE_IMAGE AS base",
                'ARG ANSIBLE_INSTALL_REFS="%s %s"' % refs,
                "RUN $PYCMD -m pip install --no-cache-dir $ANSIBLE_INSTALL_REFS",
                "COPY _build /build",
                "ansible-galaxy collection install $ANSIBLE_GALAXY_CLI_COLLECTION_OPTS -r requirements.yml",
                "COPY _build/requirements.txt requirements.txt",
                "COPY _build/bindep.txt bindep.txt",
                "introspect.py introspect --user-pip=requirements.txt --user-bindep=bindep.txt",
                "RUN /output/scripts/assemble",
                "RUN /output/scripts/check_ansible $PYCMD",
                "RUN /output/scripts/install-from-bindep",
                "LABEL ansible-execution-environment=true"):
            check(needed in containerfile, "the Containerfile lacks %r:\n%s" % (needed, containerfile))
        for script in ("assemble", "install-from-bindep", "introspect.py", "check_ansible", "check_galaxy",
                       "pip_install", "entrypoint"):
            check(os.path.isfile(os.path.join(build, "scripts", script)), "context lacks _build/scripts/" + script)
        for name in ("requirements.txt", "bindep.txt"):
            with open(os.path.join(build, name)) as f, open(os.path.join(ROOT, name)) as g:
                check(f.read() == g.read(), "context/_build/%s differs from the collection's" % name)
        # the tarball in the context is the collection, at the version galaxy.yml says
        shipped = os.path.join(build, "collection", "kvm-storage.tar.gz")
        check(os.path.isfile(shipped), "context lacks _build/collection/kvm-storage.tar.gz")
        with tarfile.open(shipped) as tar:
            info = json.load(tar.extractfile("MANIFEST.json"))["collection_info"]
        check((info["namespace"], info["name"], info["version"]) == ("kvm", "storage", galaxy_version()),
              "the context's tarball is %(namespace)s.%(name)s %(version)s" % info)

        # the galaxy stage, as its RUN line does it (WORKDIR /build = the context's _build), into an empty path
        env = dict(self.env, ANSIBLE_COLLECTIONS_PATH=self.collections, ANSIBLE_GALAXY_DISABLE_GPG_VERIFY="1")
        out = run(["ansible-galaxy", "collection", "install", "-r", "requirements.yml", "--collections-path",
                   self.collections], cwd=build, env=env)
        check("kvm.storage:%s was installed successfully" % galaxy_version() in out,
              "the galaxy stage did not install kvm.storage:\n" + out)
        # the builder stage's introspection of what the galaxy stage installed, with the user's files
        pip_out, bindep_out = os.path.join(self.work, "ee-requirements.txt"), os.path.join(self.work, "ee-bindep.txt")
        run([sys.executable, os.path.join(build, "scripts", "introspect.py"), "introspect",
             "--user-pip=requirements.txt", "--user-bindep=bindep.txt", "--write-pip=" + pip_out,
             "--write-bindep=" + bindep_out, self.collections], cwd=build, env=self.env)
        with open(pip_out) as f:
            pip_lines = [line.split("#")[0].strip() for line in f if line.strip()]
        with open(bindep_out) as f:
            bindep_text = f.read()
        check("# from collection kvm.storage" in bindep_text,
              "introspection found no bindep.txt in the installed collection:\n" + bindep_text)
        check(set(pip_lines) == {"libvirt-python", "cryptography"}, "the image's pip requirements: %r" % pip_lines)
        # bindep comes with ansible-builder
        from bindep.depends import Depends  # pylint: disable=import-outside-toplevel
        depends = Depends(bindep_text)
        lists = {}
        for platform, profiles in (("rpm", ["platform:rpm", "platform:redhat", "platform:centos"]),
                                   ("dpkg", ["platform:dpkg", "platform:debian"])):
            for profile in ("default", "compile"):
                rules = depends.active_rules(profiles + [profile])
                lists[platform, profile] = sorted(set(depends.list_all_packages(rules, output_format="csv")))
        print("image packages (bindep): %s" % json.dumps({"%s/%s" % k: v for k, v in lists.items()}))
        check(lists["rpm", "default"] == ["libvirt-libs", "lvm2", "openssh-clients", "python3-libvirt"],
              "RPM packages: %r" % lists["rpm", "default"])
        check(lists["dpkg", "default"] == ["libvirt0", "lvm2", "openssh-client", "python3-libvirt"],
              "Debian packages: %r" % lists["dpkg", "default"])
        for packages in lists.values():
            check(not any(p.startswith("qemu") for p in packages), "qemu packages listed: %r" % packages)

    # ------------------------------------------------------------------ job
    def cleanup_libvirt(self):
        for domain in ("kvmstorage_%s_vm" % self.tag, "kvmstorage_%s_vbox" % self.tag):
            if subprocess.run(VIRSH + ["dominfo", domain], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              check=False).returncode == 0:
                subprocess.run(VIRSH + ["destroy", domain], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               check=False)
                subprocess.run(VIRSH + ["undefine", domain, "--snapshots-metadata", "--nvram"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        pool = "kvmstorage_%s" % self.tag
        if subprocess.run(VIRSH + ["pool-info", pool], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          check=False).returncode == 0:
            subprocess.run(VIRSH + ["pool-destroy", pool], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           check=False)
            subprocess.run(VIRSH + ["pool-undefine", pool], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           check=False)

    def private_data_dir(self):
        """The template's layout, the project copied from the installed collection, the job's own names."""
        if not os.path.isdir(os.path.join(self.collections, "ansible_collections", "kvm", "storage")):
            self.build_tarball()
            run(["ansible-galaxy", "collection", "install", "-p", self.collections, self.tarball],
                env=dict(self.env, ANSIBLE_COLLECTIONS_PATH=self.collections))
        installed = os.path.join(self.collections, "ansible_collections", "kvm", "storage")
        pdd = os.path.join(self.work, "job")
        shutil.copytree(os.path.join(HERE, "private_data_dir"), pdd)
        shutil.copytree(os.path.join(installed, "playbooks"), os.path.join(pdd, "project", "playbooks"))
        os.makedirs(os.path.join(pdd, "project", "tests", "support"))
        shutil.copy(os.path.join(installed, "tests", "support", "make_virtualbox_machine.py"),
                    os.path.join(pdd, "project", "tests", "support"))
        with open(os.path.join(pdd, "env", "envvars")) as f:
            envvars = yaml.safe_load(f)
        envvars["ANSIBLE_COLLECTIONS_PATH"] = self.collections
        with open(os.path.join(pdd, "env", "envvars"), "w") as f:
            yaml.safe_dump(envvars, f)
        extravars = {"demo_dir": os.path.join(self.work, "demo"), "demo_pool": "kvmstorage_%s" % self.tag,
                     "demo_domain": "kvmstorage_%s_vm" % self.tag, "demo_vbox_domain": "kvmstorage_%s_vbox" % self.tag}
        with open(os.path.join(pdd, "env", "extravars"), "w") as f:
            yaml.safe_dump(extravars, f)
        return pdd, envvars

    def listed_tasks(self, pdd, envvars):
        """(play, task) of every task ansible-playbook --list-tasks lists (a role's task without its role)."""
        out = run(["ansible-playbook", "-i", os.path.join(pdd, "inventory", "hosts"), "--list-tasks",
                   "-e", "@" + os.path.join(pdd, "env", "extravars"), "playbooks/demo.yml"],
                  cwd=os.path.join(pdd, "project"), env=dict(self.env, **envvars))
        tasks, play = [], None
        for line in out.splitlines():
            text = line.strip()
            if text.startswith("play #"):
                play = text.split("): ", 1)[1].split("\tTAGS:")[0]
            elif play and "\tTAGS:" in text and text != "tasks:":
                name = text.split("\tTAGS:")[0]
                tasks.append((play, name.split(" : ", 1)[1] if " : " in name else name))
        check(len(tasks) >= 20, "--list-tasks listed only %d tasks:\n%s" % (len(tasks), out))
        return tasks

    def job(self, pdd, ident):
        started = time.time()
        proc = subprocess.run(["ansible-runner", "run", pdd, "-p", "playbooks/demo.yml", "--ident", ident],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                              env=self.env, check=False)
        seconds = time.time() - started
        artifacts = os.path.join(pdd, "artifacts", ident)
        with open(os.path.join(artifacts, "status")) as f:
            status = f.read().strip()
        recap = proc.stdout[proc.stdout.rfind("PLAY RECAP"):].strip()
        print("job %s: ansible-runner exit %d, status %s, %.1f s\n%s" % (ident, proc.returncode, status, seconds,
                                                                         recap))
        check(proc.returncode == 0 and status == "successful",
              "job %s failed (%s):\n%s" % (ident, status, proc.stdout[-4000:]))
        events = []
        directory = os.path.join(artifacts, "job_events")
        for name in os.listdir(directory):
            with open(os.path.join(directory, name)) as f:
                events.append(json.load(f))
        events.sort(key=lambda e: e["counter"])
        durations = sorted(((e["event_data"].get("duration") or 0, e["event_data"].get("task"))
                            for e in events if e["event"] in ("runner_on_ok", "runner_on_skipped")), reverse=True)
        print("job %s: slowest tasks: %s" % (ident, "; ".join("%s %.1f s" % (t, d) for d, t in durations[:5])))
        return events

    def step_job(self):
        pdd, envvars = self.private_data_dir()
        tasks = self.listed_tasks(pdd, envvars)
        self.cleanup_libvirt()
        try:
            first = self.job(pdd, "job1")
            started = [(e["event_data"].get("play"), e["event_data"].get("task")) for e in first
                       if e["event"] == "playbook_on_task_start"]
            missing = [t for t in tasks if t not in started]
            check(not missing, "tasks without a task_start event in job1: %r" % missing)
            done = {e["event_data"].get("task_uuid") for e in first
                    if e["event"] in ("runner_on_ok", "runner_on_skipped")}
            unfinished = [(e["event_data"].get("play"), e["event_data"].get("task")) for e in first
                          if e["event"] == "playbook_on_task_start" and e["event_data"].get("task_uuid") not in done]
            check(not unfinished, "tasks with no ok or skipped result in job1: %r" % unfinished)
            failing = ("runner_on_failed", "runner_on_unreachable", "runner_item_on_failed")
            bad = [e["event"] for e in first if e["event"] in failing]
            check(not bad, "job1 has events %r" % bad)
            stats1 = [e for e in first if e["event"] == "playbook_on_stats"][-1]["event_data"]
            check(stats1.get("changed", {}).get("localhost", 0) > 0, "job1 changed nothing: %r" % stats1)
            print("job1: %d events, %d task starts; all %d listed tasks seen; changed=%d" % (
                len(first), len(started), len(tasks), stats1["changed"]["localhost"]))

            second = self.job(pdd, "job2")
            stats2 = [e for e in second if e["event"] == "playbook_on_stats"][-1]["event_data"]
            changed = {host: n for host, n in stats2.get("changed", {}).items() if n}
            changed_tasks = [(e["event_data"].get("play"), e["event_data"].get("task")) for e in second
                             if e["event"] in ("runner_on_ok", "runner_item_on_ok")
                             and e["event_data"].get("res", {}).get("changed")]
            check(not changed and not stats2.get("failures") and not stats2.get("dark"),
                  "job2 stats %r; changed tasks %r" % (stats2, changed_tasks))
            print("job2: %d events; stats ok=%s changed=0" % (len(second), stats2.get("ok", {}).get("localhost")))
        finally:
            self.cleanup_libvirt()


def main(argv):
    steps = argv or ["ee", "job"]
    for step in steps:
        if step not in ("ee", "job"):
            print(__doc__.split("\n\n")[1], file=sys.stderr)
            return 2
    work = tempfile.mkdtemp(prefix="kvm-storage-awx.")
    os.chmod(work, 0o755)  # libvirtd (qemu user) reaches the demo's pool under it
    suite = Suite(work)
    failed = 0
    try:
        for step in steps:
            started = time.time()
            print("------------------- awx: %s -------------------" % step, flush=True)
            try:
                getattr(suite, "step_" + step)()
            except Failure as e:
                failed += 1
                print("------------------- awx: %s FAILED in %.0fs\n%s" % (step, time.time() - started, e))
            else:
                print("------------------- awx: %s passed in %.0fs" % (step, time.time() - started))
            sys.stdout.flush()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("awx: %d passed, %d failed" % (len(steps) - failed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
