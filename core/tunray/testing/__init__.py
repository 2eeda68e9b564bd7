"""``tunray.testing``: what plugin authors need to test a plugin against tunray.

Registered as a pytest plugin (entry point ``pytest11``), so every fixture here is
available in any suite once tunray is installed:

* ``async def`` tests run on a fresh event loop (uvloop when installed) with a
  timeout; a test fails on an unhandled loop exception or a task it leaked.
* :mod:`tunray.testing.links`: in-memory :class:`~tunray.link.ByteLink` and
  :class:`~tunray.link.PacketLink` pairs with an app end the test drives.
* :mod:`tunray.testing.clock`: a fake clock for sans-IO cores.
* :mod:`tunray.testing.netns`: two-namespace topologies joined by veth (root only).
* :mod:`tunray.testing.echo`: TCP and UDP echo/sink servers.
* :mod:`tunray.testing.conformance`: ``check_outbound`` and ``check_stack``.
"""
