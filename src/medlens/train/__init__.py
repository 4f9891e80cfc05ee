"""Training: cached datasets, losses, the Lightning module and the run orchestration."""
