"""Topics producers publish to, and who follows them (``Topic``, ``TopicSubscription``)."""
