"""Campaign models (see issue: campaigns)."""
