"""Talking to the API server: client, lean models, list + watch, Lease election, Events, status writes."""
