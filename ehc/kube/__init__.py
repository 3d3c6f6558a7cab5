"""Talking to the API server: client, one request path, lean models, list + watch, Lease election, Events,
status writes."""
