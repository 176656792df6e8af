"""Running the host tools the base-image build needs (apt-get, dpkg-deb,
gcc, sfdisk, mkfs.vfat, syslinux, mcopy, qemu-img)."""

import subprocess

from docker_rootfs import errors


def run(cmd, **kw):
    """Run ``cmd`` capturing its output; a ToolError names the tool and
    its last lines of error output when it is missing or fails."""
    try:
        return subprocess.run(cmd, check=True, capture_output=True, **kw)
    except FileNotFoundError as exc:
        raise errors.ToolError(f"{cmd[0]} not found (install it, see bindep.txt)") from exc
    except subprocess.CalledProcessError as exc:
        out = exc.stderr or exc.stdout or b""
        if isinstance(out, bytes):
            out = out.decode(errors="replace")
        tail = out.strip().splitlines()[-5:]
        raise errors.ToolError(f"{' '.join(map(str, cmd[:3]))} failed: {' / '.join(tail)}") from exc
