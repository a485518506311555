"""Event-VPR training on event drives: triplets by metric distance across traversals, recipe ``event-vpr``."""
