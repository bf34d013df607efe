"""Provider adapters: one per provider behind one async interface, ``await adapter.send(message) -> SendResult``.

The interface is in ``base.py``, what a send returns in ``results.py`` and ``errors.py``; ``registry.py``
builds the adapters of each channel from the ``Provider`` table and settings.
"""
