"""Training-only helpers of the trainers in this folder (not part of the serving package)."""
