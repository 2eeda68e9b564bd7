"""Builds the cffi fast path (``tunray_stack_system/fastpath.c``) when a C compiler and the
Python headers are there; without them the plugin installs anyway and the stack runs its
pure-Python fast path (``tunray_stack_system.fastpath.load()`` returns None)."""

import os
import shutil
import sys
import sysconfig

from setuptools import setup

HEADER = os.path.join(sysconfig.get_paths()["include"], "Python.h")
CC = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]

if os.path.exists(HEADER) and shutil.which(CC):
    setup(cffi_modules=["tunray_stack_system/_build.py:ffibuilder"])
else:
    print(f"tunray-stack-system: no C compiler ({CC}) or no {HEADER} (apt-get install gcc python3-dev); "
          "installing without the C fast path", file=sys.stderr)
    setup()
