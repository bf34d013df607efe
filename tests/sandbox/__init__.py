"""Tests for the provider sandboxes (``provider_sandbox``): plain pytest, no Django."""
