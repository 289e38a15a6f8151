"""A corpus: reading Pile files, embedding them into Parquet shards, reading them back."""
