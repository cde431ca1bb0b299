"""Knowledge-graph completion (link prediction) as plain PyTorch, with Ray job entry points (issue 5)."""
