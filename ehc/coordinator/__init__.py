"""The leader's side: wiring (controller), health and fail-safe (decider), worker pool, sharding, metrics."""
