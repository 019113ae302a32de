"""SSH key pairs: one for root on every machine (a Pulumi secret), one host key per machine."""
from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from infra.machines.errors import MachineSpecError


@dataclass(frozen=True)
class KeyPair:
    private_key: str  # OpenSSH PEM ("-----BEGIN OPENSSH PRIVATE KEY-----")
    public_key: str  # one authorized_keys line: "ssh-ed25519 AAAA... comment"


def generate_ed25519(comment: str = "pilothouse") -> KeyPair:
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    return KeyPair(private, f"{public} {comment}")


def load_private_key(text: str) -> paramiko.PKey:
    """Parse an unencrypted OpenSSH/PEM private key of any type paramiko supports."""
    for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return cls.from_private_key(io.StringIO(text))
        except (paramiko.SSHException, ValueError):
            continue
    raise MachineSpecError("the SSH private key is not an unencrypted ed25519, ECDSA or RSA key; "
                           "generate one with infra.machines.keys.generate_ed25519() or `ssh-keygen -N ''`")


def public_key_of(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.get_base64()}"


def same_public_key(a: str, b: str) -> bool:
    """Compare two authorized_keys lines by type and key material, ignoring the comment."""
    return a.split()[:2] == b.split()[:2]


def host_key_from_line(line: str) -> paramiko.PKey:
    kind, blob = line.split()[:2]
    return paramiko.PKey.from_type_string(kind, base64.b64decode(blob))
