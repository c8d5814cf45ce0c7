"""Planning is pure and balanced; the commit protocol publishes only complete partitions."""

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ctmwa_batch.errors import InputSchemaError
from ctmwa_batch.io import partitions as P

SCHEMA = pa.schema([("post_id", pa.string()), ("status", pa.string())])


def write_posts(path, n, row_group_size):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    table = pa.table({"post_id": [f"p{i}" for i in range(n)], "text": ["t"] * n})
    pq.write_table(table, path, row_group_size=row_group_size)


@pytest.fixture
def partition(tmp_path):
    root = tmp_path / "posts" / "dt=2026-11-26"
    write_posts(str(root / "a.parquet"), 250, 100)  # row groups 100, 100, 50
    write_posts(str(root / "b.parquet"), 40, 40)
    (root / "_ignored.parquet").write_bytes(b"not parquet")
    (root / ".hidden.parquet").write_bytes(b"not parquet")
    return str(root)


def test_plan_cuts_whole_row_groups_under_the_limit_and_is_pure(partition, tmp_path):
    plan = P.plan_partition(partition, str(tmp_path / "out"), "v1", max_rows_per_shard=150)
    # greedy in listing order: [a rg0] [a rg1-2] [b rg0], a shard never exceeds the limit
    assert [s.num_rows for s in plan.shards] == [100, 150, 40]
    pieces = [[(os.path.basename(p.path), p.row_group_start, p.row_group_stop) for p in s.pieces] for s in plan.shards]
    assert pieces == [[("a.parquet", 0, 1)], [("a.parquet", 1, 3)], [("b.parquet", 0, 1)]]
    small = P.plan_partition(partition, str(tmp_path / "out"), "v1", max_rows_per_shard=300)
    assert [
        [(os.path.basename(p.path), p.row_group_start, p.row_group_stop) for p in s.pieces] for s in small.shards
    ] == [[("a.parquet", 0, 3), ("b.parquet", 0, 1)]]
    assert plan.num_rows == 290 and plan.partition == "dt=2026-11-26"
    assert plan.output_dir == f"{tmp_path}/out/model_version=v1/dt=2026-11-26"
    again = P.plan_partition(partition, str(tmp_path / "out"), "v1", max_rows_per_shard=150)
    assert again == plan and again.plan_id == plan.plan_id
    assert P.PartitionPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    one = P.plan_partition(partition, str(tmp_path / "out"), "v1", max_rows_per_shard=10_000)
    assert len(one.shards) == 1 and one.fingerprint == plan.fingerprint and one.plan_id != plan.plan_id


def test_partition_path_mirrors_hive_segments():
    assert P.partition_of("s3://lake/posts/dt=2026-11-26/hour=03/") == "dt=2026-11-26/hour=03"
    assert P.partition_of("/data/posts_2026.parquet") == "posts_2026"


def test_fingerprint_changes_with_the_input(partition, tmp_path):
    before = P.plan_partition(partition, str(tmp_path / "out"), "v1")
    write_posts(os.path.join(partition, "b.parquet"), 41, 41)
    after = P.plan_partition(partition, str(tmp_path / "out"), "v1")
    assert before.fingerprint["sha256"] != after.fingerprint["sha256"]


def test_missing_or_empty_input_is_a_clear_error(tmp_path):
    with pytest.raises(InputSchemaError, match="does not exist"):
        P.list_input(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputSchemaError, match="no .parquet files"):
        P.list_input(str(tmp_path / "empty"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.parquet").write_bytes(b"garbage")
    with pytest.raises(InputSchemaError, match="x.parquet.*not a readable Parquet"):
        P.list_input(str(tmp_path / "bad"))


def _score_shard(plan, index, fail=False):
    with P.part_writer(plan, index, SCHEMA) as sink:
        n = plan.shards[index].num_rows
        sink.writer.write_table(pa.table({"post_id": ["x"] * n, "status": ["ok"] * n}, schema=SCHEMA))
        if fail:
            raise RuntimeError("worker died")
        sink.stats.update(output_rows=n, status_counts={"ok": n})


def test_commit_publishes_only_a_complete_plan_and_sweeps_leftovers(partition, tmp_path):
    plan = P.plan_partition(partition, str(tmp_path / "out"), "v1", max_rows_per_shard=150)
    assert P.begin(plan)
    out = plan.output_dir
    # leftovers of a killed run and of an older plan
    open(f"{out}/.part-00000-old.parquet.tmp-dead", "wb").close()
    open(f"{out}/part-00007-oldplan.parquet", "wb").close()
    _score_shard(plan, 0)
    with pytest.raises(RuntimeError):
        _score_shard(plan, 1, fail=True)
    assert not [f for f in os.listdir(f"{out}/_shards") if f.startswith(".part-00001")]  # failed shard: no temp file
    # a finished shard is staged, not visible: a reader of the folder finds no part before the commit
    assert [f for f in os.listdir(out) if not f.startswith((".", "_"))] == ["part-00007-oldplan.parquet"]
    assert os.listdir(f"{out}/_shards") and plan.part_name(0) in os.listdir(f"{out}/_shards")
    with pytest.raises(P.PartitionNotReady, match=r"shard\(s\) \[1, 2\]"):
        P.commit(plan)
    assert P.read_success(out) is None
    _score_shard(plan, 1)
    _score_shard(plan, 2)
    success = P.commit(plan)
    assert sorted(os.listdir(out)) == sorted(["_SUCCESS.json", "_shards", *success["parts"]])
    assert success["rows"] == {"input": 290, "output": 290, "by_status": {"ok": 290}, "by_sentiment": {}}
    assert sorted(os.listdir(f"{out}/_shards")) == sorted(plan.marker_name(i).split("/")[1] for i in range(3))
    assert P.commit(plan)["parts"] == success["parts"]  # idempotent: the parts are already in place
    assert pq.read_table(out).num_rows == 290  # a reader sees exactly the committed parts
    assert P.is_committed(plan) and not P.begin(plan)  # a rerun is a no-op
    assert P.begin(plan, overwrite=True) and P.read_success(out) is None  # forcing withdraws the marker first
    assert P.shard_done(plan, 0) is None


def test_commit_refuses_a_row_count_mismatch(partition, tmp_path):
    plan = P.plan_partition(partition, str(tmp_path / "out"), "v1")
    P.begin(plan)
    with P.part_writer(plan, 0, SCHEMA) as sink:
        sink.stats.update(output_rows=3, status_counts={"ok": 3})
    with pytest.raises(P.PartitionNotReady, match="3 rows for 290"):
        P.commit(plan)
