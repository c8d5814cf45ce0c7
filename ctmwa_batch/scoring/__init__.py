"""How batches run: inputs, the decode pipeline, embedding, the scorer, the job and its orchestration."""
