"""tunray-stack-python: a pure-Python TCP/IP stack (``"stack": "python"``).

Quick start::

    # pyproject.toml
    [project.entry-points.tunray]
    stack_python = "tunray_stack_python.plugin"

The sans-IO core is :class:`tunray_stack_python.core.Core` (a :class:`tunray.stackcore.StackCore`);
:class:`tunray_stack_python.stack.PythonStack` runs it under the core's :class:`tunray.stackdriver.StackDriver`.
"""

from __future__ import annotations

__all__ = ["PythonStack"]

from tunray_stack_python.stack import PythonStack
