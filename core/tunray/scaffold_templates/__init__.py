"""File templates for ``tunray new-plugin``, one module per kind.

Each module exposes ``FILES``: relative path -> :class:`string.Template` text.  The
placeholders are ``$dist`` (distribution), ``$pkg`` (import package), ``$name``
(protocol, stack or transport name), ``$kind``, ``$cls`` (class name) and ``$ep``
(entry-point name).  Templates are Python strings, not data files, so they ship in
every wheel without package-data declarations.
"""
