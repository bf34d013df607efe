"""Registered webhook endpoints: their own signing secrets (with rotation) and on/off switch."""
