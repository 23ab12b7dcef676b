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
