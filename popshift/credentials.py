"""Who a process is to Kafka and Redis, and how it proves it.

Every client logs in as one principal (an ACL subject: docs/security.md lists what each may do)
with a password read from a file under ``POPSHIFT_SECRETS_DIR``, never from code or a command
line: ``kafka/<principal>.password``, ``redis/<principal>.password``, and ``ca.pem``, the CA that
signed the servers' certificate (deploy/local/secrets.sh makes them for the local servers,
``popshift access grant`` the services' ones). Kafka is SASL/SCRAM-SHA-512 over TLS; Redis an
ACL user over TLS (``rediss://``).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCRAM = "SCRAM-SHA-512"


class MissingSecret(RuntimeError):
    """A principal's password or the CA is not where the settings say: a deployment error, not
    an outage, so the service stops with this message instead of retrying."""


def read_secret(path: Path) -> str:
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        raise MissingSecret(
            f"{path} does not exist: create the principal with `popshift access grant` "
            "(deploy/local/up.sh does it for the local servers) or set POPSHIFT_SECRETS_DIR"
        ) from None
    if not value:
        raise MissingSecret(f"{path} is empty")
    return value


@dataclass(frozen=True)
class Secrets:
    """The secrets directory's layout."""

    root: Path

    @property
    def ca_file(self) -> Path:
        return self.root / "ca.pem"

    def password_file(self, system: str, principal: str) -> Path:
        if not principal or "/" in principal or principal.startswith("."):
            raise ValueError(f"bad principal name {principal!r}")
        return self.root / system / f"{principal}.password"

    def password(self, system: str, principal: str) -> str:
        return read_secret(self.password_file(system, principal))


@dataclass(frozen=True)
class KafkaAccess:
    """Where Kafka is and who logs in: everything a confluent-kafka or aiokafka client needs."""

    bootstrap: str
    username: str
    password: str = field(repr=False)
    ca_file: str

    def config(self) -> dict[str, Any]:
        """The librdkafka settings of a client of this broker as this principal."""
        return {
            "bootstrap.servers": self.bootstrap,
            "security.protocol": "SASL_SSL",
            "sasl.mechanisms": SCRAM,
            "sasl.username": self.username,
            "sasl.password": self.password,
            "ssl.ca.location": self.ca_file,
        }

    def ssl_context(self) -> ssl.SSLContext:
        """For faust/aiokafka: verifies the broker's certificate and name against our CA."""
        return ssl.create_default_context(cafile=self.ca_file)


@dataclass(frozen=True)
class RedisAccess:
    """A Redis URL plus the ACL user a client logs in as (TLS when the URL is ``rediss://``)."""

    url: str
    username: str
    password: str = field(repr=False)
    ca_file: str

    def client_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"username": self.username, "password": self.password}
        if self.url.startswith("rediss://"):
            kwargs["ssl_ca_certs"] = self.ca_file
        return kwargs
