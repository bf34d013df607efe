"""Campaign batch expansion: the handler (``expander.py``), the batch and its messages (``building.py``),
pacing (``pacing.py``) and quiet-hours deferral (``deferral.py``)."""
