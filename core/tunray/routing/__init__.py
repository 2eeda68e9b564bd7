"""Xray-compatible routing: domain/IP/port matchers, geodata files, balancers, the router."""

from __future__ import annotations

from tunray.routing.balancer import Balancer
from tunray.routing.domain import DomainMatcher
from tunray.routing.geodata import GeoAssets
from tunray.routing.ip import IPMatcher
from tunray.routing.ports import PortList
from tunray.routing.router import Route, Router

__all__ = ["Balancer", "DomainMatcher", "GeoAssets", "IPMatcher", "PortList", "Route", "Router"]
