"""Parquet shards of `predict --engine ray` (lolscan.scan.ray_engine.write_shard): every shard has the same schema
whatever its rows hold, and reads back as the JSONL rows (without Ray: the shard writer alone)."""
from __future__ import annotations

import json

import pytest

pq = pytest.importorskip("pyarrow.parquet")

from lolscan.scan.ray_engine import read_shard, write_shard  # noqa: E402
from lolscan.scan.report import jsonl_line  # noqa: E402

OK = {"source": "a/adapter.safetensors", "status": "ok", "error": None, "format": "peft", "rank": [4, 8], "layers": 2,
      "predictions": {"score": {"value": 1.5}}}
BAD = {"source": "b/broken.safetensors", "status": "error", "error": "not a safetensors file"}


def test_a_shard_of_unreadable_adapters_has_the_typed_columns_of_any_other(tmp_path):
    write_shard(tmp_path / "part-00000.parquet", [BAD])
    write_shard(tmp_path / "part-00001.parquet", [OK, BAD])
    schemas = [pq.read_schema(tmp_path / f"part-0000{i}.parquet") for i in (0, 1)]
    for schema in schemas:
        assert str(schema.field("rank").type) == "list<element: int64>" and str(schema.field("layers").type) == "int64"
        assert str(schema.field("status").type) == "string"
    # read back, the rows are the JSONL rows: a typed column a row did not have is left out again
    assert read_shard(tmp_path / "part-00000.parquet") == [json.loads(jsonl_line(BAD))]
    assert read_shard(tmp_path / "part-00001.parquet") == [json.loads(jsonl_line(r)) for r in (OK, BAD)]
