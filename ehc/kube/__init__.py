"""Kubernetes side of the coordinator: lean pod model, watch, targets, leader election, patches."""
