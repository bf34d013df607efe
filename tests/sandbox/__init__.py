"""Tests for the provider sandboxes (``notifications.sandbox``): plain pytest, no Django."""
