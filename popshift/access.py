"""Who may do what: every principal's Kafka ACLs and Redis ACL rules, and the admin commands
that put them in place (``popshift access grant|show``).

The table (:func:`principals`) is pure: from the network's PoPs and the names a deployment uses
(topic prefix, groups, Redis keys) to the least each service needs. Services never create
topics or users; an admin does, with this module. docs/security.md explains each choice.

Kafka cannot restrict a principal to some keys of a topic, so per-PoP principals differ in
consumer groups and Redis keys, not in topics: writer-a may read every PoP's policies (it drops
the others') and could announce a table of PoP b, but only b's writer can write b's tables in
Redis, which is what b's forwarders read.
"""

from __future__ import annotations

import argparse
import os
import secrets as random_secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from popshift import topics as t
from popshift.settings import Settings

Operation = Literal["READ", "WRITE", "DESCRIBE", "ALL"]
Resource = Literal["TOPIC", "GROUP"]
Pattern = Literal["LITERAL", "PREFIXED"]

# Redis commands a service may run: reads, writes and Lua (the table write and the lock are
# scripts), nothing that reconfigures or empties the server. Keys are limited per principal.
# Minus what reaches beyond a user's keys: listing every key name (SCAN, RANDOMKEY) and
# emptying the server's script cache or its functions.
_NOT_BEYOND_KEYS = ("-scan", "-randomkey", "-script|flush", "-script|kill", "-function")
REDIS_READ = ("-@all", "+@read", "+@connection", "-@dangerous", *_NOT_BEYOND_KEYS)
REDIS_WRITE = (
    "-@all",
    "+@read",
    "+@write",
    "+@scripting",
    "+@transaction",
    "+@connection",
    "-@dangerous",
    "-@admin",
    *_NOT_BEYOND_KEYS,
)


@dataclass(frozen=True, order=True)
class KafkaGrant:
    """ALLOW ``operation`` on ``resource`` ``name`` (a literal name or a prefix)."""

    resource: Resource
    name: str
    operation: Operation
    pattern: Pattern = "LITERAL"


@dataclass(frozen=True)
class Principal:
    name: str
    kafka: tuple[KafkaGrant, ...]
    redis: tuple[str, ...] = ()  # ACL SETUSER rules (key patterns, commands); () = no user

    def describe(self) -> str:
        lines = [f"{self.name}"]
        for g in sorted(set(self.kafka)):
            if g.operation != "DESCRIBE":
                star = "*" if g.pattern == "PREFIXED" else ""
                lines.append(f"  kafka {g.operation:5} {g.resource.lower()} {g.name}{star}")
        keys = [r for r in self.redis if r.startswith(("~", "%"))]
        lines.append(f"  redis {' '.join(keys) if keys else '(no user)'}")
        return "\n".join(lines)


@dataclass(frozen=True)
class Naming:
    """The names one deployment (or one lab run) uses; see each service's settings."""

    settings: Settings
    ingest_group: str
    analytics_app_id: str
    policy_group: str
    table_group_prefix: str
    sync_group_prefix: str
    table_key_prefix: str
    leader_key: str
    overrides_key: str

    def topic(self, topic: t.Topic) -> str:
        return self.settings.topic(topic).name

    def dead_letter(self, topic: t.Topic) -> str:
        return self.settings.topic(topic).dead_letter

    @classmethod
    def from_environment(cls) -> Naming:
        """Read like the services read them: from POPSHIFT_* (defaults otherwise)."""
        from services.analytics.app import AnalyticsSettings
        from services.feedback_ingest.settings import IngestSettings
        from services.forwarder.sync_settings import SyncSettings
        from services.policy_engine.settings import PolicySettings
        from services.table_writer.settings import TableWriterSettings

        policy, writer = PolicySettings(), TableWriterSettings()
        return cls(
            settings=Settings(),
            ingest_group=IngestSettings().ingest_group,
            analytics_app_id=AnalyticsSettings().analytics_app_id,
            policy_group=policy.policy_group,
            table_group_prefix=writer.table_group_prefix,
            sync_group_prefix=SyncSettings().sync_group_prefix,
            table_key_prefix=writer.table_key_prefix,
            leader_key=policy.policy_leader_key,
            overrides_key=policy.policy_overrides_key,
        )


def _topics(n: Naming, op: Operation, *topics: t.Topic) -> list[KafkaGrant]:
    return [KafkaGrant("TOPIC", n.topic(x), op) for x in topics]


def _dead_letters(n: Naming, *consumed: t.Topic) -> list[KafkaGrant]:
    return [KafkaGrant("TOPIC", n.dead_letter(x), "WRITE") for x in consumed]


def _group(name: str, pattern: Pattern = "LITERAL") -> KafkaGrant:
    return KafkaGrant("GROUP", name, "READ", pattern)


def principals(n: Naming, pops: Iterable[str]) -> list[Principal]:
    """Every service principal of a network with these PoPs, and what each may do."""
    # Everyone may see that popshift's topics exist (services check before they start).
    see = [KafkaGrant("TOPIC", n.topic(x), "DESCRIBE") for x in t.ALL_TOPICS]
    see += [KafkaGrant("TOPIC", n.dead_letter(x), "DESCRIBE") for x in t.ALL_TOPICS]
    tables = n.table_key_prefix
    out = [
        Principal("agent", (*see, *_topics(n, "WRITE", t.FEEDBACK))),
        Principal(
            "ingest",
            (
                *see,
                *_topics(n, "READ", t.FEEDBACK),
                _group(n.ingest_group),
                *_topics(n, "WRITE", t.POP_LOAD),
                *_dead_letters(n, t.FEEDBACK),
            ),
        ),
        Principal(
            "analytics",
            (
                *see,
                *_topics(n, "READ", t.POP_LOAD),
                *_topics(n, "WRITE", t.POP_STATUS),
                *_dead_letters(n, t.POP_LOAD),
                # faust's own topics (leader election, changelogs) and its group.
                KafkaGrant("TOPIC", f"{n.analytics_app_id}-", "ALL", "PREFIXED"),
                _group(n.analytics_app_id),
            ),
        ),
        Principal(
            "engine",
            (
                *see,
                *_topics(n, "READ", t.POP_STATUS, t.DATAPLANE_STATS, t.POLICIES),
                _group(n.policy_group),
                *_topics(n, "WRITE", t.POLICIES),
                *_dead_letters(n, t.POP_STATUS, t.DATAPLANE_STATS),
            ),
            (f"~{n.leader_key}", f"~{n.leader_key}:epoch", f"%R~{n.overrides_key}", *REDIS_WRITE),
        ),
        Principal(
            "operator",
            # The audit trail is append-only for operators: nobody but admin deletes records
            # or changes its retention (topic configs need ALTER_CONFIGS, which no one has).
            (
                *see,
                *_topics(n, "READ", t.POLICIES, t.POLICY_AUDIT),
                *_topics(n, "WRITE", t.POLICY_AUDIT),
                # `popshift status` / `explain` / `console`: read what the services wrote
                *_topics(n, "READ", t.POP_STATUS, t.TABLE_UPDATES, t.POP_LOAD, t.DATAPLANE_STATS),
                KafkaGrant("GROUP", n.ingest_group, "DESCRIBE"),
                KafkaGrant("GROUP", n.analytics_app_id, "DESCRIBE"),
                KafkaGrant("GROUP", f"{n.table_group_prefix}-", "DESCRIBE", "PREFIXED"),
                KafkaGrant("GROUP", n.sync_group_prefix, "DESCRIBE", "PREFIXED"),
            ),
            (f"~{n.overrides_key}", *REDIS_WRITE),
        ),
    ]
    for pop in pops:
        out.append(
            Principal(
                f"writer-{pop}",
                (
                    *see,
                    *_topics(n, "READ", t.POLICIES, t.POP_LOAD),
                    _group(f"{n.table_group_prefix}-{pop}"),
                    *_topics(n, "WRITE", t.TABLE_UPDATES),
                    *_dead_letters(n, t.POLICIES, t.POP_LOAD),
                ),
                (f"~{tables}:{pop}:*", f"%R~{n.leader_key}:epoch", *REDIS_WRITE),
            )
        )
        out.append(
            Principal(
                f"sync-{pop}",
                (
                    *see,
                    *_topics(n, "READ", t.TABLE_UPDATES),
                    # '<prefix>-<pop>:<node>': ':' cannot occur in a PoP name, so sync-ams
                    # cannot join the groups of a PoP named ams-2.
                    _group(f"{n.sync_group_prefix}-{pop}:", "PREFIXED"),
                    *_topics(n, "WRITE", t.DATAPLANE_STATS),
                    *_dead_letters(n, t.TABLE_UPDATES),
                ),
                (f"%R~{tables}:{pop}:*", *REDIS_READ),
            )
        )
    return out


# --- adapters: the admin puts the table in place ---------------------------------------------


def ensure_password(path: Path) -> str:
    """The principal's password, created (random, mode 0600 from the start) the first time;
    two grants at once both end with the same file (the second replace wins, both read it)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{random_secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(random_secrets.token_hex(24) + "\n")
        if not path.exists():
            tmp.replace(path)
        else:
            tmp.unlink()
    return path.read_text().strip()


def grant_kafka(admin: Settings, who: Sequence[Principal]) -> None:
    """SCRAM users and ALLOW ACLs for ``who`` (both idempotent)."""
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        AclBinding,
        AclOperation,
        AclPermissionType,
        AdminClient,
        ResourcePatternType,
        ResourceType,
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialAlteration,
        UserScramCredentialUpsertion,
    )

    client = AdminClient(admin.kafka().config())
    users: list[UserScramCredentialAlteration] = [
        UserScramCredentialUpsertion(
            p.name,
            ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192),
            ensure_password(admin.secrets.password_file("kafka", p.name)).encode(),
        )
        for p in who
    ]
    for fut in client.alter_user_scram_credentials(users).values():
        fut.result(30)
    bindings = [
        AclBinding(
            ResourceType[g.resource],
            g.name,
            ResourcePatternType[g.pattern],
            f"User:{p.name}",
            "*",
            AclOperation[g.operation],
            AclPermissionType.ALLOW,
        )
        for p in who
        for g in sorted(set(p.kafka))
    ]
    for fut in client.create_acls(bindings, request_timeout=30).values():
        fut.result(30)


def grant_redis(admin: Settings, who: Sequence[Principal]) -> None:
    """An ACL user per principal that needs Redis; rules add up (several labs share one
    Redis), and ACL SAVE keeps them in the server's ACL file across restarts."""
    from popshift import redis_client

    client = redis_client.connect(admin.redis(), 10.0)
    try:
        for p in who:
            if p.redis:
                password = ensure_password(admin.secrets.password_file("redis", p.name))
                # resetpass: the file's password is the only one (a rotated one stops working).
                client.execute_command(
                    "ACL", "SETUSER", p.name, "on", "resetpass", f">{password}", *p.redis
                )
        client.execute_command("ACL", "SAVE")
    finally:
        client.close()


def access_main(argv: Sequence[str] | None = None) -> int:
    """``popshift access grant|show [--pops a,b]``: as the admin, from POPSHIFT_* names."""
    from popshift.network import load_network

    parser = argparse.ArgumentParser(prog="popshift access", description=__doc__)
    parser.add_argument("action", choices=("grant", "show"))
    parser.add_argument("--pops", help="comma-separated PoPs (default: the network file's)")
    args = parser.parse_args(argv)
    naming = Naming.from_environment()
    admin = naming.settings.model_copy(update={"principal": "admin"})
    pops = args.pops.split(",") if args.pops else load_network(admin.network_file).pop_names
    who = principals(naming, pops)
    if args.action == "show":
        print("\n".join(p.describe() for p in who))
        return 0
    grant_kafka(admin, who)
    grant_redis(admin, who)
    print(f"granted {len(who)} principals: {', '.join(p.name for p in who)}")
    return 0
