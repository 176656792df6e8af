"""Test images for the guest tests, built with real tools (buildah), turned
into root filesystems with the project's own pipeline (archive flattener,
disk builder), cached under .cache/guest-tests keyed by their content."""

import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import tarfile
import tempfile

TOP = pathlib.Path(__file__).resolve().parents[2]
CACHE = TOP / ".cache"
IMAGES = CACHE / "guest-tests"

PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"
GROUP = "root:x:0:\napp:x:1000:\nextra:x:2000:app\nother:x:3000:root,app\n"
APPLETS = ("sh", "echo", "id", "cat", "ls", "hostname", "ip", "sleep", "pwd", "env",
           "grep", "df", "touch", "rm", "mkdir", "true", "false", "ps", "sync", "head",
           "awk", "sed", "wc", "tr", "kill", "mount", "stat")


def base_image(kernel_package=None):
    from docker_rootfs.guest import base_image as bi
    out = CACHE / ("base" if kernel_package is None else f"base-{kernel_package}")
    return bi.build_base_image(out, cache_dir=CACHE, kernel_package=kernel_package)


def _buildah(root, *args):
    cmd = ["buildah", "--root", str(root / "storage"), "--runroot", str(root / "run"),
           "--storage-driver", "vfs", *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def build_archive(name, files, config):
    """An OCI archive of a busybox-static image plus ``files`` ({path: text}),
    with ``config`` ({"entrypoint": [...], "cmd": [...], "env": [...],
    "user": str, "workingdir": str, "stopsignal": str}) set by buildah."""
    key = hashlib.sha256(json.dumps([name, files, config, PASSWD, GROUP, APPLETS],
                                    sort_keys=True).encode()).hexdigest()[:12]
    out = IMAGES / f"{name}-{key}.oci.tar"
    if out.exists():
        return out
    IMAGES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=IMAGES) as tmp:
        tmp = pathlib.Path(tmp)
        stage = tmp / "stage"
        (stage / "bin").mkdir(parents=True)
        (stage / "etc").mkdir()
        shutil.copy("/bin/busybox", stage / "bin/busybox")
        for a in APPLETS:
            os.symlink("busybox", stage / "bin" / a)
        (stage / "etc/passwd").write_text(PASSWD)
        (stage / "etc/group").write_text(GROUP)
        (stage / "data").mkdir()
        (stage / "data").chmod(0o1777)
        (stage / "home/app").mkdir(parents=True)
        os.chown(stage / "home/app", 1000, 1000)
        for path, text in files.items():
            p = stage / path.lstrip("/")
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
            p.chmod(0o755)
        c = _buildah(tmp, "from", "scratch")
        _buildah(tmp, "copy", c, str(stage), "/")
        args = []
        if "entrypoint" in config:
            args += ["--entrypoint", json.dumps(config["entrypoint"])]
        if "cmd" in config:
            args += ["--cmd", json.dumps(config["cmd"])]
        for e in config.get("env", ()):
            args += ["--env", e]
        for k, opt in (("user", "--user"), ("workingdir", "--workingdir"),
                       ("stopsignal", "--stop-signal")):
            if k in config:
                args += [opt, config[k]]
        _buildah(tmp, "config", *args, c)
        _buildah(tmp, "commit", "--format", "oci", c, f"oci-archive:{tmp / 'img.tar'}:{name}")
        os.replace(tmp / "img.tar", out)
    return out


def open_config(archive):
    from docker_rootfs.archive import open_image
    with open_image(str(archive)) as img:
        return img.config


def flatten_tar(archive):
    """The flattened rootfs tar (project flattener)."""
    from docker_rootfs.archive import open_image
    out = pathlib.Path(str(archive) + ".rootfs.tar")
    if not out.exists():
        with open_image(str(archive)) as img, open(str(out) + ".tmp", "wb") as f:
            img.flatten(f)
        os.replace(str(out) + ".tmp", out)
    return out


def rootfs_disk(archive):
    """A qcow2 rootfs disk (project disk builder), cached; the shared base."""
    from docker_rootfs.disk.build import build_disk
    from docker_rootfs.disk.options import DiskOptions
    out = pathlib.Path(str(archive) + ".qcow2")
    if not out.exists():
        build_disk(str(flatten_tar(archive)), str(out) + ".tmp.qcow2",
                   DiskOptions(disk_format="qcow2"))
        os.replace(str(out) + ".tmp.qcow2", out)
    return out


def instance_disk(base, dest, size_mib=None):
    """A per-instance qcow2 overlay on ``base``, as Nova makes it (optionally larger)."""
    cmd = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(dest)]
    if size_mib:
        cmd.append(f"{size_mib}M")
    subprocess.run(cmd, check=True)
    return dest


def rootfs_dir(archive, dest):
    """The flattened rootfs extracted into ``dest`` (root: keeps ownership)."""
    dest = pathlib.Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(flatten_tar(archive)) as t:
        t.extractall(dest, numeric_owner=True)
    return dest


def tree_digest(path):
    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for name in sorted(files + dirs):
            p = os.path.join(root, name)
            st = os.lstat(p)
            h.update(f"{os.path.relpath(p, path)} {st.st_mode} {st.st_uid} {st.st_size}\n".encode())
    return h.hexdigest()


def console_kv(boot):
    """``{KEY: value}`` of the first ``KEY=value`` console line per key (the
    probes in the guest tests print their findings that way)."""
    out = {}
    for _, line in boot.lines:
        m = re.match(r"^([A-Z_0-9]+)=(.*)$", line)
        if m:
            out.setdefault(m.group(1), m.group(2))
    return out
