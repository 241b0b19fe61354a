"""Signed messages (issue 13; docs/security.md): Celery's ``auth`` serializer, keys from files.

When ``RETRY_PIPELINE_SECURITY_KEY``, ``_CERTIFICATE`` and ``_CERT_STORE`` are set,
every message the pipeline sends is signed with its key, and only messages signed by
a key whose certificate is in the store (the examination side's and the pipeline's
own) are taken. Any other message (unsigned JSON, a foreign key, a bad signature)
fails to decode before any task runs, and the worker keeps it as a dead letter.
Without keys the worker logs a warning at start and takes unsigned JSON as before.

Also: ``create_keypair`` writes an RSA key and a self-signed certificate for a pipeline
or an examination side (used by the tests; ``scripts/make-secrets.sh`` makes them with
openssl for compose).
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

from retry_pipeline.config import Settings

log = logging.getLogger(__name__)
DIGEST = "sha256"
UNSIGNED_WARNING = (
    "message signing is OFF (RETRY_PIPELINE_SECURITY_KEY, _CERTIFICATE, _CERT_STORE unset): "
    "any client that can write to the broker is trusted; configure keys in production"
)


def signing_conf(key: str, certificate: str, cert_store: str) -> dict[str, Any]:
    """Celery settings that sign with ``key`` and accept only messages the store verifies."""
    return {
        "task_serializer": "auth",
        "accept_content": ["auth"],
        "security_key": key,
        "security_certificate": certificate,
        "security_cert_store": cert_store,
        "security_digest": DIGEST,
    }


def configure(app: Any, settings: Settings) -> bool:
    """Turn signing on for ``app`` when the settings name keys; returns whether it is on."""
    if not settings.signing:
        return False
    assert settings.security_key and settings.security_certificate
    assert settings.security_cert_store
    app.conf.update(
        signing_conf(
            settings.security_key, settings.security_certificate, settings.security_cert_store
        )
    )
    app.setup_security()
    return True


def create_keypair(directory: Path, name: str, days: int = 825) -> tuple[Path, Path]:
    """``<name>.key`` (RSA 3072, mode 0600) and ``<name>.pem`` (self-signed) in ``directory``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "retry_pipeline"),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = directory / f"{name}.key", directory / f"{name}.pem"
    key_path.touch(mode=0o600, exist_ok=True)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path
