"""The domain rules, below every edge (admin, API, commands, proxy all call these)."""

from datetime import timedelta

import pytest
from auditlog.models import LogEntry
from django.core.exceptions import ValidationError
from django.utils import timezone

from projects.models import Project
from projects.services import project_update
from tests.conftest import OTHER_KEY, VALID_KEY
from tokens import secret
from tokens.models import Token, TokenStatus
from tokens.selectors import token_search_filter
from tokens.services import project_set_active, project_tokens_revoke, token_revoke, token_set_limits

pytestmark = pytest.mark.django_db


def test_upstream_key_is_encrypted_at_rest_and_masked(make_project):
    project = make_project()
    raw = Project.objects.values_list("api_key_ciphertext", flat=True).get(pk=project.pk)
    assert VALID_KEY not in raw
    assert Project.objects.get(pk=project.pk).api_key == VALID_KEY
    assert project.api_key_masked.endswith("ABCD") and VALID_KEY not in project.api_key_masked


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "abc",
        "sk-short",
        "pk-abcdefghijklmnopqrstuvwxyz",
        "sk-abcdefgh ijklmnopqrstuvwxyz",
        "sk-abc…wxyz",
        "sk-abcd...wxyzabcdefghijklmnop",
        "sk-****************************",
        "****",
    ],
)
def test_invalid_api_keys_are_refused(make_project, bad):
    with pytest.raises(ValidationError) as e:
        make_project(api_key=bad)
    assert e.value.message_dict == {"api_key": ["Invalid API key format"]}


def test_duplicate_names_are_refused_case_insensitively(make_project):
    make_project(name="Production API")
    with pytest.raises(ValidationError) as e:
        make_project(name="production api")
    assert "already exists" in str(e.value)


def test_key_rotation_is_audited_without_the_key(make_project, operator):
    project = make_project()
    project_update(project=project, api_key=OTHER_KEY, actor=operator)
    assert Project.objects.get(pk=project.pk).api_key == OTHER_KEY
    entries = LogEntry.objects.get_for_object(project)
    assert entries.count() == 2
    rotation = entries.order_by("-timestamp").first()
    assert "api_key_updated_at" in rotation.changes_dict
    assert rotation.actor.username == "operator" and rotation.remote_addr == "10.1.2.3"
    for entry in entries:
        assert VALID_KEY not in str(entry.changes) and OTHER_KEY not in str(entry.changes)


def test_token_format_and_storage(make_project, make_token):
    issued = make_token(make_project())
    assert secret.TOKEN.is_well_formed(issued.plaintext)
    assert len(issued.plaintext) == 38
    token = Token.objects.get(pk=issued.token.pk)
    assert token.digest == secret.digest(issued.plaintext)
    assert issued.plaintext not in (token.digest, token.prefix)
    assert Token.objects.filter(token_search_filter(issued.plaintext)).get() == token
    assert Token.objects.filter(token_search_filter(token.prefix)).get() == token
    assert Token.objects.filter(token_search_filter(str(token.pk)[:8])).get() == token


def test_inactive_project_cannot_generate(make_project, make_token):
    with pytest.raises(ValidationError, match="Cannot generate tokens for inactive project"):
        make_token(make_project(active=False))


def test_status_rule_in_python_and_sql_agree(make_project, make_token, operator):
    project = make_project()
    active = make_token(project).token
    limited = make_token(project, max_requests=1).token
    Token.objects.filter(pk=limited.pk).update(request_count=1)
    expired = make_token(project).token
    Token.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    revoked = make_token(project).token
    token_revoke(token=revoked, actor=operator)
    expected = {
        active.pk: TokenStatus.ACTIVE,
        limited.pk: TokenStatus.LIMIT_REACHED,
        expired.pk: TokenStatus.EXPIRED,
        revoked.pk: TokenStatus.REVOKED,
    }
    for token in Token.objects.all():
        assert token.status == expected[token.pk]
    for status in TokenStatus:
        assert set(Token.objects.with_status(status).values_list("pk", flat=True)) == {
            pk for pk, s in expected.items() if s == status
        }


def test_deactivation_blocks_but_revokes_nothing(make_project, make_token, operator):
    project = make_project()
    token = make_token(project).token
    project_set_active(active=False, project=project, actor=operator)
    assert Token.objects.get(pk=token.pk).status == TokenStatus.ACTIVE
    assert not Token.objects.usable().exists()


def test_revoke_all_logs_every_token(make_project, make_token, operator):
    project = make_project()
    tokens = [make_token(project).token for _ in range(3)]
    token_revoke(token=tokens[0], actor=operator)
    assert project_tokens_revoke(project=project, actor=operator).revoked == 2
    assert project_tokens_revoke(project=project, actor=operator).revoked == 0
    for token in tokens:
        entry = LogEntry.objects.get_for_object(token).order_by("-timestamp").first()
        assert "revoked_at" in entry.changes_dict and entry.actor.username == "operator"


def test_limit_can_be_raised_or_removed(make_project, make_token, operator):
    token = make_token(make_project(), max_requests=5).token
    assert token_set_limits(token=token, max_requests=10, actor=operator).max_requests == 10
    assert token_set_limits(token=token, max_requests=0, actor=operator).max_requests is None
    with pytest.raises(ValidationError):
        token_set_limits(token=token, max_requests=-1, actor=operator)
