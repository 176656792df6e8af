"""The config drive of a docker2vm instance: Nova's, plus ``docker2vm/*``.

:class:`ContainerInstanceMetadata` is Nova's InstanceMetadata with the
guest contract's files (``docker_rootfs.guest.contract.render_guest_files``:
argv, env, user, workdir, rootfs, stop signal/timeout, ...) yielded at the
root of the drive, rendered from the image's configuration and the
server metadata overrides (``docker_cmd``, ``docker_env``, ...).
"""

from nova.api.metadata import base as instance_metadata

from docker_rootfs.guest import contract


def guest_files(spec, handler, instance, stop_timeout):
    """``{path: bytes}`` of the docker2vm files for ``instance``.

    Raises :class:`docker_rootfs.guest.contract.ContractError` for a bad
    server metadata override (the driver turns it into an ImageError)."""
    return contract.render_guest_files(
        spec.config, instance.hostname or instance.name,
        metadata=dict(instance.metadata or {}),
        rootfs=handler.rootfs_delivery(), stop_timeout=stop_timeout,
        upper=handler.upper_serial())


class ContainerInstanceMetadata(instance_metadata.InstanceMetadata):
    def __init__(self, instance, guest_files=None, **kwargs):
        super().__init__(instance, **kwargs)
        self.docker2vm_files = dict(guest_files or {})

    def metadata_for_config_drive(self):
        yield from super().metadata_for_config_drive()
        for path, data in sorted(self.docker2vm_files.items()):
            yield (path, data)
