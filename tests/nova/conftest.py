"""Nova test bootstrap for tests/nova (Nova 34 from test-requirements.txt).

* Nova runs here in native-threading mode: ``OS_NOVA_DISABLE_EVENTLET_PATCHING=1``
  and ``nova.tests.functional`` (which calls ``nova.monkey_patch.patch()``)
  imported before anything pulls in oslo.messaging. Nova refuses that mode
  when eventlet is already imported (Glance, imported by tests/glance in
  the same pytest process, imports it without monkey patching); its guard
  (``poison_eventlet``) is disabled here so the order of test folders does
  not matter. Nothing is monkey patched either way.
* The shim ``nova/virt/docker2vm`` (what ``compute_driver =
  docker2vm.Docker2VMDriver`` imports) is shipped by the wheel into Nova's
  own ``nova/virt``; an editable install cannot put it there, so the
  checkout's ``nova/virt`` is appended to ``nova.virt.__path__``.
"""

import os
import pathlib
import sys

os.environ["OS_NOVA_DISABLE_EVENTLET_PATCHING"] = "1"

ROOT = pathlib.Path(__file__).resolve().parents[2]
SHIM_PARENT = ROOT / "nova" / "virt"


def _bootstrap():
    from nova import monkey_patch
    monkey_patch.poison_eventlet = lambda: None
    import nova.tests.functional  # noqa: F401  (monkey_patch.patch(): threading backend)
    import nova.virt
    if str(SHIM_PARENT) not in nova.virt.__path__:
        nova.virt.__path__.append(str(SHIM_PARENT))
    assert "nova" not in sys.modules or sys.modules["nova"].__file__.endswith("__init__.py")


_bootstrap()
