import itertools
import random
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

from auditlog.models import LogEntry
from django.contrib.contenttypes.models import ContentType
from django.core.management.base import BaseCommand, CommandError
from django.db import connection, transaction
from django.utils import timezone

from llmproxy.security.models import SecurityEvent, SecurityEventKind, SecurityEventReason
from projects import crypto
from projects.models import Project
from proxy.models import UsageDaily, UsageRecord
from tokens import secret
from tokens.models import Token

MODELS = ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "gpt-4.1", "o4-mini"]
PATHS = ["/v1/chat/completions", "/v1/embeddings", "/v1/responses", "/v1/models"]
STATUSES = [200] * 90 + [400, 401, 401, 403, 429, 429, 500, 502, 504, 413]
LIFETIMES_HOURS = [0.25, 1, 8, 24, 168, 720]
LIFETIME_WEIGHTS = [50, 20, 15, 10, 4, 1]
USAGE_COLUMNS = [
    "time", "project_id", "token_id", "token_prefix", "method", "path", "model", "status", "streamed",
    "prompt_tokens", "completion_tokens", "total_tokens", "duration_ms", "ttfb_ms", "upstream_ms", "client_ip",
    "request_id", "refusal_code", "client_aborted", "upstream_aborted",
]  # fmt: skip


@dataclass(frozen=True)
class SeedToken:
    pk: uuid.UUID
    project_id: uuid.UUID
    prefix: str
    start: datetime
    seconds: float
    model: str


class Command(BaseCommand):
    help = (
        "Fill an EMPTY database with synthetic load data (projects, tokens, usage records, their per-day sums, "
        "security events and audit entries), to measure the admin at scale. Refuses to touch a database that "
        "already has projects."
    )

    def add_arguments(self, parser):
        parser.add_argument("--projects", type=int, default=1_000)
        parser.add_argument("--tokens", type=int, default=100_000)
        parser.add_argument("--usage", type=int, default=2_000_000)
        parser.add_argument("--days", type=int, default=60, help="spread the usage over this many past days")
        parser.add_argument("--seed", type=int, default=1)

    def handle(self, *args, projects: int, tokens: int, usage: int, days: int, seed: int, **options):
        if Project.objects.exists():
            raise CommandError("the database already has projects; seed_scale_data only fills an empty database")
        if min(projects, tokens, days) < 1 or usage < 0:
            raise CommandError("--projects, --tokens and --days must be at least 1, --usage at least 0")
        rng = random.Random(seed)
        now = timezone.now()
        project_ids = self._projects(projects, now, rng)
        seed_tokens = self._tokens(tokens, project_ids, days, now, rng)
        self._usage(usage, seed_tokens, now, rng)
        self._security_events(now, rng)
        self._audit_entries()
        self.stdout.write(f"Seeded {projects} projects, {tokens} tokens, {usage} usage records.")

    def _projects(self, count: int, now, rng: random.Random) -> list[uuid.UUID]:
        ciphertext = crypto.encrypt("sk-load-test-" + "x" * 40)
        rows = [
            Project(
                name=f"Load project {i:05d}",
                api_key_ciphertext=ciphertext,
                api_key_updated_at=now,
                is_active=rng.random() > 0.1,
            )
            for i in range(count)
        ]
        Project.objects.bulk_create(rows, batch_size=1000)
        self.stdout.write(f"  {count} projects")
        return [p.pk for p in rows]

    def _tokens(self, count: int, project_ids: list, days: int, now, rng: random.Random) -> list[SeedToken]:
        """Tokens as the product hands them out: mostly short-lived (browser sessions, CI runs), a few long-lived;
        each used within its own lifetime, mostly with one model, a few of them far more than the rest."""
        project_weights = list(itertools.accumulate(rng.paretovariate(1.2) for _ in project_ids))
        made: list[SeedToken] = []
        batch: list[Token] = []
        for i in range(count):
            plaintext = secret.TOKEN.generate()
            lifetime = timedelta(hours=rng.choices(LIFETIMES_HOURS, LIFETIME_WEIGHTS)[0])
            created = now - timedelta(seconds=rng.uniform(0, days * 86_400))
            limit = rng.choice([None, None, 100, 1000, 10_000])
            token = Token(
                project_id=rng.choices(project_ids, cum_weights=project_weights)[0],
                label=f"client-{i}",
                digest=secret.digest(plaintext),
                prefix=secret.display_prefix(plaintext),
                expires_at=created + lifetime,
                max_requests=limit,
                revoked_at=created + lifetime / 2 if rng.random() < 0.05 else None,
                created_by_label="seed_scale_data",
            )
            batch.append(token)
            made.append(
                SeedToken(
                    pk=token.pk,
                    project_id=token.project_id,
                    prefix=token.prefix,
                    start=created,
                    seconds=max(min(created + lifetime, now) - created, timedelta(seconds=1)).total_seconds(),
                    model=rng.choice(MODELS),
                )
            )
            if len(batch) == 5000:
                Token.objects.bulk_create(batch)
                batch = []
        Token.objects.bulk_create(batch)
        self.stdout.write(f"  {count} tokens")
        return made

    def _usage(self, count: int, tokens: list[SeedToken], now, rng: random.Random) -> None:
        weights = list(itertools.accumulate(rng.paretovariate(1.1) for _ in tokens))
        counts: Counter = Counter()
        last_used: dict = {}
        written = 0
        while written < count:
            size = min(20_000, count - written)
            rows = []
            for token in rng.choices(tokens, cum_weights=weights, k=size):
                time = token.start + timedelta(seconds=rng.uniform(0, token.seconds))
                model = token.model if rng.random() < 0.9 else rng.choice(MODELS)
                rows.append(self._usage_row(token, time, model, rng))
                counts[token.pk] += 1
                last_used[token.pk] = max(time, last_used.get(token.pk, time))
            with transaction.atomic():
                self._insert_usage(rows)
                UsageDaily.objects.add(rows)
            written += size
            if written % 200_000 == 0 or written == count:
                self.stdout.write(f"  {written} usage records")
        Token.objects.bulk_update(
            [Token(pk=pk, request_count=used, last_used_at=last_used[pk]) for pk, used in counts.items()],
            ["request_count", "last_used_at"],
            batch_size=2000,
        )

    @staticmethod
    def _usage_row(token: SeedToken, time, model: str, rng: random.Random) -> dict:
        status = rng.choice(STATUSES)
        prompt = rng.randint(5, 2000) if status == 200 else None
        completion = rng.randint(1, 800) if status == 200 else None
        duration = rng.uniform(80, 4000)
        return {
            "time": time,
            "project_id": token.project_id,
            "token_id": token.pk,
            "token_prefix": token.prefix,
            "method": "POST",
            "path": rng.choice(PATHS),
            "model": model,
            "status": status,
            "streamed": rng.random() < 0.4,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion if prompt is not None else None,
            "duration_ms": duration,
            "ttfb_ms": duration * 0.3,
            "upstream_ms": duration * 0.95,
            "client_ip": f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
            "request_id": uuid.UUID(int=rng.getrandbits(128)).hex,
            "refusal_code": "request_limit_reached" if status == 429 else "",
            "client_aborted": False,
            "upstream_aborted": False,
        }

    @staticmethod
    def _insert_usage(rows: list[dict]) -> None:
        if connection.vendor == "postgresql":
            # COPY is an order of magnitude faster than INSERT for millions of rows.
            table = connection.ops.quote_name(UsageRecord._meta.db_table)
            fields = [
                UsageRecord._meta.get_field(c[:-3] if c in ("project_id", "token_id") else c) for c in USAGE_COLUMNS
            ]
            columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
            with connection.cursor() as cursor, cursor.cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row([row[c] for c in USAGE_COLUMNS])
        else:
            UsageRecord.objects.bulk_create([UsageRecord(**row) for row in rows], batch_size=2000)

    @staticmethod
    def _audit_entries() -> None:
        """The audit trail the operators' token generation would have left: one entry per token."""
        content_type = ContentType.objects.get_for_model(Token)
        entries = (
            LogEntry(
                content_type=content_type,
                object_pk=str(pk),
                object_repr=f"{prefix}… ({label})",
                action=LogEntry.Action.CREATE,
                changes={"label": ["None", label]},
                actor_email="seed_scale_data",
                additional_data={"via": "cli"},
                timestamp=created,
            )
            for pk, prefix, label, created in Token.objects.values_list(
                "pk", "prefix", "label", "created_at"
            ).iterator()
        )
        while batch := list(itertools.islice(entries, 5000)):
            LogEntry.objects.bulk_create(batch)

    @staticmethod
    def _security_events(now, rng: random.Random) -> None:
        hour = now.replace(minute=0, second=0, microsecond=0)
        SecurityEvent.objects.bulk_create(
            [
                SecurityEvent(
                    kind=SecurityEventKind.PROXY_AUTH_FAILED,
                    reason=SecurityEventReason.UNKNOWN,
                    client_ip=f"203.0.113.{i % 250 + 1}",
                    token_prefix="sk-wt-zzzzzz",
                    hour=hour - timedelta(hours=i),
                    first_seen=hour - timedelta(hours=i),
                    last_seen=hour - timedelta(hours=i) + timedelta(minutes=30),
                    count=rng.randint(1, 500),
                )
                for i in range(5000)
            ],
            batch_size=1000,
        )
