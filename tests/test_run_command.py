"""``docker2vm run``: a real-tool archive -> rootfs disk -> base VM (TCG) ->
the entrypoint's output and exit status, the whole Approach-2 chain
without Nova."""

import subprocess
import sys

import pytest

pytestmark = [pytest.mark.vm, pytest.mark.slow]


def d2v(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "docker_rootfs.cli", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_run_image_entrypoint_and_cmd(fixture_archives, tmp_path):
    # basic-exec: Entrypoint ["/bin/busybox","echo"], Cmd ["hello","world"], User 1000:1000
    r = d2v("run", "--base-dir", str(tmp_path / "base"), str(fixture_archives["basic-exec"]))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "hello world" in r.stdout.splitlines()
    assert "docker2vm: exit status 0" in r.stdout


def test_run_cmd_override_env_and_exit_status(fixture_archives, tmp_path):
    r = d2v("run", "--base-dir", str(tmp_path / "base"), "-e", "EXTRA=x y",
            "--entrypoint", "/bin/busybox", str(fixture_archives["basic-exec"]),
            "sh", "-c", 'echo "[$EXTRA] [$GREETING] $(id -u):$(id -g) $(pwd)"; exit 3')
    assert r.returncode == 3, r.stdout + r.stderr
    assert "[x y] [hello] 1000:1000 /srv/app" in r.stdout.splitlines()


def test_run_bad_archive_is_one_line_error(tmp_path):
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"not an archive" * 100)
    r = d2v("run", "--base-dir", str(tmp_path / "base"), str(bad))
    assert r.returncode == 1
    assert r.stderr.strip().startswith("docker2vm: error:") and r.stderr.count("\n") == 1


def test_boot_converted_disk_with_its_properties(fixture_archives, tmp_path):
    """The Nova path without Nova: convert's disk + the property contract -> guest."""
    archive = str(fixture_archives["basic-exec"])
    disk = tmp_path / "rootfs.qcow2"
    assert d2v("convert", "--no-progress", archive, "-o", str(disk)).returncode == 0
    props = d2v("convert", "--print-properties", archive)
    assert props.returncode == 0
    (tmp_path / "props.json").write_text(props.stdout)
    before = disk.read_bytes()
    r = d2v("boot", "--base-dir", str(tmp_path / "base"), "--properties", str(tmp_path / "props.json"),
            str(disk), "from", "properties")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "from properties" in r.stdout.splitlines()   # Entrypoint busybox echo + new Cmd
    assert disk.read_bytes() == before                  # booted through an overlay


@pytest.mark.parametrize("case", ["missing-disk", "not-a-container-image", "bad-json"])
def test_boot_bad_input_is_one_line_error(tmp_path, case):
    props = tmp_path / "props.json"
    disk = tmp_path / "disk.qcow2"
    if case == "missing-disk":
        props.write_text('{"docker_delivery": "disk", "docker_cmd": "[\\"true\\"]"}')
    elif case == "not-a-container-image":
        props.write_text("{}")
        disk.write_bytes(b"x")
    else:
        props.write_text("{not json")
        disk.write_bytes(b"x")
    r = d2v("boot", "--base-dir", str(tmp_path / "base"), "--properties", str(props), str(disk))
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("docker2vm: error:") and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "base").exists()   # nothing built or left for bad input
