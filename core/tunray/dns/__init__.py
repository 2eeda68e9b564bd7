"""Xray-compatible DNS: a sans-IO message codec, upstream transports, the resolver, FakeDNS."""

from __future__ import annotations

from tunray.dns.resolver import NameServer, Resolver

__all__ = ["NameServer", "Resolver"]
