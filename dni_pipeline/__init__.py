"""Unlocked (DNI) training of a network split over Ray actors, with locked baselines on the same actors."""

__version__ = "0.1.0"
