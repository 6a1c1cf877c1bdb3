"""warmswarm coordinator: monitors the swarm, stores its history, saves and serves checkpoints."""
