"""Corpus readers: formats, order, and bad input reported with file and line."""

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from blt_jax.data.sources import SourceError, SourceStats, iter_documents, list_files, open_corpus


@pytest.fixture()
def corpus(tmp_path):
    (tmp_path / "b.txt").write_bytes(b"second file\n")
    (tmp_path / "a.txt").write_bytes("first file \u00e9".encode())
    (tmp_path / "bin.dat").write_bytes(bytes([0, 255, 128, 10]))  # not UTF-8: passes untouched
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / ".hidden").write_bytes(b"ignored")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.jsonl").write_text(
        '{"text": "one"}\n\n{not json}\n{"body": "x"}\n{"text": 5}\n{"text": ""}\n{"text": "two"}\n'
    )
    pq.write_table(pa.table({"content": ["p1", None, "", "p2"]}), tmp_path / "sub" / "d.parquet")
    os.symlink(tmp_path / "missing", tmp_path / "broken.txt")  # unreadable (root reads any real file)
    return tmp_path


def test_formats_order_and_counters(corpus, caplog):
    stats = SourceStats()
    docs = list(iter_documents(str(corpus), stats=stats))
    origins = [d.origin.replace(str(corpus) + os.sep, "") for d in docs]
    assert origins == ["a.txt", "b.txt", "bin.dat", "sub/c.jsonl:1", "sub/c.jsonl:7"]
    assert docs[2].data == bytes([0, 255, 128, 10]) and docs[0].data == "first file \u00e9".encode()
    # Bad: the broken link, 3 JSON lines, and the Parquet file without a 'text' column.
    assert stats.documents == 5 and stats.empty == 3 and stats.bad == 5 and stats.files == 7
    messages = caplog.text
    assert "c.jsonl:3: invalid JSON" in messages and "c.jsonl:4: no 'text' field" in messages
    assert "c.jsonl:5: field 'text' is int" in messages and "broken.txt: cannot read" in messages
    # The parquet file has no 'text' column: reported, not fatal.
    assert "d.parquet: no column 'text' (columns: content)" in messages


def test_parquet_column(corpus):
    stats = SourceStats()
    docs = list(iter_documents(str(corpus / "sub" / "*.parquet"), text_field="content", stats=stats))
    assert [d.data for d in docs] == [b"p1", b"p2"] and [d.origin[-2:] for d in docs] == ["#1", "#4"]
    assert stats.empty == 2


def test_corrupt_parquet_is_reported(tmp_path, caplog):
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not parquet")
    stats = SourceStats()
    assert list(iter_documents(str(tmp_path), stats=stats)) == []
    assert stats.bad == 1 and "bad.parquet: unreadable Parquet" in caplog.text
    with pytest.raises(SourceError, match="bad.parquet: unreadable Parquet"):
        list(iter_documents(str(tmp_path), strict=True))


def test_strict_stops_at_first_bad_line(corpus):
    with pytest.raises(SourceError, match=r"c\.jsonl:3: invalid JSON"):
        list(iter_documents(str(corpus / "sub" / "c.jsonl"), strict=True))


def test_missing_paths_fail_before_reading(tmp_path):
    with pytest.raises(SourceError, match="no such file or directory"):
        iter_documents(str(tmp_path / "nope"))
    with pytest.raises(SourceError, match="pattern matches no files"):
        list_files(str(tmp_path / "*.jsonl"))
    (tmp_path / "d").mkdir()
    with pytest.raises(SourceError, match="directory holds no files"):
        list_files(str(tmp_path / "d"))


def test_random_access_across_parquet_row_groups_and_jsonl_lines(tmp_path):
    pq.write_table(pa.table({"text": [f"row {i}" for i in range(10)]}), tmp_path / "t.parquet", row_group_size=3)
    (tmp_path / "u.jsonl").write_text("".join(f'{{"text": "line {i}"}}\n' for i in range(5)))
    source = open_corpus(str(tmp_path))
    assert len(source) == 15
    order = [9, 0, 4, 14, 3, 10, 7]
    got = [source[i].data.decode() for i in order]
    assert got == ["row 9", "row 0", "row 4", "line 4", "row 3", "line 0", "row 7"]
    assert source[12].origin.endswith("u.jsonl:3") and source[2].origin.endswith("t.parquet#3")
    with pytest.raises(IndexError):
        source[15]
