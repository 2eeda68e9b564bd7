"""Xray-compatible DNS: a sans-IO message codec, a UDP client, hosts, and the resolver."""

from __future__ import annotations

from tunray.dns.resolver import NameServer, Resolver

__all__ = ["NameServer", "Resolver"]
