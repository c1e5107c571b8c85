"""The cluster CA and node certificates, generated on first start.

Each node's certificate is signed by the cluster CA (as in Proxmox, whose
nodes share /etc/pve/pve-root-ca.pem), so clients and other nodes trust one
CA. A joining node will get its certificate signed by the same CA.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def ensure_ca(ssl_dir: Path, cluster_name: str) -> tuple[Path, Path]:
    ssl_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert_path, key_path = ssl_dir / "ca.pem", ssl_dir / "ca.key"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "corral"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"corral CA {cluster_name}"),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    _write_private(key_path, _key_pem(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def install_ca(ssl_dir: Path, cert_pem: str, key_pem: str) -> None:
    """Take the cluster's CA (a node of an existing cluster); node certs are re-issued."""
    ssl_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write_private(ssl_dir / "ca.key", key_pem.encode())
    (ssl_dir / "ca.pem").write_text(cert_pem)
    for name in ("node.pem", "node.key"):
        (ssl_dir / name).unlink(missing_ok=True)


def ensure_node_cert(ssl_dir: Path, node: str, addresses: list[str]) -> tuple[Path, Path]:
    """Node certificate signed by the CA in `ssl_dir`, valid for the node's names."""
    cert_path, key_path = ssl_dir / "node.pem", ssl_dir / "node.key"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    ca_cert = x509.load_pem_x509_certificate((ssl_dir / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((ssl_dir / "ca.key").read_bytes(), None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{ssl_dir / 'ca.key'} is not the EC key corral generates")
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(node), x509.DNSName("localhost")]
    fqdn = socket.getfqdn()
    if fqdn and fqdn != node:
        names.append(x509.DNSName(fqdn))
    seen = set()
    for addr in ["127.0.0.1", "::1", *addresses]:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            continue
        if ip.is_unspecified or ip in seen:
            continue
        seen.add(ip)
        names.append(x509.IPAddress(ip))
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "corral"),
                    x509.NameAttribute(NameOID.COMMON_NAME, node),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(key_path, _key_pem(key))
    cert_path.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + ca_cert.public_bytes(serialization.Encoding.PEM)
    )
    return cert_path, key_path


def fingerprint(cert_path: Path) -> str:
    """SHA-256 fingerprint in Proxmox's `AA:BB:...` form."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    digest = cert.fingerprint(hashes.SHA256()).hex().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))
