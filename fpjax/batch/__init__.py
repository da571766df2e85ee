"""Many images at once: batched, sharded pre-computation, seeding, and the resumable zarr store."""
