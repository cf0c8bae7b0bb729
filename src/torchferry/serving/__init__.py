"""Serving: the model repository, batching, protocols and the server's lifecycle."""
