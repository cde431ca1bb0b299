"""Cluster operations: a multi-node Ray cluster on one machine, and offline checks of the deploy files."""
