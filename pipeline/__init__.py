"""The tokenization pipeline: sources -> audio -> codec actors -> Parquet shards + manifest."""
