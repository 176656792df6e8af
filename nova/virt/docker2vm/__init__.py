# Shim: Nova imports compute drivers only as nova.virt.<name>, so the wheel
# ships this one sub-package (no nova/__init__.py, no nova/virt/__init__.py:
# Nova's own packages stay Nova's) and nova.conf says
#     [DEFAULT] compute_driver = docker2vm.Docker2VMDriver
# The driver lives in nova_image_handler.driver.
from nova_image_handler.driver import Docker2VMDriver  # noqa: F401

__all__ = ["Docker2VMDriver"]
