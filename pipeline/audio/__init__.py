"""Audio: decoding each format to mono 24 kHz float32 (decoders, containers, the PyAV reader), loudness, and the
per-sample decoder that applies a run's limits."""
