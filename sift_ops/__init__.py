"""sift_ops package."""
