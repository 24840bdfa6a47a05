"""End-to-end CLI behaviour that needs no container: help, errors, info, images."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def test_unknown_command_is_one_line_125(cli):
    r = cli("frobnicate")
    assert r.returncode == 125
    assert r.stderr.strip() == ("sandbox: 'frobnicate' is not a sandbox command "
                                "(see 'sandbox --help')")


def test_the_installed_sandbox_command_runs_without_importing_re():
    """``sandbox`` is a plain script beside the interpreter (bin/sandbox), not pip's
    entry-point wrapper, which imports ``re`` before our code runs."""
    script = Path(sys.executable).parent / "sandbox"
    assert script.read_text().startswith("#!")
    # -S: without site, an editable install's finder (which imports re itself) stays out
    import sandbox

    env = {"PYTHONPATH": str(Path(sandbox.__file__).parent.parent), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-S", "-X", "importtime", str(script), "--help"],
                       capture_output=True, text=True, check=False, env=env)
    assert r.returncode == 0 and r.stdout.startswith("Usage:  sandbox ")
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines()}
    assert "sandbox.cli" in imported and "re" not in imported


def test_the_collector_paused_for_start_up_is_back_in_a_forked_child_and_on_resume():
    """``sandbox`` runs its start-up with the cyclic collector off (``cli._pause_gc``); a
    process forked meanwhile (a container's PID 1, which may live for days) has it back at
    once, and ``resume_gc`` brings it back here. Run in a fresh interpreter: the pause is
    for a whole process."""
    code = """
import gc, os, sys
from sandbox import cli
cli._pause_gc()
assert not gc.isenabled()
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.write(w, b"child:%d" % gc.isenabled())
    os._exit(0)
os.waitpid(pid, 0)
child = os.read(r, 64).decode()
paused = gc.isenabled()
cli.resume_gc()
print(child, "paused:%d" % paused, "resumed:%d" % gc.isenabled())
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["child:1", "paused:0", "resumed:1"]


def test_unknown_global_flag(cli):
    r = cli("--bogus", "ps")
    assert r.returncode == 125 and "unknown flag: --bogus" in r.stderr


def test_help_lists_commands(cli):
    r = cli("--help")
    assert r.returncode == 0
    for name in ("run", "images", "pull", "build", "exec", "info"):
        assert f"  {name} " in r.stdout


def test_run_help_documents_docker_flags(cli):
    r = cli("run", "--help")
    assert r.returncode == 0
    for flag in ("--rm", "--name", "-e", "-w", "-u", "--network", "-v", "-i", "-t",
                 "--read-only", "--dry-run"):
        assert flag in r.stdout


@pytest.mark.requires_userns
def test_info_text_and_json_agree(cli):
    text = cli("info")
    data = cli("info", "--format", "json")
    assert text.returncode == 0 and data.returncode == 0
    info = json.loads(data.stdout)
    assert info["idmap"]["mode"] in ("subuid", "single")
    assert info["storage_driver"]["name"] in ("overlay", "fuse", "copy")
    assert f"ID mapping:       {info['idmap']['mode']}" in text.stdout
    assert f"Storage driver:   {info['storage_driver']['name']}" in text.stdout
    assert "max_user_namespaces" in text.stdout
    r = cli("info", "--format", "{{.idmap.mode}} {{.storage_driver.name}}")
    assert r.stdout == f"{info['idmap']['mode']} {info['storage_driver']['name']}\n", r.stderr


@pytest.mark.requires_userns
def test_storage_driver_override_is_reported(cli):
    r = cli("info", "--format", "json", env={"SANDBOX_STORAGE_DRIVER": "copy"})
    assert json.loads(r.stdout)["storage_driver"]["name"] == "copy"
    r = cli("run", "--rm", "--storage-driver", "zfs", "host", "true")
    assert r.returncode == 125 and "unknown storage driver 'zfs'" in r.stderr


@pytest.mark.requires_userns
def test_import_images_rmi_round_trip(cli, busybox_tar, tmp_path):
    r = cli("import", str(busybox_tar), "roundtrip:v1")
    assert r.returncode == 0, r.stderr
    image_id = r.stdout.strip()
    assert image_id.startswith("sha256:")
    listing = cli("images")
    assert "roundtrip" in listing.stdout and image_id[7:19] in listing.stdout
    assert listing.stdout.splitlines()[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID",
                                                      "CREATED", "SIZE"]
    r = cli("run", "--rm", "roundtrip:v1", "cat", "/etc/os-release")
    assert "BusyBox" in r.stdout
    r = cli("rmi", "roundtrip:v1")
    assert r.returncode == 0 and "Untagged: roundtrip:v1" in r.stdout
    assert "roundtrip" not in cli("images").stdout


def test_import_of_a_missing_file_is_one_line(cli, tmp_path):
    r = cli("import", str(tmp_path / "nope.tar"), "x")
    assert r.returncode == 125
    assert "no such file" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.requires_userns
def test_dry_run_prints_the_plan_and_leaves_nothing(cli, session_store):
    import os

    before = set(os.listdir(session_store / "containers")) if (
        session_store / "containers").exists() else set()
    r = cli("run", "--dry-run", "--read-only", "host", "true")
    assert r.returncode == 0, r.stderr
    assert "pivot_root" in r.stdout and "mount" in r.stdout
    assert set(os.listdir(session_store / "containers")) == before
