"""The data shipped in ``data/``: every file documented in ``data/README.md`` with its SHA-256."""

import hashlib
import re

from megatron_plm.shipped_data import REPO_DATA


def test_every_shipped_file_is_in_the_readme_with_its_checksum():
    readme = (REPO_DATA / "README.md").read_text()
    listed = dict((path, digest) for digest, path in re.findall(r"^([0-9a-f]{64})  (\S+)$", readme, re.MULTILINE))
    shipped = {
        p.relative_to(REPO_DATA).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in REPO_DATA.rglob("*")
        if p.is_file() and p.name != "README.md"
    }
    assert shipped == listed  # a new file needs its source, licence and checksum in data/README.md
    for path in shipped:
        assert readme.count(f"`{path.split('/')[0]}") >= 1, f"{path}: no section in data/README.md"
