"""Token directory formats (vqaudio.tokens): round trips, offset/dedup, Megatron index, datasets."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vqaudio.tokens import (
    FORMATS,
    TokenEntry,
    TokenFormatError,
    dedup_codes,
    megatron_index_bytes,
    read_megatron_index,
    read_tokens,
    undedup_codes,
    write_token_dir,
)

META = {"checkpoint_id": "0123456789abcdef", "sample_rate": 16000, "hop_length": 64,
        "codebook_size": 512, "speakers": ["SF1", "TM1"]}


def _entries(seed: int = 0) -> list[TokenEntry]:
    rng = np.random.default_rng(seed)
    out = []
    for i, n in enumerate([37, 1, 250, 0, 90]):
        # Runs of repeats, as real codes have (silence), so that dedup has work to do.
        codes = np.repeat(rng.integers(0, 512, size=n), rng.integers(1, 4, size=n))[:n]
        out.append(TokenEntry(f"spk{i % 2}/utt{i}.wav", ["SF1", None][i % 2], codes.astype(np.int64), n * 64 / 16000))
    return out


def _needs(fmt: str) -> None:
    if fmt == "parquet":
        pytest.importorskip("pyarrow", reason="the parquet format needs pyarrow (pip install vqaudio[tokens])")


def test_dedup_round_trip():
    codes = np.array([5, 5, 5, 2, 7, 7, 5])
    units, runs = dedup_codes(codes)
    assert units.tolist() == [5, 2, 7, 5] and runs.tolist() == [3, 1, 2, 1]
    np.testing.assert_array_equal(undedup_codes(units, runs), codes)
    assert dedup_codes(np.zeros(0, np.int64))[0].size == 0
    with pytest.raises(TokenFormatError):
        undedup_codes(np.array([1, 2]), np.array([1]))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("offset,dedup", [(0, False), (50257, True), (3, False), (0, True)])
def test_round_trip(tmp_path, fmt, offset, dedup):
    _needs(fmt)
    entries = _entries()
    meta = write_token_dir(tmp_path / "tok", entries, META, format=fmt, offset=offset, dedup=dedup,
                           failures=[("bad.wav", "cannot decode audio")])
    assert meta["vocab_size"] == 512 + offset and meta["offset"] == offset and meta["dedup"] == dedup
    assert meta["num_codes"] == sum(e.codes.size for e in entries)
    if dedup:
        assert meta["num_tokens"] < meta["num_codes"]
    ts = read_tokens(tmp_path / "tok")
    assert ts.metadata["format"] == fmt and ts.metadata["codes_per_second"] == 250.0
    assert ts.speakers == ["SF1", "TM1"]
    assert [e.path for e in ts] == [e.path for e in entries]
    assert [e.speaker for e in ts] == [e.speaker for e in entries]
    for got, want in zip(ts, entries):
        assert got.codes.dtype == np.int64
        np.testing.assert_array_equal(got.codes, want.codes)
        assert got.duration == pytest.approx(want.duration)
    manifest = (tmp_path / "tok" / "manifest.tsv").read_text().splitlines()
    assert manifest[0] == "path\tspeaker\tnum_codes\tduration" and len(manifest) == len(entries) + 1
    assert manifest[2].split("\t")[1] == "-"  # no speaker
    assert (tmp_path / "tok" / "failures.tsv").read_text().splitlines()[1] == "bad.wav\tcannot decode audio"


def test_bin_layout_is_flat_uint16_with_megatron_index(tmp_path):
    entries = _entries()
    write_token_dir(tmp_path, entries, META, format="bin", offset=100)
    flat = np.memmap(tmp_path / "tokens.bin", dtype=np.uint16, mode="r")
    np.testing.assert_array_equal(flat, np.concatenate([e.codes for e in entries]) + 100)
    index = [json.loads(line) for line in (tmp_path / "index.jsonl").read_text().splitlines()]
    dtype, lengths, pointers = read_megatron_index(tmp_path / "tokens.idx")
    assert dtype == np.uint16
    assert lengths.tolist() == [row["length"] for row in index] == [e.codes.size for e in entries]
    assert pointers.tolist() == [2 * row["offset"] for row in index]
    row = index[2]
    np.testing.assert_array_equal(flat[row["offset"] : row["offset"] + row["length"]], entries[2].codes + 100)
    assert row["path"] == entries[2].path and row["speaker"] == "SF1"


def test_megatron_index_layout():
    data = megatron_index_bytes([3, 5], np.dtype(np.uint16))
    assert data[:9] == b"MMIDIDX\x00\x00"
    assert int.from_bytes(data[9:17], "little") == 1 and data[17] == 8  # version 1, uint16
    assert int.from_bytes(data[18:26], "little") == 2 and int.from_bytes(data[26:34], "little") == 3
    assert np.frombuffer(data[34:42], "<i4").tolist() == [3, 5]
    assert np.frombuffer(data[42:58], "<i8").tolist() == [0, 6]
    assert np.frombuffer(data[58:82], "<i8").tolist() == [0, 1, 2]


def test_large_vocabulary_uses_int32(tmp_path):
    entries = [TokenEntry("a.wav", None, np.array([0, 511, 7]), 0.012)]
    meta = write_token_dir(tmp_path, entries, META, format="bin", offset=65530)
    assert meta["token_dtype"] == "int32"
    assert read_megatron_index(tmp_path / "tokens.idx")[0] == np.int32
    np.testing.assert_array_equal(read_tokens(tmp_path).entries[0].codes, [0, 511, 7])


@pytest.mark.parametrize("format", ["parquet", "jsonl"])
def test_datasets_loads_the_token_dir_as_it_is(tmp_path, monkeypatch, format):
    """The obvious calls load the codes and nothing else (not failures.tsv, not shards/*.json)."""
    pytest.importorskip("pyarrow", reason="needs pyarrow (pip install vqaudio[tokens])")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    datasets = pytest.importorskip("datasets", reason="needs datasets (pip install vqaudio[tokens])")
    entries = _entries()
    out = tmp_path / "tok"
    write_token_dir(out, entries, META, format=format, offset=10, failures=[("bad.wav", "too short")])
    (out / "shards").mkdir()  # what `vqaudio tokenize` leaves beside the data
    (out / "shards" / "r0-000001.json").write_text('{"files": []}')
    builder = "parquet" if format == "parquet" else "json"
    for args, kwargs in [((str(out),), {}), ((builder,), {"data_dir": str(out)})]:
        ds = datasets.load_dataset(*args, **kwargs, split="train", cache_dir=str(tmp_path / "cache"))
        assert len(ds) == len(entries)
        assert ds[2]["input_ids"] == (entries[2].codes + 10).tolist()
        assert ds[0]["speaker"] == "SF1" and ds[1]["speaker"] is None


def test_parquet_describes_itself(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet", reason="needs pyarrow (pip install vqaudio[tokens])")
    meta = write_token_dir(tmp_path, _entries(), META, format="parquet", offset=10, dedup=True)
    described = json.loads(pq.read_schema(tmp_path / meta["files"][0]).metadata[b"vqaudio"])
    assert described["checkpoint_id"] == META["checkpoint_id"] and described["speakers"] == META["speakers"]
    assert (described["offset"], described["dedup"], described["vocab_size"]) == (10, True, 522)


def test_a_new_export_removes_the_data_of_the_old_format(tmp_path):
    write_token_dir(tmp_path, _entries(), META, format="jsonl")
    assert (tmp_path / "data" / "train.jsonl").is_file()
    write_token_dir(tmp_path, _entries(), META, format="bin")
    assert not (tmp_path / "data").exists() and (tmp_path / "tokens.bin").is_file()
    assert [e.path for e in read_tokens(tmp_path)] == [e.path for e in _entries()]


def test_reads_format_version_1(tmp_path):
    """Token directories of vqaudio before the data/ layout (tokens.jsonl, "codes") still read."""
    entries = _entries()
    meta = write_token_dir(tmp_path, entries, META, format="jsonl", offset=3)
    lines = (tmp_path / "data" / "train.jsonl").read_text().splitlines()
    old = [json.loads(ln) for ln in lines]
    for row in old:
        row["codes"] = row.pop("input_ids")
    (tmp_path / "tokens.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    (tmp_path / "data" / "train.jsonl").unlink()
    meta.update(format_version=1, files=["tokens.jsonl", "manifest.tsv", "failures.tsv"])
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    for got, want in zip(read_tokens(tmp_path), entries):
        np.testing.assert_array_equal(got.codes, want.codes)


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="outside"):
        write_token_dir(tmp_path / "a", [TokenEntry("x", None, np.array([512]))], META)
    with pytest.raises(ValueError, match="unknown token format"):
        write_token_dir(tmp_path / "a", [], META, format="csv")
    with pytest.raises(TokenFormatError, match="no metadata.json"):
        read_tokens(tmp_path / "a")
    with pytest.raises(TokenFormatError, match="no such token directory"):
        read_tokens(tmp_path / "missing")
    write_token_dir(tmp_path / "b", _entries(), META)
    meta = json.loads((tmp_path / "b" / "metadata.json").read_text())
    meta["format_version"] = 99
    (tmp_path / "b" / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(TokenFormatError, match="upgrade vqaudio"):
        read_tokens(tmp_path / "b")
