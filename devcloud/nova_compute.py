"""nova-compute for the development cloud, able to load this checkout's driver.

``load_compute_driver`` imports ``nova.virt.<compute_driver>``; the
docker2vm driver is reached through the shim package ``nova/virt/docker2vm``
of this repository, which an editable install of docker2vm does not put
inside the installed ``nova.virt``. Rather than touching any virtualenv,
this launcher appends the checkout's ``nova/virt`` to ``nova.virt.__path__``
(after ``nova.cmd`` has done its monkey patching) and runs the stock
``nova-compute`` entry point. With ``compute_driver=libvirt.LibvirtDriver``
it behaves exactly as ``nova-compute``.

    python -m devcloud.nova_compute --config-file nova.conf ...
"""

import os
import sys

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    from nova.cmd import compute  # noqa: I001  (monkey patches first)
    import nova.virt
    shim = os.path.join(TOP, "nova", "virt")
    if os.path.isdir(os.path.join(shim, "docker2vm")) and shim not in nova.virt.__path__:
        nova.virt.__path__.append(shim)
    if TOP not in sys.path:
        sys.path.append(TOP)
    sys.argv[0] = "nova-compute"
    return compute.main()


if __name__ == "__main__":
    sys.exit(main())
