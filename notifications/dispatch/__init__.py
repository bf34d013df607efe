"""The dispatcher: turns each event into the messages each recipient wants, ready to send."""
