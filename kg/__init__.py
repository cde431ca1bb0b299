"""Knowledge-graph completion (link prediction) as plain PyTorch; job.py is what the core runs as a Ray task."""
