"""The job queue: one GPU worker, FIFO, persisted in SQLite, resumable after a crash."""
