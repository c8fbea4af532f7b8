"""The node socket API: protocol, server and client. Never imports torch."""
