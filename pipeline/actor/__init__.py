"""The actor side: the shard processor (read, decode, batch, encode, write one shard), its Ray actor, decode tasks,
prefetch, the batch budget and device facts."""
