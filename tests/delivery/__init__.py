"""Tests for notifications.delivery (plain Python + real Redis; no Django)."""
