#!/usr/bin/python
# -*- coding: utf-8 -*-
"""Ansible module: keep a directory of CAs, certificates, key pairs and random secrets in the wanted state."""
from __future__ import annotations

DOCUMENTATION = r"""
---
module: pilothouse_pki
short_description: Create and keep a cluster PKI (CAs, leaf certificates, key pairs, secrets) in one directory
description:
  - Creates each CA, certificate, key pair and secret that is missing; re-issues a certificate, with a new key,
    when its subject, SANs, usages or issuer no longer match, when it expires within I(renew_days), or always
    with I(rekey) (CAs, key pairs and secrets are kept).
  - Never touches what already matches, so re-runs report no change. Keys are written 0600, the rest 0644.
  - Keys are ECDSA P-256, except key pairs (service-account signing) which are RSA 2048.
options:
  dir: {description: Directory holding everything (created 0700)., type: path, required: true}
  cas: {description: "CAs: list of {name, cn}.", type: list, elements: dict, default: []}
  certs:
    description: "Leaf certificates: list of {name, ca, cn, orgs, dns, ips, usages (server/client)}."
    type: list
    elements: dict
    default: []
  keypairs: {description: Names of RSA key pairs (<name>.key and <name>.pub)., type: list, elements: str, default: []}
  secrets: {description: "Random secrets: list of {name, bytes}, stored base64.", type: list, elements: dict,
            default: []}
  ca_days: {description: CA validity in days., type: int, default: 3650}
  cert_days: {description: Leaf validity in days., type: int, default: 825}
  renew_days: {description: Re-issue leaves that expire within this many days., type: int, default: 30}
  rekey: {description: Re-issue every leaf certificate with a new key (certificate rotation)., type: bool,
          default: false}
  prune:
    description: Remove every other leaf certificate (one signed by a CA in I(cas)) and its key from I(dir), e.g.
      those of machines no longer in the inventory.
    type: bool
    default: false
author: pilothouse
"""

EXAMPLES = r"""
- name: PKI | Ensure the cluster PKI exists
  pilothouse_pki:
    dir: /srv/pki
    cas: [{name: ca, cn: kubernetes-ca}]
    certs: [{name: admin, ca: ca, cn: kubernetes-admin, orgs: ["pilothouse:cluster-admins"], usages: [client]}]
"""

RETURN = r"""
created: {description: Names of the files (without extension) created or re-issued., type: list, returned: always}
removed: {description: Names of the leaf certificates removed by I(prune)., type: list, returned: always}
"""

import base64
import datetime
import ipaddress
import os
import secrets as pysecrets

from ansible.module_utils.basic import AnsibleModule

try:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    HAS_CRYPTO = True
except ImportError:  # pragma: no cover - reported through fail_json
    HAS_CRYPTO = False


def _write(path, data, mode):
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


class Pki:
    def __init__(self, module):
        self.module = module
        self.dir = module.params["dir"]
        self.created = []
        self.removed = []
        self.cas = {}

    def path(self, name, ext):
        return os.path.join(self.dir, "%s.%s" % (name, ext))

    def _ec_key(self, name, fresh=False):
        path = self.path(name, "key")
        if os.path.exists(path) and not fresh:
            with open(path, "rb") as fh:
                return serialization.load_pem_private_key(fh.read(), None), False
        key = ec.generate_private_key(ec.SECP256R1())
        _write(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()), 0o600)
        return key, True

    def _load_cert(self, name):
        path = self.path(name, "crt")
        if not os.path.exists(path):
            return None
        with open(path, "rb") as fh:
            return x509.load_pem_x509_certificate(fh.read())

    @staticmethod
    def _name(cn, orgs=()):
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
        return x509.Name(attrs)

    def _expiring(self, cert):
        renew = datetime.timedelta(days=self.module.params["renew_days"])
        return cert.not_valid_after_utc - renew < _now()

    def ensure_ca(self, spec):
        name, cn = spec["name"], spec["cn"]
        key, new_key = self._ec_key(name)
        cert = self._load_cert(name)
        if cert is None or new_key or self._expiring(cert):
            subject = self._name(cn)
            now = _now()
            cert = (x509.CertificateBuilder()
                    .subject_name(subject).issuer_name(subject).public_key(key.public_key())
                    .serial_number(x509.random_serial_number())
                    .not_valid_before(now - datetime.timedelta(minutes=5))
                    .not_valid_after(now + datetime.timedelta(days=self.module.params["ca_days"]))
                    .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                    .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                 key_encipherment=False, content_commitment=False,
                                                 data_encipherment=False, key_agreement=False,
                                                 encipher_only=False, decipher_only=False), critical=True)
                    .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                    .sign(key, hashes.SHA256()))
            _write(self.path(name, "crt"), cert.public_bytes(serialization.Encoding.PEM), 0o644)
            self.created.append(name)
        self.cas[name] = (key, cert)

    def _matches(self, cert, key, spec, ca_cert, sans, ekus):
        # A key written by a run that stopped before its certificate: the pair no longer fits.
        if cert.public_key() != key.public_key():
            return False
        if cert.subject != self._name(spec["cn"], spec.get("orgs") or ()):
            return False
        if cert.issuer != ca_cert.subject:
            return False
        try:
            cert.verify_directly_issued_by(ca_cert)
        except Exception:  # noqa: BLE001 - any verification failure means re-issue
            return False
        try:
            have_sans = set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
        except x509.ExtensionNotFound:
            have_sans = set()
        if have_sans != set(sans):
            return False
        have_ekus = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        return have_ekus == set(ekus) and not self._expiring(cert)

    def ensure_cert(self, spec):
        name = spec["name"]
        if spec["ca"] not in self.cas:
            self.module.fail_json(msg="certificate %s names CA %s, which is not in cas" % (name, spec["ca"]))
        ca_key, ca_cert = self.cas[spec["ca"]]
        sans = [x509.DNSName(d) for d in dict.fromkeys(spec.get("dns") or [])]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in dict.fromkeys(spec.get("ips") or [])]
        usages = spec.get("usages") or ["client"]
        ekus = []
        if "server" in usages:
            ekus.append(ExtendedKeyUsageOID.SERVER_AUTH)
        if "client" in usages:
            ekus.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        key, new_key = self._ec_key(name)
        cert = self._load_cert(name)
        if (cert is not None and not new_key and not self.module.params["rekey"]
                and self._matches(cert, key, spec, ca_cert, sans, ekus)):
            return
        if not new_key:
            # A re-issued certificate never reuses the old key: whoever held a copy of it holds nothing valid
            # once the old certificate expires.
            key, _ = self._ec_key(name, fresh=True)
        now = _now()
        builder = (x509.CertificateBuilder()
                   .subject_name(self._name(spec["cn"], spec.get("orgs") or ()))
                   .issuer_name(ca_cert.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=self.module.params["cert_days"]))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=True, key_cert_sign=False,
                                                crl_sign=False, content_commitment=False, data_encipherment=False,
                                                key_agreement=False, encipher_only=False, decipher_only=False),
                                  critical=True)
                   .add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                                  critical=False))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        _write(self.path(name, "crt"), cert.public_bytes(serialization.Encoding.PEM), 0o644)
        self.created.append(name)

    def prune(self, wanted):
        """Remove the leaf certificates (and keys) signed by one of our CAs that are not in `wanted`."""
        subjects = {ca_cert.subject for _, ca_cert in self.cas.values()}
        for entry in sorted(os.listdir(self.dir)):
            name, ext = os.path.splitext(entry)
            if ext != ".crt" or name in wanted or name in self.cas:
                continue
            cert = self._load_cert(name)
            if cert.issuer not in subjects or cert.subject == cert.issuer:
                continue
            for path in (self.path(name, "crt"), self.path(name, "key")):
                if os.path.exists(path):
                    os.remove(path)
            self.removed.append(name)

    def ensure_keypair(self, name):
        key_path, pub_path = self.path(name, "key"), self.path(name, "pub")
        if os.path.exists(key_path):
            with open(key_path, "rb") as fh:
                key = serialization.load_pem_private_key(fh.read(), None)
        else:
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            _write(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()), 0o600)
            self.created.append(name)
        pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        if not os.path.exists(pub_path) or open(pub_path, "rb").read() != pub:
            _write(pub_path, pub, 0o644)
            if name not in self.created:
                self.created.append(name)

    def ensure_secret(self, spec):
        path = os.path.join(self.dir, spec["name"])
        if os.path.exists(path):
            return
        _write(path, base64.b64encode(pysecrets.token_bytes(int(spec.get("bytes", 32)))) + b"\n", 0o600)
        self.created.append(spec["name"])


def main():
    module = AnsibleModule(
        argument_spec=dict(
            dir=dict(type="path", required=True),
            cas=dict(type="list", elements="dict", default=[]),
            certs=dict(type="list", elements="dict", default=[]),
            keypairs=dict(type="list", elements="str", default=[], no_log=False),
            secrets=dict(type="list", elements="dict", default=[], no_log=False),
            ca_days=dict(type="int", default=3650),
            cert_days=dict(type="int", default=825),
            renew_days=dict(type="int", default=30),
            rekey=dict(type="bool", default=False),
            prune=dict(type="bool", default=False),
        ),
        supports_check_mode=False,
    )
    if not HAS_CRYPTO:
        module.fail_json(msg="python 'cryptography' is needed on the controller: pip install cryptography")
    pki = Pki(module)
    if not os.path.isdir(pki.dir):
        os.makedirs(pki.dir, 0o700)
        os.chmod(pki.dir, 0o700)
    for spec in module.params["cas"]:
        pki.ensure_ca(spec)
    for spec in module.params["certs"]:
        pki.ensure_cert(spec)
    if module.params["prune"]:
        pki.prune({spec["name"] for spec in module.params["certs"]})
    for name in module.params["keypairs"]:
        pki.ensure_keypair(name)
    for spec in module.params["secrets"]:
        pki.ensure_secret(spec)
    module.exit_json(changed=bool(pki.created or pki.removed), created=pki.created, removed=pki.removed)


if __name__ == "__main__":
    main()
