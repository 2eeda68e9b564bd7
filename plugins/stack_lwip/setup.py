"""Builds the cffi extension when Debian's liblwip-dev is installed; without it the
plugin installs anyway and ``"stack": "lwip"`` fails validation naming the package."""

import os
import sys

from setuptools import setup

HEADER = os.path.join(os.environ.get("TUNRAY_LWIP_INCLUDE", "/usr/include/lwip"), "lwip", "tcp.h")

if os.path.exists(HEADER):
    setup(cffi_modules=["tunray_stack_lwip/_build.py:ffibuilder"])
else:
    print(f"tunray-stack-lwip: {HEADER} missing (apt-get install liblwip-dev); "
          "installing without the lwIP extension", file=sys.stderr)
    setup()
