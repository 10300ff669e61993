"""The render loop and what follows each batch: post-processing, PNG writing, records, the executors."""
