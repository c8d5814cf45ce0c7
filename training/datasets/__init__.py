"""Raw labelled datasets -> posts tables: MVSA-Single, MVSA-Multiple, TumEmo and generic tables; splits and query set.

Each reader returns `PostsRead(table, report)`: the posts table (`POSTS_SCHEMA`: post_id, text, image bytes,
label, t_label, v_label; class names in the schema metadata) and a `ReadReport` whose counts add up. The
`*_source` variants stream record batches instead, for sets too large to hold in memory.
"""

from ctmwa_training.datasets.common import (
    META_LABELS,
    META_UNIMODAL,
    POSTS_SCHEMA,
    PostsRead,
    PostsSource,
    ReadOptions,
    ReadReport,
    decode_text,
)
from ctmwa_training.datasets.generic import GenericConfig, generic_source, read_generic
from ctmwa_training.datasets.mvsa import (
    MVSA_LABELS,
    combine,
    majority,
    mvsa_source,
    read_mvsa_multiple,
    read_mvsa_single,
)
from ctmwa_training.datasets.splits import Assignment, SplitConfig, SplitReport, assign, read_split_file
from ctmwa_training.datasets.tumemo import TUMEMO_LABELS, read_tumemo, tumemo_source

__all__ = [
    "META_LABELS",
    "META_UNIMODAL",
    "MVSA_LABELS",
    "POSTS_SCHEMA",
    "TUMEMO_LABELS",
    "Assignment",
    "GenericConfig",
    "PostsRead",
    "PostsSource",
    "ReadOptions",
    "ReadReport",
    "SplitConfig",
    "SplitReport",
    "assign",
    "combine",
    "decode_text",
    "generic_source",
    "majority",
    "mvsa_source",
    "read_generic",
    "read_mvsa_multiple",
    "read_mvsa_single",
    "read_split_file",
    "read_tumemo",
    "tumemo_source",
]
