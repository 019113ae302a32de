"""Key material for the sample Secrets marked with GENERATE_ANNOTATION: made at deploy time, never committed,
kept in keys_dir and reused on later runs so `pulumi up` sees no diff.

The annotation's value names the kind and the data keys to fill, e.g. `x509 cn=kubia.example.com
cert=tls.crt key=tls.key` (a self-signed certificate), `x509-ca ca-cn=cert ca=ca.crt ca-key=ca.key
cn=svc.ns.svc cert=tls.crt key=tls.key` (a CA and a serving certificate it signs) or `ssh-rsa
private=ssh-privatekey public=ssh-publickey`.
"""
from __future__ import annotations

import base64
import datetime
from pathlib import Path

from infra.workloads.manifests import ManifestError, object_key

GENERATE_ANNOTATION = "pilothouse/generate"


def _x509(cn: str, issuer: tuple[bytes, bytes] | None = None, ca: bool = False) -> tuple[bytes, bytes]:
    """(certificate, RSA key in PKCS#1), both PEM, for DNS name `cn`: self-signed, or signed by `issuer`
    (its certificate and key PEM); `ca` makes it a CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    signer, issuer_name = key, name
    if issuer:
        issuer_cert = x509.load_pem_x509_certificate(issuer[0])
        signer = serialization.load_pem_private_key(issuer[1], password=None)
        issuer_name = issuer_cert.subject
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=3650))
               .add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False))
    if ca:
        builder = (builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=True, key_cert_sign=True,
                                                content_commitment=False, data_encipherment=False,
                                                key_agreement=False, crl_sign=False, encipher_only=False,
                                                decipher_only=False), critical=True))
    elif issuer:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    cert = builder.sign(signer, hashes.SHA256())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _ssh_rsa() -> tuple[bytes, bytes]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public + b"\n"


def _generate(spec: str) -> dict[str, bytes]:
    kind, *pairs = spec.split()
    fields = dict(p.split("=", 1) for p in pairs)
    if kind == "x509":
        cert, key = _x509(fields["cn"])
        return {fields["cert"]: cert, fields["key"]: key}
    if kind == "x509-ca":
        ca = _x509(fields["ca-cn"], ca=True)
        cert, key = _x509(fields["cn"], issuer=ca)
        return {fields["ca"]: ca[0], fields["ca-key"]: ca[1], fields["cert"]: cert, fields["key"]: key}
    if kind == "ssh-rsa":
        private, public = _ssh_rsa()
        out = {fields["private"]: private}
        if "public" in fields:
            out[fields["public"]] = public
        return out
    raise ManifestError(f"unknown {GENERATE_ANNOTATION} kind {kind!r} (x509, x509-ca, ssh-rsa)")


def with_generated_keys(obj: dict, keys_dir: Path) -> dict:
    """A copy of a Secret with its generated data filled in from keys_dir (made there on first use)."""
    spec = (obj["metadata"].get("annotations") or {}).get(GENERATE_ANNOTATION)
    if not spec:
        return obj
    _, namespace, name = object_key(obj)
    folder = Path(keys_dir) / f"{namespace}.{name}"
    stamp = folder / "SPEC"
    if not stamp.exists() or stamp.read_text() != spec:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        for field_name, blob in _generate(spec).items():
            (folder / field_name).write_bytes(blob)
            (folder / field_name).chmod(0o600)
        stamp.write_text(spec)
    data = dict(obj.get("data") or {})
    for item in sorted(folder.iterdir()):
        if item.name != "SPEC":
            data[item.name] = base64.b64encode(item.read_bytes()).decode()
    return {**obj, "data": data}
