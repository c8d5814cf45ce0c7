"""The shared pipeline: stages on their own threads (decoding overlaps inference), failures stop every stage, embed
runs on it with its decoding pool; a plan reads each input footer once and a shard task reads only its own files."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from ctmwa_batch.io import storage
from ctmwa_batch.model.posts import ImageDecoder
from ctmwa_batch.model.preprocess import ImageSpec
from ctmwa_batch.scoring import job, pipeline
from ctmwa_batch.scoring.embed import embed_posts
from tests import images
from tests.ctmwa_batch.cli.test_score import cpu, write_posts

SPEC = ImageSpec(size=16, resize_shortest_edge=16)


@dataclass
class _Prepared:
    images: list[bytes | None]
    index: int


def _batches(n: int, rows: int = 3) -> list[tuple[pa.RecordBatch, Path]]:
    return [(pa.record_batch({"k": [i] * rows}), Path(".")) for i in range(n)]


class _ListSink:
    def __init__(self) -> None:
        self.batches: list[pa.RecordBatch] = []
        self.threads: set[str] = set()
        self.finished = False

    def write(self, batch: pa.RecordBatch) -> None:
        self.threads.add(threading.current_thread().name)
        self.batches.append(batch)

    def finish(self) -> None:
        self.finished = True


def test_stages_run_on_their_own_threads_and_decoding_overlaps_inference():
    events: dict[str, list] = {"prepare": [], "infer": []}

    def prepare(batch: pa.RecordBatch, base: Path) -> _Prepared:
        k = batch.column("k")[0].as_py()
        events["prepare"].append((k, time.perf_counter(), threading.current_thread().name))
        return _Prepared([images.jpeg(40, 32, seed=k), None, b"junk"], k)

    def infer(prepared: _Prepared, decoded: pipeline.Decoded) -> pa.RecordBatch:
        pixels, ok, reasons = decoded
        start = time.perf_counter()
        time.sleep(0.2)  # a slow model: the reader must get ahead meanwhile
        events["infer"].append((prepared.index, start, time.perf_counter(), threading.current_thread().name))
        return pa.record_batch({"k": [prepared.index] * 3, "ok": ok.tolist(), "reason": reasons})

    sink = _ListSink()
    with ImageDecoder(SPEC, workers=0) as decoder:  # workers=0: decoding happens in the reader thread
        stats = pipeline.run(_batches(4), pipeline.Steps(prepare, infer), decoder, sink, queue_batches=2, name="t")
    assert [b.column("k")[0].as_py() for b in sink.batches] == [0, 1, 2, 3] and sink.finished
    assert sink.batches[0].column("ok").to_pylist() == [True, False, False]
    assert sink.batches[0].column("reason").to_pylist() == [None, "null", "not an image"]
    assert {e[2] for e in events["prepare"]} == {"t-read"} and {e[3] for e in events["infer"]} == {"MainThread"}
    assert sink.threads == {"t-write"}
    # batch 1 was read, prepared and decoded while batch 0 was still being inferred
    (_, infer0_start, infer0_end, _) = events["infer"][0]
    assert events["prepare"][1][1] < infer0_end
    assert (stats.rows, stats.batches) == (12, 4)
    assert set(stats.seconds.as_dict()) == {f.name for f in fields(pipeline.StageSeconds)}
    assert stats.seconds.decode > 0 and stats.seconds.total >= 4 * 0.2


def test_a_failing_stage_stops_the_run_and_is_raised():
    def prepare(batch: pa.RecordBatch, base: Path) -> _Prepared:
        k = batch.column("k")[0].as_py()
        if k == 2:
            raise ValueError("bad batch 2")
        return _Prepared([None], k)

    sink = _ListSink()
    before = {t.name for t in threading.enumerate()}
    with ImageDecoder(SPEC, workers=0) as decoder, pytest.raises(ValueError, match="bad batch 2"):
        pipeline.run(
            _batches(10),
            pipeline.Steps(prepare, lambda p, d: pa.record_batch({"k": [p.index]})),
            decoder,
            sink,
            name="f",
        )
    assert not sink.finished and len(sink.batches) <= 2
    assert {t.name for t in threading.enumerate()} - before == set()  # no stage left running


def test_parquet_sink_writes_fixed_row_groups_whatever_the_batch_size(tmp_path):
    schema = pa.schema([("x", pa.int64())])
    seen = Counter()
    with pq.ParquetWriter(tmp_path / "o.parquet", schema) as writer:
        sink = pipeline.ParquetSink(writer, schema, row_group_rows=4, tally=lambda b: seen.update(rows=b.num_rows))
        for start in range(0, 11, 3):
            sink.write(pa.record_batch({"x": list(range(start, min(start + 3, 11)))}, schema=schema))
        sink.finish()
    meta = pq.ParquetFile(tmp_path / "o.parquet").metadata
    assert [meta.row_group(k).num_rows for k in range(meta.num_row_groups)] == [4, 4, 3]
    assert pq.read_table(tmp_path / "o.parquet").column("x").to_pylist() == list(range(11)) and seen["rows"] == 11


def test_embed_runs_on_the_pipeline_with_its_decoding_pool(encoder_bundle, tmp_path):
    posts = write_posts(tmp_path / "posts.parquet", 12, row_group_size=4)
    pooled = embed_posts(encoder_bundle, posts, tmp_path / "a.parquet", batch_size=4, workers=2, device="cpu")
    inline = embed_posts(encoder_bundle, posts, tmp_path / "b.parquet", batch_size=4, workers=0, device="cpu")
    for stats in (pooled, inline):
        assert set(stats["timings"]) == {f.name for f in fields(pipeline.StageSeconds)}
        assert stats["rows"] == stats["has_image"] == 12 and stats["timings"]["decode"] > 0
    assert pooled["decode_workers"] == 2 and inline["decode_workers"] == 0
    assert pq.read_table(tmp_path / "a.parquet").equals(pq.read_table(tmp_path / "b.parquet"))


# --------------------------------------------------------------------------------------------------- footer reads


class _CountingHandler(pafs.FileSystemHandler):
    """A real local filesystem that counts the files opened for random access (how Parquet footers are read)."""

    def __init__(self) -> None:
        self.fs = pafs.LocalFileSystem()
        self.opened: Counter[str] = Counter()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _CountingHandler) and other is self

    def __ne__(self, other: object) -> bool:
        return not self == other

    def get_type_name(self) -> str:
        return "counting"

    def normalize_path(self, path: str) -> str:
        return self.fs.normalize_path(path)

    def get_file_info(self, paths):
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.fs.get_file_info(selector)

    def create_dir(self, path, recursive):
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise OSError("not on a test filesystem")

    def delete_file(self, path):
        self.fs.delete_file(path)

    def move(self, src, dest):
        self.fs.move(src, dest)

    def copy_file(self, src, dest):
        self.fs.copy_file(src, dest)

    def open_input_stream(self, path):
        return self.fs.open_input_stream(path)

    def open_input_file(self, path):
        self.opened[path] += 1
        return self.fs.open_input_file(path)

    def open_output_stream(self, path, metadata):
        return self.fs.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path, metadata):
        return self.fs.open_append_stream(path, metadata=metadata)


def test_a_plan_reads_each_footer_once_and_a_shard_only_its_own_files(full_bundle, tmp_path, monkeypatch):
    folder = tmp_path / "posts" / "dt=2026-11-26"
    files = [str(write_posts(folder / f"part-{k}.parquet", 10, row_group_size=5, start=10 * k)) for k in range(3)]
    handler = _CountingHandler()
    counting = pafs.PyFileSystem(handler)
    monkeypatch.setattr(storage, "open_filesystem", lambda path: (counting, str(Path(path).resolve())))

    plan = job.plan(folder, tmp_path / "out", full_bundle, config=cpu(max_rows_per_shard=10))
    assert {p: handler.opened[p] for p in files} == {p: 1 for p in files}  # one footer read per file, columns included
    assert len(plan["shards"]) == 3 and plan["columns"]["image_paths"] is False
    assert [f["row_groups"] for f in plan["fingerprint"]["files"]] == [[5, 5]] * 3

    handler.opened.clear()
    result = job.score_shard(plan, 1, full_bundle, cpu().to_dict())
    assert result["rows"] == 10 and not result["skipped"]
    assert {p: n for p, n in handler.opened.items() if p in files} == {files[1]: 1}  # the real read, nothing else

    handler.opened.clear()
    summary = job.score_partition(folder, tmp_path / "out2", full_bundle, cpu(max_rows_per_shard=10))
    assert summary["rows"]["output"] == 30
    assert {p: handler.opened[p] for p in files} == {p: 2 for p in files}  # the plan's footer read, then the real read


def test_a_shard_task_with_other_columns_than_its_plan_is_refused(full_bundle, tmp_path):
    src = write_posts(tmp_path / "posts.parquet", 4, lang=pa.array(["en"] * 4))
    plan = job.plan(src, tmp_path / "out", full_bundle, config=cpu())
    with pytest.raises(job.PlanMismatch, match=r"plan the partition again with this config"):
        job.score_shard(plan, 0, full_bundle, cpu(passthrough=("lang",)).to_dict())
