"""known_hosts and the client key are parsed once per process, and again when their file changes."""

from __future__ import annotations

import os
from pathlib import Path

import asyncssh

from remediator.clients import ssh


def known_hosts_line(host: str) -> str:
    key = asyncssh.generate_private_key("ssh-ed25519")
    return f"{host} {key.export_public_key().decode().strip()}\n"


def trusted(loaded: asyncssh.SSHKnownHosts, host: str) -> bool:
    return bool(loaded.match(host, host, None)[0])


def test_known_hosts_are_parsed_once_and_again_when_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    path.write_text(known_hosts_line("10.0.0.1"))
    first = ssh._load_once("known_hosts", str(path))
    assert ssh._load_once("known_hosts", str(path)) is first  # not parsed again
    assert trusted(first, "10.0.0.1") and not trusted(first, "10.0.0.2")
    # A host added (a ConfigMap update swaps the file): the next connection trusts it.
    replacement = tmp_path / "known_hosts.new"
    replacement.write_text(path.read_text() + known_hosts_line("10.0.0.2"))
    os.replace(replacement, path)
    second = ssh._load_once("known_hosts", str(path))
    assert second is not first and trusted(second, "10.0.0.2")


def test_a_missing_known_hosts_is_left_to_asyncssh_to_refuse(tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere")
    assert ssh._load_once("known_hosts", missing) == missing
    assert ssh._load_once("client_key", missing) == [missing]


def test_the_client_key_is_loaded_once_as_asyncssh_would_and_again_when_replaced(tmp_path: Path) -> None:
    path = tmp_path / "id_ed25519"
    path.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key())
    first = ssh._load_once("client_key", str(path))
    assert ssh._load_once("client_key", str(path)) is first
    assert [k.get_algorithm() for k in first] == [
        k.get_algorithm() for k in asyncssh.load_keypairs([str(path)])
    ]
    replacement = tmp_path / "id.new"
    replacement.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key())
    os.replace(replacement, path)
    second = ssh._load_once("client_key", str(path))
    assert second is not first
    assert second[0].public_data == asyncssh.load_keypairs([str(path)])[0].public_data
