"""Running the work: Ray, retries, locks, where things live on disk."""
