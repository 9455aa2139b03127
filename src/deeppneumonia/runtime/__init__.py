"""Where and how a run computes: device, precision and seeding (:mod:`.device`), torchrun / DDP (:mod:`.distributed`)."""
