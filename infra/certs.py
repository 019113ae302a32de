"""The cluster's certificates and when they expire: `invoke certs`, and the warning `invoke status` gives.

The pki role keeps every CA and leaf it issues in the cluster directory's `pki/` on this host and copies them to
the machines, so that directory is the list of what the cluster runs on.
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

# Under this many days left a certificate is reported (the pki role re-issues leaves from 30 days on, when the
# playbook runs; a CA is never re-issued by itself).
WARN_DAYS = 30


@dataclass(frozen=True)
class Certificate:
    path: Path
    subject: str
    issuer: str
    not_after: datetime.datetime
    is_ca: bool

    def days_left(self, now: datetime.datetime | None = None) -> float:
        now = now or datetime.datetime.now(datetime.timezone.utc)
        return (self.not_after - now).total_seconds() / 86400


def read(path: Path) -> Certificate:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    return Certificate(path, cert.subject.rfc4514_string(), cert.issuer.rfc4514_string(), cert.not_valid_after_utc,
                       is_ca)


def scan(pki: Path) -> list[Certificate]:
    """Every certificate (`*.crt`) in the directory, soonest to expire first."""
    return sorted((read(p) for p in pki.glob("*.crt")), key=lambda c: (c.not_after, c.path.name))


def warnings(certificates: list[Certificate], days: float = WARN_DAYS,
             now: datetime.datetime | None = None) -> list[str]:
    """One line per certificate that expires within `days` (or has expired), with what to do about it."""
    lines = []
    for c in certificates:
        left = c.days_left(now)
        if left >= days:
            continue
        state = f"EXPIRED {-left:.0f} days ago" if left < 0 else f"expires in {left:.1f} days"
        fix = ("a CA is not renewed by the playbook: re-issuing it means re-issuing every certificate under it"
               if c.is_ca else "`invoke certs.rotate` renews it now, with a new key; `invoke playbook` does too "
               "(the pki role renews leaves within 30 days of expiry)")
        lines.append(f"certificate {c.path.name} ({c.subject}) {state} on {c.not_after:%Y-%m-%d %H:%M} UTC: {fix}")
    return lines


def render(certificates: list[Certificate], now: datetime.datetime | None = None) -> str:
    lines = [f"{'CERTIFICATE':<40} {'SUBJECT':<52} {'ISSUER':<18} {'NOT AFTER (UTC)':<17} DAYS LEFT"]
    for c in certificates:
        lines.append(f"{c.path.name:<40} {c.subject:<52} {c.issuer:<18} {c.not_after:%Y-%m-%d %H:%M} "
                     f"{c.days_left(now):>9.0f}")
    return "\n".join(lines)
