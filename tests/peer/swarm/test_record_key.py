"""The record signing key kept next to a volunteer's identity file (``peer.swarm.record_key``): the same key in every
process of that volunteer, never readable by others, and a clear line when the file is not usable."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from peer.errors import UserError
from peer.swarm.record_key import load_or_create_record_key, record_key_path

REPO = Path(__file__).resolve().parents[3]


def test_the_key_is_created_private_and_read_back_the_same(tmp_path):
    path = record_key_path(tmp_path / "peer.id")
    assert path == tmp_path / "peer.id.records.der"
    first = load_or_create_record_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_record_key(path).to_bytes() == first.to_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["peer.id.records.der"]  # no temporary file left behind


def test_a_key_others_can_read_is_refused_with_the_fix(tmp_path):
    path = record_key_path(tmp_path / "peer.id")
    load_or_create_record_key(path)
    path.chmod(0o644)
    with pytest.raises(UserError, match=rf"accessible by others \(mode 0644\): chmod 600 {path}"):
        load_or_create_record_key(path)


def test_unusable_key_files_give_one_clear_line(tmp_path):
    path = tmp_path / "junk.records.der"
    path.write_bytes(b"not a key")
    path.chmod(0o600)
    with pytest.raises(UserError, match="is unreadable"):
        load_or_create_record_key(path)
    der = serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    path.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(*der))
    with pytest.raises(UserError, match="is not an RSA key"):
        load_or_create_record_key(path)
    with pytest.raises(UserError, match="directory for --identity_path does not exist"):
        load_or_create_record_key(record_key_path(tmp_path / "missing" / "peer.id"))


SIGNER = """
import json, sys
from hivemind.utils.crypto import RSAPrivateKey
from peer.swarm.metrics import make_validators
identity = sys.argv[1] or None
signing = make_validators("run", identity)
out = {"subkey": signing.public_key.hex(),
       "process_key": RSAPrivateKey.process_wide().get_public_key().to_bytes().hex()}
try:
    make_validators("run", sys.argv[2])  # another volunteer's key in the same process
except RuntimeError as e:
    out["second"] = str(e)
print(json.dumps(out))
"""


def sign_in_a_new_process(identity: str, other: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", SIGNER, identity, other], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(300)
def test_every_process_of_a_volunteer_signs_with_its_key(tmp_path):
    identity, other = str(tmp_path / "peer.id"), str(tmp_path / "other.id")
    first, again = sign_in_a_new_process(identity, other), sign_in_a_new_process(identity, other)
    assert first["subkey"] == again["subkey"]  # one volunteer, one row at the coordinator
    assert bytes.fromhex(first["process_key"]) in bytes.fromhex(first["subkey"])  # hivemind's own records too
    assert first["second"] == again["second"] == "this process already signs DHT records with another RSA key"
    anonymous = sign_in_a_new_process("", other)  # no identity file: a new volunteer each start
    assert anonymous["subkey"] != first["subkey"]
