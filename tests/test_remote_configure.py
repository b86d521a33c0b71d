"""configure() end to end against a real sshd on loopback, running a real ansible-playbook -c local.

The playbook is a tiny test one (the real one needs a Debian 13 host: that is the test host's e2e test),
but everything around it is the real path: pinned connection, SFTP upload to a staging dir, moving into
place, runtime.yml, the streamed run, the recap, the failed-task message, and a real host-key rotation:
the test playbook replaces sshd's host key and sends it SIGHUP, and fedi must then pin the new key.
"""

from __future__ import annotations

import glob
import json
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from test_remote_sshd import SSHD, Sshd, keypair, start_sshd, stop

from provision.errors import RemoteError
from provision.model import Bundle
from provision.remote import commands
from provision.remote.configure import configure
from provision.remote.session import HostKeyMismatch, connect

PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
SECRET = "db-S3cret-value-4711"

pytestmark = pytest.mark.skipif(
    not PLAYBOOK.exists() or not Path(SSHD).exists(), reason="needs ansible-core in the venv and openssh-server"
)

SITE_YML = """\
- name: Test fedi configure
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Runtime and bundle variables are both loaded
      ansible.builtin.assert:
        that:
          - not fedi_start_app
          - fedi_domain == "example.test"
    - name: Look at the uploaded secret file
      ansible.builtin.stat:
        path: "{{ fedi_bundle_dir }}/app/.env"
      register: env_file
    - name: The secret file kept its mode
      ansible.builtin.assert:
        that: env_file.stat.mode == "0600"
    - name: Write the marker
      ansible.builtin.copy:
        content: "{{ fedi_domain }}\\n"
        dest: "{{ test_root }}/marker"
        mode: "0644"
    - name: Rotate the host key
      ansible.builtin.copy:
        src: "{{ test_new_key }}"
        dest: "{{ test_sshd_key }}"
        mode: "0600"
      notify: Reload sshd
    - name: Publish the new public key
      ansible.builtin.copy:
        src: "{{ test_published_key | default(test_new_key) }}.pub"
        dest: "{{ test_root }}/host_key.pub"
        mode: "0644"
      when: not (test_no_publish | default(false))
    - name: Fail on request
      ansible.builtin.fail:
        msg: "cannot reach the database with {{ fedi_db_password }}"
      when: fedi_fail | bool
  handlers:
    - name: Reload sshd
      ansible.builtin.command: kill -HUP {{ test_sshd_pid }}
      changed_when: true
"""


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    server = start_sshd(tmp_path / "sshd")
    try:
        yield server
    finally:
        stop(server)


def make_bundle(tmp: Path, *, fail: bool) -> Bundle:
    root = tmp / "bundle"
    (root / "app").mkdir(parents=True)
    root.chmod(0o700)
    (root / "manifest.json").write_text(json.dumps({"files": {"ansible-vars": "ansible-vars.yml"}}))
    (root / "ansible-vars.yml").write_text(
        f"fedi_domain: example.test\nfedi_db_password: {SECRET}\nfedi_fail: {str(fail).lower()}\n"
    )
    (root / "ansible-vars.yml").chmod(0o600)
    (root / "app" / ".env").write_text(f"DB_PASS={SECRET}\n")
    (root / "app" / ".env").chmod(0o600)
    manifest = json.loads((root / "manifest.json").read_text())
    return Bundle(root=root, manifest=manifest, cloud_init="", host_public_key="")


def setup(tmp: Path, sshd: Sshd, *, fail: bool = False):
    ansible = tmp / "ansible"
    ansible.mkdir()
    (ansible / "site.yml").write_text(SITE_YML)
    layout = commands.Layout(
        root=str(tmp / "opt-fedi"), app_dir=str(tmp / "opt-fedi/app"), ansible_playbook=str(PLAYBOOK), scope=""
    )  # no systemd on this machine: the playbook runs bare
    new_pub = keypair(tmp / "newhost")
    runtime = {
        "fedi_volume_device": "",
        "fedi_start_app": False,
        "fedi_bundle_dir": layout.bundle_dir,
        "test_root": layout.root,
        "test_new_key": str(tmp / "newhost"),
        "test_sshd_key": str(sshd.host_key_file),
        "test_sshd_pid": sshd.proc.pid,
        "ansible_python_interpreter": sys.executable,  # this machine's python, not interpreter discovery's guess
    }
    return make_bundle(tmp, fail=fail), ansible, layout, runtime, new_pub


def staging_dirs() -> set[str]:
    return set(glob.glob("/tmp/fedi-upload.*"))


def test_configure_uploads_runs_rotates_and_converges(sshd: Sshd, tmp_path: Path) -> None:
    bundle, ansible, layout, runtime, new_pub = setup(tmp_path, sshd)
    logs, shown = tmp_path / "logs", []
    before = staging_dirs()
    result = configure(sshd.access, bundle, runtime, shown.append, layout=layout, log_dir=logs, ansible_dir=ansible)

    # the new host key is returned, and the server now presents it
    assert result.host_key == " ".join(new_pub.split()[:2])
    assert result.failed == 0
    assert result.changed == 4  # marker, key, public key, handler
    assert "changed  Rotate the host key" in shown and "changed  Reload sshd" in shown
    assert "ok       Runtime and bundle variables are both loaded" in shown
    assert any(line.startswith("playbook done on 127.0.0.1: changed=4 failed=0") for line in shown)
    with pytest.raises(HostKeyMismatch):
        connect(sshd.access)  # the bootstrap key is gone
    rotated = replace(sshd.access, host_key=result.host_key)

    # what landed where, with which modes; the staging dir is gone
    root = Path(layout.root)
    assert (root / "marker").read_text() == "example.test\n"
    assert (root / "bundle" / "app" / ".env").stat().st_mode & 0o777 == 0o600
    assert (root / "bundle" / "ansible-vars.yml").stat().st_mode & 0o777 == 0o600
    assert (root / "runtime.yml").stat().st_mode & 0o777 == 0o600
    assert json.loads((root / "runtime.yml").read_text())["fedi_start_app"] is False
    assert (root / "ansible" / "site.yml").read_text() == SITE_YML
    assert staging_dirs() == before

    # the log is private, complete and free of the secret
    assert result.log_path.parent == logs
    assert result.log_path.stat().st_mode & 0o777 == 0o600
    log = result.log_path.read_text()
    assert "PLAY RECAP" in log and "TASK [Rotate the host key]" in log
    assert SECRET not in log and all(SECRET not in line for line in shown)

    # a second run on the converged host changes nothing and keeps the key
    again = configure(rotated, bundle, runtime, shown.append, layout=layout, log_dir=logs, ansible_dir=ansible)
    assert (again.changed, again.failed, again.host_key) == (0, 0, result.host_key)


def test_a_failed_task_is_one_line_naming_task_host_and_log(sshd: Sshd, tmp_path: Path) -> None:
    bundle, ansible, layout, runtime, _ = setup(tmp_path, sshd, fail=True)
    shown: list[str] = []
    with pytest.raises(RemoteError) as err:
        configure(
            sshd.access, bundle, runtime, shown.append, layout=layout, log_dir=tmp_path / "logs", ansible_dir=ansible
        )
    line = err.value.line()
    logs = list((tmp_path / "logs").iterdir())
    assert len(logs) == 1
    assert line == (
        "ansible task 'Fail on request' failed on 127.0.0.1 (host localhost): "
        f"cannot reach the database with ********; full log: {logs[0]}"
    )
    assert "failed   Fail on request" in shown
    text = logs[0].read_text()
    assert "Fail on request" in text and SECRET not in text


def test_configure_with_a_different_pinned_key_uploads_nothing(sshd: Sshd, tmp_path: Path) -> None:
    bundle, ansible, layout, runtime, _ = setup(tmp_path, sshd)
    wrong = replace(sshd.access, host_key=keypair(tmp_path / "impostor"))
    before = staging_dirs()
    with pytest.raises(HostKeyMismatch, match=r"^host key for 127\.0\.0\.1:\d+ does not match the pinned key"):
        configure(wrong, bundle, runtime, lambda _: None, layout=layout, log_dir=tmp_path / "logs", ansible_dir=ansible)
    assert not Path(layout.root).exists()
    assert staging_dirs() == before
    assert not (tmp_path / "logs").exists()  # no log either: nothing happened
    assert "Accepted publickey" not in sshd.log()


def test_a_published_key_that_sshd_does_not_serve_is_an_error(sshd: Sshd, tmp_path: Path) -> None:
    bundle, ansible, layout, runtime, _ = setup(tmp_path, sshd)
    keypair(tmp_path / "unrelated")
    runtime["test_published_key"] = str(tmp_path / "unrelated")  # what the server claims is not what it serves
    with pytest.raises(RemoteError) as err:
        configure(
            sshd.access, bundle, runtime, lambda _: None, layout=layout, log_dir=tmp_path / "l", ansible_dir=ansible
        )
    assert err.value.message.startswith(f"the playbook wrote a new host key to {layout.host_key_file} but sshd on ")
    assert "does not present it" in err.value.message


def test_a_playbook_that_does_not_rotate_the_key_is_an_error(sshd: Sshd, tmp_path: Path) -> None:
    bundle, ansible, layout, runtime, _ = setup(tmp_path, sshd)
    runtime["test_no_publish"] = True
    with pytest.raises(RemoteError) as err:
        configure(
            sshd.access, bundle, runtime, lambda _: None, layout=layout, log_dir=tmp_path / "l", ansible_dir=ansible
        )
    assert err.value.message.startswith(f"the playbook did not write {layout.host_key_file} on 127.0.0.1: ")


def test_one_configure_at_a_time(sshd: Sshd, tmp_path: Path) -> None:
    bundle, ansible, layout, runtime, _ = setup(tmp_path, sshd)
    layout = replace(layout, lock_file=str(tmp_path / "configure.lock"))
    with connect(sshd.access) as other:  # another operator's run holds the lock
        chan, _ = other.hold(commands.lock_argv(layout, sshd.access.user), commands.LOCKED)
        assert chan is not None
        with pytest.raises(RemoteError, match=r"^another fedi run is configuring 127\.0\.0\.1 right now"):
            configure(sshd.access, bundle, runtime, print, layout=layout, log_dir=tmp_path / "l", ansible_dir=ansible)
        assert not Path(layout.root).exists()
        other.release(chan)
    # released: the lock can be taken again at once
    with connect(sshd.access) as again:
        chan, rc = again.hold(commands.lock_argv(layout, sshd.access.user), commands.LOCKED)
        assert chan is not None, rc
        again.release(chan)


COPY_ARCHIVES = """\
    - name: Copy what the load-images role would load
      ansible.builtin.copy:
        src: "{{ item.file }}"
        dest: "{{ test_root }}/loaded-{{ item.ref | replace('/', '_') }}"
        remote_src: true
        mode: "0600"
      loop: "{{ fedi_image_archives }}"
"""


def test_image_archives_are_uploaded_named_in_runtime_and_removed_after_the_playbook(
    sshd: Sshd, tmp_path: Path
) -> None:
    from provision.lifecycle.images import ImageArchive

    bundle, ansible, layout, runtime, _ = setup(tmp_path, sshd)
    (ansible / "site.yml").write_text(
        SITE_YML.replace("    - name: Rotate the host key\n", COPY_ARCHIVES + "    - name: Rotate the host key\n", 1)
    )
    archives = tmp_path / "archives"
    archives.mkdir()
    (archives / "lemmy.tar").write_bytes(b"lemmy archive bytes" * 1000)
    (archives / "pictrs.tar").write_bytes(b"pictrs archive bytes")
    images = (
        ImageArchive("lemmy", "docker.io/dessalines/lemmy:0.19.20", archives / "lemmy.tar"),
        ImageArchive("pictrs", "docker.io/asonix/pictrs:0.5.24", archives / "pictrs.tar"),
    )
    shown: list[str] = []
    before = staging_dirs()
    configure(
        sshd.access, bundle, runtime, shown.append, layout=layout, log_dir=tmp_path / "logs", ansible_dir=ansible,
        images=images,
    )  # fmt: skip
    root = Path(layout.root)
    assert (root / "loaded-docker.io_dessalines_lemmy:0.19.20").read_bytes() == b"lemmy archive bytes" * 1000
    assert (root / "loaded-docker.io_asonix_pictrs:0.5.24").read_bytes() == b"pictrs archive bytes"
    loads = json.loads((root / "runtime.yml").read_text())["fedi_image_archives"]
    assert [x["ref"] for x in loads] == [i.ref for i in images]
    assert all(x["file"].startswith("/tmp/fedi-upload.") and x["file"].endswith(".tar") for x in loads)
    assert staging_dirs() == before  # the archives' directory is gone with the bundle's staging
    assert "uploading lemmy.tar (docker.io/dessalines/lemmy:0.19.20) to 127.0.0.1" in shown
