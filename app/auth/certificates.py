"""Client certificates verified at the TLS front, and tokens bound to them (RFC 8705).

The service terminates no TLS itself: the front (deploy/: nginx, or the Ingress)
verifies a hospital system's client certificate against the trusted CAs and passes
it on in ``client_cert_header`` (URL-escaped PEM, nginx's ``$ssl_client_escaped_cert``)
with the verification result in ``client_verify_header``. The front must set both on
every request it forwards, overwriting whatever a client sent; the service reads them
only when ``client_cert_header`` is configured, and only a result of ``SUCCESS``.

A token issued to a client that presented a certificate carries its SHA-256
thumbprint (``cnf`` / ``x5t#S256``); a bound token is honoured only with that
certificate, so a token copied off a hospital system is no use without its key.
"""

import base64
import hashlib
from urllib.parse import unquote

import structlog
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from starlette.requests import HTTPConnection

from app.config import Settings

log = structlog.get_logger()


class CertificateError(ValueError):
    """The front passed a certificate that cannot be read."""


def thumbprint(pem: str) -> str:
    """RFC 8705 §3.1: base64url (no padding) of the SHA-256 of the DER certificate."""
    try:
        certificate = x509.load_pem_x509_certificate(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as exc:
        raise CertificateError("unreadable client certificate") from exc
    der = certificate.public_bytes(Encoding.DER)
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode("ascii")


def presented_thumbprint(connection: HTTPConnection, settings: Settings) -> str | None:
    """The thumbprint of the certificate the front verified for this request, if any."""
    if settings.client_cert_header is None:
        return None
    if connection.headers.get(settings.client_verify_header) != "SUCCESS":
        return None
    escaped = connection.headers.get(settings.client_cert_header)
    if not escaped:
        return None
    try:
        return thumbprint(unquote(escaped))
    except CertificateError:
        # The front's fault, not the client's: no certificate, so no bound token works.
        log.warning("client_certificate_unreadable")
        return None
