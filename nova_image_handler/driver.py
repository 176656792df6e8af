"""``Docker2VMDriver``: Nova's libvirt driver, booting docker images as one VM each.

``compute_driver = docker2vm.Docker2VMDriver`` (the shim package
``nova/virt/docker2vm`` re-exports this class). For an image without a
``docker_delivery`` property, or with ``[docker2vm] sub_virt_type = none``,
every method is the stock ``LibvirtDriver``'s (the same domain XML byte
for byte). For a docker image:

* spawn reads the image's properties from the image API (full values),
  validates them, the host (base VM files, share support) and the server
  metadata overrides *before* anything is created, and raises an
  ImageError/HostError whose message names the property or option and path
  (the compute manager puts it into the instance fault, without
  rescheduling);
* the image is the instance's root disk for Nova's storage code
  (``_create_image`` is the stock one: ``_base`` download under Nova's lock,
  per-instance COW overlay sized to the flavor, image cache manager,
  rbd clone); the handler (:mod:`nova_image_handler.handlers`, stevedore)
  then prepares what else it needs (``share``: the unpacked tree);
* ``_get_guest_config`` is the stock config changed by
  :func:`nova_image_handler.guestxml.apply_container` (base VM boot, rootfs
  disk serial or share, memfd memory backing), also on hard reboot and
  power-on, from ``<instance dir>/docker2vm.json``;
* the config drive is forced and carries the ``docker2vm/*`` guest files;
* when the container has exited (the VM powered itself off), the exit
  status from the console log's last ``docker2vm: exit status N`` line is
  put into the server metadata key ``docker2vm_exit_status`` (on
  power-off sync and ``get_info``), so ``openstack server show`` shows it.
"""

import os
import re
import shutil

from nova import exception
from nova.compute import power_state
from nova.conf import CONF
from nova.objects import fields
from nova.virt import configdrive as nova_configdrive
from nova.virt.libvirt import driver as libvirt_driver
from nova.virt.libvirt import imagecache
from nova.virt.libvirt import utils as libvirt_utils
from oslo_log import log as logging

from docker_rootfs.guest import contract
from nova_image_handler import basevm, configdrive, errors, guestxml, handlers
from nova_image_handler import conf as d2v_conf
from nova_image_handler import spec as spec_mod

LOG = logging.getLogger(__name__)

EXIT_STATUS_KEY = "docker2vm_exit_status"
_EXIT_RE = re.compile(rb"docker2vm: exit status (\d+)")
_CONSOLE_TAIL = 64 * 1024

d2v_conf.register_opts(CONF)


def exit_status_from_console(path):
    """The last ``docker2vm: exit status N`` in the console log, or None."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - _CONSOLE_TAIL))
            data = f.read()
    except OSError:
        return None
    found = _EXIT_RE.findall(data)
    return int(found[-1]) if found else None


class Docker2VMDriver(libvirt_driver.LibvirtDriver):

    def __init__(self, virtapi, read_only=False):
        super().__init__(virtapi, read_only)
        self._image_api = None
        self._handlers = {}
        self._specs = {}           # instance uuid -> ContainerSpec (cache of docker2vm.json)
        if CONF.docker2vm.stop_timeout >= CONF.shutdown_timeout:
            LOG.warning("docker2vm: [docker2vm] stop_timeout (%s s) is not below "
                        "[DEFAULT] shutdown_timeout (%s s): Nova will destroy stopping "
                        "containers before their grace period ends",
                        CONF.docker2vm.stop_timeout, CONF.shutdown_timeout)

    # -- helpers -------------------------------------------------------------
    @property
    def image_api(self):
        if self._image_api is None:
            from nova.image import glance
            self._image_api = glance.API()
        return self._image_api

    @staticmethod
    def _enabled():
        return CONF.docker2vm.sub_virt_type == d2v_conf.SUB_VIRT_CONTAINER

    def handler(self, delivery):
        if delivery not in self._handlers:
            self._handlers[delivery] = handlers.load(delivery, CONF)
        return self._handlers[delivery]

    def base_vm(self):
        return basevm.BaseVM.from_conf(CONF)

    def _spec_for(self, instance):
        """The saved spec of a docker2vm instance on this host, or None."""
        if not self._enabled():
            return None
        spec = self._specs.get(instance.uuid)
        if spec is None:
            spec = spec_mod.load(libvirt_utils.get_instance_path(instance),
                                 CONF.docker2vm.default_delivery)
            if spec is not None:
                self._specs[instance.uuid] = spec
        return spec

    def _image_properties(self, context, image_id):
        image = self.image_api.get(context, image_id)
        return dict(image.get("properties") or {})

    def container_spec_from_image(self, context, instance):
        """Read and validate the image of ``instance``: a ContainerSpec, or None
        for a plain image. Checks this host (base VM, handler) too, so it raises
        before anything is created."""
        if not self._enabled() or not instance.image_ref:
            return None
        props = self._image_properties(context, instance.image_ref)
        if not spec_mod.is_container_image(props):
            return None
        spec = spec_mod.from_image_properties(instance.image_ref, props,
                                              CONF.docker2vm.default_delivery)
        self._check_architecture(spec)
        handler = self.handler(spec.delivery)
        self.base_vm().check()
        handler.check_host()
        self._guest_files(spec, handler, instance)       # validates metadata overrides
        return spec

    def _check_architecture(self, spec):
        """The base VM's kernel is built for this host's architecture: an image
        for another one cannot run its entrypoint there."""
        wanted = spec.properties.get("architecture")
        if not wanted:
            return
        host = fields.Architecture.canonicalize(os.uname().machine)
        try:
            image_arch = fields.Architecture.canonicalize(wanted)
        except exception.InvalidArchitectureName:
            raise errors.ImageError(
                image_id=spec.image_id,
                reason=f"image property architecture={wanted!r} is not an architecture "
                       "Nova knows") from None
        if image_arch != host:
            raise errors.ImageError(
                image_id=spec.image_id,
                reason=f"the container is built for {image_arch} (image property "
                       f"architecture) and this host's docker2vm base VM runs {host}")

    def _guest_files(self, spec, handler, instance):
        try:
            return configdrive.guest_files(spec, handler, instance, CONF.docker2vm.stop_timeout)
        except contract.ContractError as exc:
            raise errors.ImageError(image_id=spec.image_id, reason=str(exc)) from None

    def _root_base_path(self, image_id):
        return os.path.join(self.image_cache_manager.cache_dir,
                            imagecache.get_cache_fname(image_id))

    # -- spawn ---------------------------------------------------------------
    def spawn(self, context, instance, image_meta, injected_files,
              admin_password, allocations, network_info=None,
              block_device_info=None, power_on=True, accel_info=None):
        self._specs.pop(instance.uuid, None)
        spec = None
        if not self._is_booted_from_volume(block_device_info):
            spec = self.container_spec_from_image(context, instance)
        if spec is None:
            # a directory kept from an earlier docker image (shared storage)
            # must not turn this plain instance into a container
            stale = os.path.join(libvirt_utils.get_instance_path(instance), spec_mod.STATE_FILE)
            if os.path.exists(stale):
                os.unlink(stale)
            return super().spawn(context, instance, image_meta, injected_files,
                                 admin_password, allocations, network_info=network_info,
                                 block_device_info=block_device_info, power_on=power_on,
                                 accel_info=accel_info)
        self._specs[instance.uuid] = spec
        if not nova_configdrive.required_by(instance):
            # The guest reads its container from the config drive.
            instance.config_drive = "True"
        if EXIT_STATUS_KEY in (instance.metadata or {}):
            instance.metadata = {k: v for k, v in instance.metadata.items()
                                 if k != EXIT_STATUS_KEY}
        try:
            return super().spawn(context, instance, image_meta, injected_files,
                                 admin_password, allocations, network_info=network_info,
                                 block_device_info=block_device_info, power_on=power_on,
                                 accel_info=accel_info)
        except Exception:
            self._specs.pop(instance.uuid, None)
            raise

    def _create_image(self, context, instance, disk_mapping, injection_info=None,
                      suffix='', disk_images=None, block_device_info=None,
                      fallback_from_host=None, ignore_bdi_for_swap=False):
        inst_dir = libvirt_utils.get_instance_path(instance)
        existed = os.path.exists(inst_dir)
        result = super()._create_image(
            context, instance, disk_mapping, injection_info=injection_info, suffix=suffix,
            disk_images=disk_images, block_device_info=block_device_info,
            fallback_from_host=fallback_from_host, ignore_bdi_for_swap=ignore_bdi_for_swap)
        if suffix or not self._enabled():
            return result
        spec = self._specs.get(instance.uuid)
        if spec is None and not self._is_booted_from_volume(block_device_info):
            # Not from spawn: finish_migration (resize, cold migration) or
            # unshelve, whose new instance directory has no docker2vm.json.
            spec = self.container_spec_from_image(context, instance)
            if spec is not None:
                self._specs[instance.uuid] = spec
        if spec is None:
            return result
        try:
            self.prepare_container(context, instance, spec)
        except Exception:
            if not existed:
                LOG.info("docker2vm: removing %s after a failed preparation", inst_dir,
                         instance=instance)
                shutil.rmtree(inst_dir, ignore_errors=True)
            raise
        return result

    def prepare_container(self, context, instance, spec):
        """Per-host and per-instance files beyond Nova's root disk: the spec
        (for XML rebuilds), the base_vm_image overlay, the handler's state."""
        inst_dir = libvirt_utils.get_instance_path(instance)
        os.makedirs(inst_dir, exist_ok=True)
        spec_mod.save(inst_dir, spec)
        self.base_vm().create_overlay(inst_dir)
        self.handler(spec.delivery).prepare(context, instance, spec,
                                            self._root_base_path(spec.image_id))

    def _create_images_and_backing(self, context, instance, instance_dir, disk_info,
                                   fallback_from_host=None):
        """Hard reboot, power-on and migrations re-create missing backing files
        of the disks in the XML, fetching ``instance.image_ref`` for any qcow2
        backing: for the base_vm_image overlay that would download the
        container image into ``_base/<name of base_vm_image>``. Our overlay
        is ours to re-create (backing: the configured file), never Nova's."""
        ours = [i for i in (disk_info or [])
                if os.path.basename(i["path"]) == basevm.OVERLAY_NAME]
        if ours:
            disk_info = [i for i in disk_info if i not in ours]
            self.base_vm().create_overlay(instance_dir)
        return super()._create_images_and_backing(
            context, instance, instance_dir, disk_info, fallback_from_host=fallback_from_host)

    # -- domain XML ----------------------------------------------------------
    def _get_guest_config(self, instance, network_info, image_meta, disk_info,
                          rescue=None, block_device_info=None, context=None,
                          mdevs=None, accel_info=None, share_info=None, old_guest=None):
        guest = super()._get_guest_config(
            instance, network_info, image_meta, disk_info, rescue=rescue,
            block_device_info=block_device_info, context=context, mdevs=mdevs,
            accel_info=accel_info, share_info=share_info, old_guest=old_guest)
        spec = self._spec_for(instance)
        if spec is None or rescue:
            return guest
        mapping = disk_info.get("mapping", {})
        if "disk" not in mapping:
            return guest
        handler = self.handler(spec.delivery)
        base = self.base_vm()
        paths = {"root_dev": mapping["disk"]["dev"],
                 "base": base.overlay_path(libvirt_utils.get_instance_path(instance))}
        paths.update(handler.guest_paths(instance, spec))
        return guestxml.apply_container(guest, handler, base, paths)

    def _build_share_metadata(self, dev, shares):
        """Nova's device metadata knows only Manila shares: for any other
        <filesystem> it logs a WARNING ("found but it is not linked to any
        share") at every spawn, start and hard reboot. A share instance's
        container root (tag ``[docker2vm] share_tag``) is none of Nova's
        business: no metadata, no warning."""
        if self._enabled() and getattr(dev, "target_dir", None) == CONF.docker2vm.share_tag \
                and not any(s.tag == dev.target_dir for s in shares):
            return None
        return super()._build_share_metadata(dev, shares)

    # -- config drive --------------------------------------------------------
    def _create_configdrive(self, context, instance, injection_info, rescue=False):
        spec = self._spec_for(instance)
        if spec is None or rescue:
            return super()._create_configdrive(context, instance, injection_info,
                                               rescue=rescue)
        files = self._guest_files(spec, self.handler(spec.delivery), instance)
        # Nova's _create_configdrive (34.0.0) with our InstanceMetadata.
        instance.device_metadata = self._build_device_metadata(context, instance)
        name = "disk.config"
        config_disk = self.image_backend.by_name(instance, name,
                                                 self._get_disk_config_image_type())
        if config_disk.exists():       # never overwritten (hard reboot keeps it)
            return
        extra_md = {}
        if injection_info.admin_pass:
            extra_md["admin_pass"] = injection_info.admin_pass
        inst_md = configdrive.ContainerInstanceMetadata(
            instance, guest_files=files, content=injection_info.files, extra_md=extra_md,
            network_info=injection_info.network_info)
        local_path = os.path.join(libvirt_utils.get_instance_path(instance), name)
        LOG.info("Creating config drive at %s", local_path, instance=instance)
        with nova_configdrive.ConfigDriveBuilder(instance_md=inst_md) as cdb:
            cdb.make_drive(local_path)
        try:
            config_disk.import_file(instance, local_path, name)
        finally:
            if CONF.libvirt.images_type == "rbd":
                os.unlink(local_path)

    # -- exit status ---------------------------------------------------------
    def record_exit_status(self, instance):
        """Copy the container's exit status from the console log into the
        server metadata (the caller's ``instance.save()`` stores it)."""
        if self._spec_for(instance) is None:
            return None
        status = exit_status_from_console(self._get_console_log_path(instance))
        if status is not None and (instance.metadata or {}).get(EXIT_STATUS_KEY) != str(status):
            md = dict(instance.metadata or {})
            md[EXIT_STATUS_KEY] = str(status)
            instance.metadata = md
        return status

    def get_console_output(self, context, instance):
        """As the stock driver; for a docker2vm instance that has shut off
        (the container exited, or was stopped) the stock driver finds no
        console in the stopped domain: the log virtlogd wrote is returned,
        so ``openstack console log show`` gives the container's output and
        its exit status line."""
        try:
            return super().get_console_output(context, instance)
        except exception.ConsoleNotAvailable:
            path = self._get_console_log_path(instance)
            if self._spec_for(instance) is None or not os.path.exists(path):
                raise
            return self._get_console_output_file(instance, path)

    def get_info(self, instance, use_cache=True):
        info = super().get_info(instance, use_cache=use_cache)
        if info.state in (power_state.SHUTDOWN, power_state.CRASHED):
            try:
                self.record_exit_status(instance)
            except Exception:     # never fail a state query over it
                LOG.exception("docker2vm: reading the exit status failed", instance=instance)
        return info

    def power_off(self, instance, timeout=0, retry_interval=0):
        super().power_off(instance, timeout, retry_interval)
        self.record_exit_status(instance)

    def power_on(self, context, instance, network_info, block_device_info=None,
                 accel_info=None, share_info=None):
        result = super().power_on(context, instance, network_info,
                                  block_device_info=block_device_info, accel_info=accel_info,
                                  share_info=share_info)
        # After the (hard-reboot based) power-on: its destroy step saw the
        # domain shut off and may have recorded the previous run's status.
        if self._spec_for(instance) is not None and EXIT_STATUS_KEY in (instance.metadata or {}):
            instance.metadata = {k: v for k, v in instance.metadata.items()
                                 if k != EXIT_STATUS_KEY}
        return result

    # -- cleanup, cache, migration -------------------------------------------
    def cleanup(self, context, instance, network_info, block_device_info=None,
                destroy_disks=True, migrate_data=None, destroy_vifs=True,
                destroy_secrets=True):
        try:
            return super().cleanup(context, instance, network_info,
                                   block_device_info=block_device_info,
                                   destroy_disks=destroy_disks, migrate_data=migrate_data,
                                   destroy_vifs=destroy_vifs, destroy_secrets=destroy_secrets)
        finally:
            if destroy_disks:
                self._specs.pop(instance.uuid, None)

    def manage_image_cache(self, context, all_instances):
        super().manage_image_cache(context, all_instances)
        if not self._enabled():
            return
        used = {inst.image_ref for inst in all_instances if inst.image_ref}
        for name in handlers.names():
            try:
                self.handler(name).manage_cache(used)
            except Exception:
                LOG.exception("docker2vm: cache management of handler %s failed", name)

    def check_can_live_migrate_source(self, context, instance, dest_check_data,
                                      block_device_info=None):
        spec = self._spec_for(instance)
        if spec is not None and spec.delivery == "share":
            raise exception.MigrationPreCheckError(
                reason="docker2vm: live migration of a docker_delivery=share instance is "
                       "not supported (its root is a host-local share)")
        return super().check_can_live_migrate_source(
            context, instance, dest_check_data, block_device_info=block_device_info)
