"""Builds the cffi fast path (``tunray_stack_system/fastpath.c``); the pure-Python path stays the fallback."""

from setuptools import setup

setup(cffi_modules=["tunray_stack_system/_build.py:ffibuilder"])
