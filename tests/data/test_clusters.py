"""The cluster mapping joined by hashes in NumPy arrays: same result as a dict of ids, same errors."""

import gzip

import numpy as np
import pytest

from megatron_plm.data.preprocess import clusters as clusters_module
from megatron_plm.data.hashing import hash_fields, hash_lines
from megatron_plm.data.preprocess.clusters import ClusterMap
from megatron_plm.data.preprocess.fasta import InputFormatError


def test_join_matches_a_dict_on_the_shipped_mapping(sample_fasta):
    path = str(sample_fasta).replace(".fasta.gz", ".clusters50.tsv.gz")
    names, index, members = [], {}, {}
    with gzip.open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            rep, member = line.rstrip(b"\r\n").split(b"\t")
            if number == 1 and (rep, member) == (b"cluster_representative", b"member"):
                continue
            if rep not in index:
                index[rep] = len(names)
                names.append(rep.decode())
            members[member] = index[rep]
    mapping = ClusterMap.load(path)
    assert list(mapping.names()) == names and mapping.num_clusters == 4597
    queries = list(members)[::7] + [b"not_a_member", b"", b"UniRef90_"]
    got = mapping.lookup(b"".join(q + b"\n" for q in queries))
    assert got.tolist() == [members.get(q, -1) for q in queries]


def test_hash_depends_only_on_the_field():
    ids = [b"", b"a", b"abcdefgh", b"abcdefgh\x00", b"UniRef90_A0A0A0A0A0_long_identifier_" * 3]
    alone = [hash_lines(i + b"\n") for i in ids]
    together_key, together_check = hash_lines(b"".join(i + b"\n" for i in ids))
    assert together_key.tolist() == [k[0] for k, _ in alone]
    assert together_check.tolist() == [c[0] for _, c in alone]
    assert len(set(together_key.tolist())) == len(ids)  # zero padding never equals a real zero byte
    buffer = np.frombuffer(b"xxabcdefghyy", dtype=np.uint8)
    assert hash_fields(buffer, [2], [8])[0][0] == together_key[2]


def write(tmp_path, text):
    path = tmp_path / "clusters.tsv"
    path.write_text(text)
    return path


def test_header_blank_lines_crlf_and_repeated_lines(tmp_path):
    path = write(tmp_path, "representative\tmember\r\nB\tx\r\n\nA\ty\nB\tz\nB\tx\n")
    mapping = ClusterMap.load(path)
    assert list(mapping.names()) == ["B", "A"]
    assert mapping.lookup(b"x\ny\nz\nB\nrepresentative\n").tolist() == [0, 1, 0, -1, -1]


def test_member_in_two_clusters_names_file_and_line(tmp_path):
    path = write(tmp_path, "A\tx\nA\ty\nB\tz\nB\ty\n")
    with pytest.raises(InputFormatError, match=r"clusters\.tsv:4: member 'y' is in two clusters \(also line 2\)"):
        ClusterMap.load(path)


def test_wrong_field_count_names_the_line(tmp_path):
    path = write(tmp_path, "A\tx\nA\ty\tz\n")
    with pytest.raises(InputFormatError, match=r"tsv:2: .*got 3 tab-separated fields"):
        ClusterMap.load(path)
    with pytest.raises(InputFormatError, match="empty cluster mapping"):
        ClusterMap.load(write(tmp_path, "\n\n"))


def test_hash_collisions_are_errors_not_merges(tmp_path, monkeypatch):
    real = clusters_module.hash_fields

    def weak(buffer, starts, lengths):  # every key collides; check words still tell ids apart
        key, check = real(buffer, starts, lengths)
        return np.zeros_like(key), check

    monkeypatch.setattr(clusters_module, "hash_fields", weak)
    with pytest.raises(InputFormatError, match=r"tsv:2: representatives 'A' \(line 1\) and 'B' have the same"):
        ClusterMap.load(write(tmp_path, "A\tx\nB\ty\n"))
    with pytest.raises(InputFormatError, match=r"tsv:2: members 'x' \(line 1\) and 'y' have the same 64-bit hash"):
        ClusterMap.load(write(tmp_path, "A\tx\nA\ty\n"))


def _same_map(a: ClusterMap, b: ClusterMap) -> None:
    for name in ("keys", "checks", "clusters", "first_lines"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name
    assert list(a.names()) == list(b.names())


@pytest.mark.parametrize("per_line", [None, 1 << 20])
def test_out_of_core_join_equals_the_in_memory_one_on_the_shipped_mapping(
    sample_fasta, tmp_path, monkeypatch, per_line
):
    """Bit for bit: one partition, or ~1000 (each partition's records cost 1 MiB: forced)."""
    path = str(sample_fasta).replace(".fasta.gz", ".clusters50.tsv.gz")
    in_memory = ClusterMap.load(path)
    assert in_memory.workdir is None and ClusterMap.load(path, memory_bytes=1 << 30).workdir is None
    if per_line:
        monkeypatch.setattr(clusters_module, "_PARTITION_BYTES_PER_LINE", per_line)
    made = []
    real_init = clusters_module._Partitions.__init__
    monkeypatch.setattr(
        clusters_module._Partitions, "__init__", lambda self, *a: made.append(a[1]) or real_init(self, *a)
    )
    with ClusterMap.load(path, memory_bytes=100_000, temp_dir=tmp_path) as joined:
        assert joined.workdir and isinstance(joined.keys, np.memmap)
        assert made == ([10, 10] if per_line else [0, 0])  # bits of the partition number
        _same_map(in_memory, joined)
        queries = b"".join(line.split(b"\t")[1] for line in gzip.open(path).read().splitlines(True)[1::5])
        queries += b"not_a_member\n\n"
        assert np.array_equal(joined.lookup(queries), in_memory.lookup(queries))
    assert list(tmp_path.iterdir()) == []  # its temporary files are gone


@pytest.mark.parametrize(
    "text, message",
    [
        ("A\tx\nA\ty\nB\tz\nC\tw\nB\ty\nC\tx\n", r"clusters\.tsv:5: member 'y' is in two clusters \(also line 2\)"),
        ("A\tx\n\nB\ty\n", None),
    ],
)
def test_out_of_core_join_reports_the_same_errors(tmp_path, monkeypatch, text, message):
    path = write(tmp_path, text)
    monkeypatch.setattr(clusters_module, "_PARTITION_BYTES_PER_LINE", 1 << 26)  # 2-4 partitions
    work = tmp_path / "work"
    work.mkdir()
    if message:
        with pytest.raises(InputFormatError, match=message):
            ClusterMap.load(path)
        with pytest.raises(InputFormatError, match=message):
            ClusterMap.load(path, memory_bytes=10, temp_dir=work)
        assert list(work.iterdir()) == []  # removed on the error
    else:
        with ClusterMap.load(path, memory_bytes=10, temp_dir=work) as joined:
            _same_map(ClusterMap.load(path), joined)


def test_out_of_core_join_of_a_representative_hash_collision(tmp_path, monkeypatch):
    monkeypatch.setattr(clusters_module, "_PARTITION_BYTES_PER_LINE", 1 << 26)
    real = clusters_module.hash_fields

    def colliding(buffer, starts, lengths):  # every field hashes to one key, with distinct check words
        key, check = real(buffer, starts, lengths)
        return np.zeros_like(key), check

    monkeypatch.setattr(clusters_module, "hash_fields", colliding)
    path = write(tmp_path, "A\tx\nB\ty\n")
    message = r"clusters\.tsv:2: representatives 'A' \(line 1\) and 'B' have the same 64-bit hash"
    with pytest.raises(InputFormatError, match=message):
        ClusterMap.load(path)
    with pytest.raises(InputFormatError, match=message):
        ClusterMap.load(path, memory_bytes=10, temp_dir=tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["clusters.tsv"]
