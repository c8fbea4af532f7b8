"""Generate the cluster's PKI with the openssl command line: a CA, the apiserver serving certificate,
an admin client certificate (system:masters), the service-account signing key pair and a token file.
"""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path

_SERVER_SANS = ",".join(
    [
        "IP:127.0.0.1",
        "IP:10.0.0.1",
        "DNS:localhost",
        "DNS:kubernetes",
        "DNS:kubernetes.default",
        "DNS:kubernetes.default.svc",
        "DNS:kubernetes.default.svc.cluster.local",
    ]
)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _signed_cert(pki: Path, name: str, subject: str, extensions: str) -> None:
    """Key + CSR + certificate signed by the CA, with the given X.509v3 extension lines."""
    ext_file = pki / f"{name}.ext"
    ext_file.write_text("[ext]\n" + extensions)
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        "-subj",
        subject,
        cwd=pki,
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        f"{name}.crt",
        "-days",
        "3650",
        "-extfile",
        ext_file.name,
        "-extensions",
        "ext",
        cwd=pki,
    )


def ensure_pki(pki: Path) -> str:
    """Create the PKI in `pki` unless it is complete already; return the admin bearer token."""
    token_file = pki / "admin.token"
    if token_file.exists() and (pki / "admin.crt").exists():
        return token_file.read_text().strip()
    pki.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "3650",
        "-subj",
        "/CN=tieredkv-dev-ca",
        cwd=pki,
    )
    _signed_cert(
        pki,
        "apiserver",
        "/CN=kube-apiserver",
        f"subjectAltName={_SERVER_SANS}\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n",
    )
    _signed_cert(
        pki,
        "admin",
        "/O=system:masters/CN=admin",
        "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
    )
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
    token = secrets.token_hex(16)
    (pki / "tokens.csv").write_text(f'{token},admin,admin-uid,"system:masters"\n')
    for key in pki.glob("*.key"):
        key.chmod(0o600)
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    return token


def issue_serving_cert(pki: Path, name: str, hosts: list[str]) -> tuple[Path, Path]:
    """A serving certificate signed by the cluster CA (e.g. for a webhook on 127.0.0.1)."""
    sans = ",".join(f"IP:{h}" if h.replace(".", "").isdigit() else f"DNS:{h}" for h in hosts)
    _signed_cert(
        pki,
        name,
        f"/CN={hosts[0]}",
        f"subjectAltName={sans}\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n",
    )
    return pki / f"{name}.crt", pki / f"{name}.key"
