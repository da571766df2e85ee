"""Learning scores: score embedding, training objectives, the trainer and its checkpoints, models, DDPM."""
