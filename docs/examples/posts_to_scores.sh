#!/usr/bin/env bash
# From a raw labelled dataset to scores, with the three commands. docs/posts-to-scores.md and README.md show the part
# between the markers; tests/test_docs.py runs this file as it is, offline, with a tiny CLIP built on the spot
# (CLIP=its folder), a small MVSA-Single folder (MVSA=...) and a partition of generated posts (POSTS=...).
set -euo pipefail
# --8<-- [start:commands]
CLIP=${CLIP:-openai/clip-vit-base-patch32}   # a CLIP on the Hugging Face hub, or a folder with one
MVSA=${MVSA:-MVSA_Single}                    # the raw MVSA-Single folder (labelResultAll.txt, data/)
POSTS=${POSTS:-lake/posts/dt=2026-11-26}     # a partition of posts: post_id, text, image

# 1. CLIP towers to ONNX (uint8 pixels in, normalisation inside the graph; L2-normalised embeddings out),
#    fp32 and int8 by default; add --precision fp16 for GPU workers (see "Encoder precision")
ctmwa-export encoders --from "$CLIP" --out encoders/

# 2. a raw dataset to a features Parquet through the same encoders (see "Training on the real datasets")
ctmwa-train prepare mvsa-single --root "$MVSA" --bundle encoders/ --out features.parquet

# 3. train (keeps the best-validation epoch); writes model.safetensors, config.json, metrics.json
ctmwa-train --features features.parquet --out model/

# 4. the head graph (translators folded in), validated against PyTorch, joined to the encoders as one bundle
#    (options: --calibrate --features features.parquet, --fp16, --end-to-end)
ctmwa-export head --checkpoint model/ --encoders encoders/ --out bundle/
ctmwa-batch inspect bundle/ --format text     # verifies every checksum, prints labels, dims, metrics, calibration

# 5. score a partition of posts (options: --device auto|cpu|cuda, --precision auto|fp32|fp16|int8)
ctmwa-batch score --bundle bundle/ --input "$POSTS" --output lake/scores
# --8<-- [end:commands]
