"""Worker side: the probe engine and the process that hosts it (``python -m ehc.worker``)."""
