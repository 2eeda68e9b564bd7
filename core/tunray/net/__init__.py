"""Addresses, destinations and socket helpers shared by inbounds and outbounds."""
