"""The layer every job shares: errors, the Ray session, jobs as Ray tasks and their sweeps, run
folders, atomic files and verified downloads, settings, datasets, plotting and the command-line
skeleton. It imports nothing else of the project."""
