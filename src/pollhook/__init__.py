"""pollhook: poll what only answers when asked, push what changed as signed webhooks."""

__version__ = "0.1.0"
