"""Pods as a source: selection (opt-in, eligibility, checks), the condition policy of annotation and
gate mode, and the source that ties them to the watch, the coordinator and the status writes."""

from ehc.sources.pods.conditions import current_health
from ehc.sources.pods.selection import Mode, PodTarget, Selection, select
from ehc.sources.pods.source import PodSource

__all__ = ["Mode", "PodSource", "PodTarget", "Selection", "current_health", "select"]
