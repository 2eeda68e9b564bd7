"""``tunray new-plugin KIND NAME -o DIR``: write a ready-to-build plugin distribution.

The result, ``DIR/tunray-<kind>-<name>/``, is a setuptools project with the entry
point in group ``tunray``, a package ``tunray_<name>`` holding a small working
implementation of the kind, and a ``tests/`` suite that passes as generated once
the distribution is installed (``pip install -e .``; tunray finds plugins only
through entry points).  The templates live in :mod:`tunray.scaffold_templates`.
"""

from __future__ import annotations

import re
from pathlib import Path
from string import Template
from types import ModuleType

from tunray.plugin.registry import PluginError
from tunray.scaffold_templates import common, inbound, outbound, security, stack, transport

KINDS: dict[str, tuple[ModuleType, str, str, str]] = {
    # kind: (template module, class suffix, registry method, registry table)
    "inbound": (inbound, "Inbound", "add_inbound", "inbounds"),
    "outbound": (outbound, "Outbound", "add_outbound", "outbounds"),
    "stack": (stack, "Stack", "add_stack", "stacks"),
    "transport": (transport, "Transport", "add_transport", "transports"),
    "security": (security, "Security", "add_transport", "transports"),
}

NAME_RE = re.compile(r"[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*")


class ScaffoldError(PluginError):
    """A bad ``new-plugin`` request (bad name, existing directory): one line, no traceback."""


def names(kind: str, name: str) -> dict[str, str]:
    """Every name the templates use, derived from *kind* and *name*."""
    if kind not in KINDS:
        raise ScaffoldError(f"unknown plugin kind {kind!r}: expected one of {', '.join(KINDS)}")
    if not NAME_RE.fullmatch(name):
        raise ScaffoldError(
            f"bad plugin name {name!r}: use lower-case letters and digits, words joined by - or _ (like my-proxy)"
        )
    module, suffix, add, table = KINDS[kind]
    name_id = name.replace("-", "_")
    return {
        "kind": kind,
        "name": name,
        "name_id": name_id,
        "dist": f"tunray-{kind}-{name.replace('_', '-')}",
        "pkg": f"tunray_{name_id}",
        "ep": f"{kind}_{name_id}",
        "cls": "".join(part.capitalize() for part in name_id.split("_")) + ("" if name_id.endswith(kind) else suffix),
        "module": module.MODULE,
        "add": add,
        "table": table,
        "type_imports": getattr(module, "TYPE_IMPORTS", ""),
        "reg_name": f"security:{name}" if kind == "security" else name,  # the registry key
    }


def render(kind: str, name: str) -> dict[str, str]:
    """The distribution's files: relative path -> text."""
    values = names(kind, name)
    module = KINDS[kind][0]
    values["extra_hooks"] = Template(getattr(module, "PLUGIN_EXTRA", "")).substitute(values)
    pkg = values["pkg"]
    files = {
        "pyproject.toml": common.PYPROJECT,
        "README.md": common.README,
        f"{pkg}/__init__.py": common.INIT,
        f"{pkg}/plugin.py": common.PLUGIN,
        f"{pkg}/py.typed": "",
        "tests/conftest.py": common.CONFTEST,
    }
    files.update(module.FILES)
    return {Template(path).substitute(values): Template(text).substitute(values) for path, text in files.items()}


def write_plugin(kind: str, name: str, out: str | Path = ".") -> str:
    """Write the distribution under *out*; return the message the CLI prints."""
    files = render(kind, name)
    root = Path(out) / names(kind, name)["dist"]
    if root.exists():
        raise ScaffoldError(f"{root} already exists; choose another name or -o directory")
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    values = names(kind, name)
    return (
        f"wrote {values['dist']} ({len(files)} files) in {root}\n"
        f"next: cd {root} && pip install -e . && pytest\n"
        f"      tunray version   # lists {values['ep']} {values['dist']} 0.1.0"
    )
