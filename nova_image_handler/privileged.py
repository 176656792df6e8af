"""The few host operations that need root, run through Nova's privsep
(``nova.privsep.sys_admin_pctxt``: its daemon has CAP_SYS_ADMIN; an
entrypoint only has to live in a module whose name starts with ``nova``).

In-process callers that are root already (tests) can set the context's
``client_mode = False``, as Nova's own tests do.
"""

import nova.privsep
from oslo_concurrency import processutils


@nova.privsep.sys_admin_pctxt.entrypoint
def readonly_bind_mount(path):
    """Make ``path`` a read-only bind mount of itself (what virtiofsd then exports)."""
    processutils.execute("mount", "--bind", path, path)
    try:
        processutils.execute("mount", "-o", "remount,bind,ro", path)
    except processutils.ProcessExecutionError:
        processutils.execute("umount", path)
        raise


@nova.privsep.sys_admin_pctxt.entrypoint
def umount(path):
    processutils.execute("umount", path)
