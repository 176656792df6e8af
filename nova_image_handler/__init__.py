"""Nova side of docker2vm: NOT WRITTEN YET (no issue for it so far).

What belongs here: stevedore-loaded image handlers used by a libvirt
driver subclass (shipped as a small module inside ``nova.virt``, see
shared/NOTES.md) that boot the base VM (``docker2vm base-image``) and give
it the container's root filesystem: the Glance qcow2 as a second virtio
disk ("Approach 2", ``docker_delivery=disk``) or a 9p/virtiofs share of
the unpacked archive ("Approach 1", ``docker_delivery=share``).

What it reuses from the core, already written and tested:

* ``docker_rootfs.properties.config_from_properties`` reads the image
  property contract (docs/properties.md) back into a ContainerConfig; read
  the properties from the image API, not system_metadata (255-char cut);
* ``docker_rootfs.guest.contract.render_guest_files`` gives the files to
  add to the config drive (an InstanceMetadata subclass yielding them from
  ``metadata_for_config_drive``), with a stop timeout below
  ``shutdown_timeout``;
* ``docker_rootfs.guest.configdrive.build_config_drive`` is the same
  layout built outside Nova, for tests.
"""
