"""The contract between the coordinator and its workers: messages, frames, probe settings, log format.

Both processes import this package, so it imports nothing of ehc but itself.
"""
