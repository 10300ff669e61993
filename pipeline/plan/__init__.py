"""What a run does before any pixel: request identities, which rows are done, LoRA sets, batches, shards."""
