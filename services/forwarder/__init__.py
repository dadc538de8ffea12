"""Forwarding unit: the XDP data plane and its Python control."""
