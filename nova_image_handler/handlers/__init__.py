"""Image handlers: one per ``docker_delivery``, loaded with stevedore.

Like Nova's ``virt/libvirt/imagebackend.py`` (one class per backend behind
one interface), each delivery is one class implementing
:class:`~nova_image_handler.handlers.base.ImageHandler`, registered in this
project's entry-point namespace :data:`NAMESPACE` (setup.cfg)::

    docker2vm.nova.handlers =
        disk = nova_image_handler.handlers.disk:DiskHandler
        share = nova_image_handler.handlers.share:ShareHandler

The driver picks one per instance from the image's ``docker_delivery``.
"""

from nova_image_handler import errors

NAMESPACE = "docker2vm.nova.handlers"


def names():
    from stevedore import extension
    return sorted(extension.ExtensionManager(NAMESPACE).names())


def load(name, conf):
    """The handler registered as ``name``, constructed with ``conf``."""
    from stevedore import driver
    from stevedore import exception as stevedore_exc
    try:
        mgr = driver.DriverManager(NAMESPACE, name, invoke_on_load=True, invoke_args=(conf,))
    except stevedore_exc.NoMatches:
        raise errors.HostError(
            reason=f"no image handler {name!r} in the entry-point namespace {NAMESPACE} "
                   "(is docker2vm installed in Nova's environment?)") from None
    return mgr.driver
