"""Minting keys in the admin: an operator creates one for a project (shown once), sees its last use, revokes it."""

import re

import pytest
from auditlog.models import LogEntry

from tokens.minting import minting_key_authenticate, minting_key_create
from tokens.models import MintingKey

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/tokens/mintingkey/"
ADD = "/admin/tokens/mintingkey/add/"


def test_add_preselects_the_project_and_shows_the_key_once(admin_client, make_project):
    make_project(name="Other")
    project = make_project(name="Web")
    page = admin_client.get(f"{ADD}?project={project.pk}").content.decode()
    assert re.search(rf'<option value="{project.pk}" selected>Web</option>', page)
    assert admin_client.get(f"{ADD}?project=not-a-uuid").status_code == 200

    response = admin_client.post(ADD, {"project": str(project.pk), "name": "web backend"})
    assert response.status_code == 200  # shown in the answer itself: no redirect to a page that could show it again
    assert "no-store" in response["Cache-Control"]
    plaintext = re.search(r'value="(mk-[A-Za-z0-9]{40})"', response.content.decode()).group(1)
    key = minting_key_authenticate(plaintext)
    assert key is not None and key.project == project and key.name == "web backend"
    assert key.created_by.username == "operator"

    for url in [CHANGELIST, f"{CHANGELIST}{key.pk}/change/"]:
        page = admin_client.get(url).content.decode()
        assert plaintext not in page and f"{key.prefix}…" in page

    [entry] = LogEntry.objects.filter(object_pk=str(key.pk))
    assert entry.action == LogEntry.Action.CREATE and entry.actor.username == "operator"
    assert plaintext not in str(entry.changes) and key.digest not in str(entry.changes)


def test_add_refuses_a_blank_name(admin_client, make_project):
    project = make_project()
    response = admin_client.post(ADD, {"project": str(project.pk), "name": ""})
    assert response.status_code == 200 and "This field is required." in response.content.decode()
    assert not MintingKey.objects.exists()


def test_list_shows_project_last_use_and_status_and_filters(admin_client, make_project, operator):
    web, ci = make_project(name="Web"), make_project(name="CI")
    used = minting_key_create(project=web, name="web backend", actor=operator)
    minting_key_authenticate(used.plaintext)
    minting_key_create(project=ci, name="pipeline", actor=operator)
    page = admin_client.get(CHANGELIST).content.decode()
    assert "web backend" in page and "pipeline" in page and "Active" in page
    filtered = admin_client.get(f"{CHANGELIST}?project__id__exact={ci.pk}").content.decode()
    assert "pipeline" in filtered and "web backend" not in filtered
    assert MintingKey.objects.get(name="web backend").last_used_at is not None


def test_revoke_asks_for_confirmation_then_revokes(admin_client, make_project, operator):
    issued = minting_key_create(project=make_project(), name="ci", actor=operator)
    url = f"{CHANGELIST}{issued.key.pk}/revoke/"
    assert url in admin_client.get(f"{CHANGELIST}{issued.key.pk}/change/").content.decode()
    confirm = admin_client.get(url)
    assert confirm.status_code == 200 and "Yes, revoke it" in confirm.content.decode()
    assert MintingKey.objects.get(pk=issued.key.pk).revoked_at is None

    response = admin_client.post(url)
    assert response.status_code == 302
    key = MintingKey.objects.get(pk=issued.key.pk)
    assert key.revoked_at is not None and key.revoked_by.username == "operator"
    assert minting_key_authenticate(issued.plaintext) is None
    assert LogEntry.objects.filter(object_pk=str(key.pk), action=LogEntry.Action.UPDATE).count() == 1
    assert admin_client.post(url).status_code == 302  # again: nothing changes
    assert LogEntry.objects.filter(object_pk=str(key.pk), action=LogEntry.Action.UPDATE).count() == 1


def test_minting_keys_cannot_be_deleted_or_edited(admin_client, make_project, operator):
    issued = minting_key_create(project=make_project(), name="ci", actor=operator)
    # Never deleted, like projects and tokens: the delete URL is not allowed at all (405), not just forbidden.
    assert admin_client.get(f"{CHANGELIST}{issued.key.pk}/delete/").status_code == 405
    admin_client.post(f"{CHANGELIST}{issued.key.pk}/change/", {"name": "renamed"})
    assert MintingKey.objects.get(pk=issued.key.pk).name == "ci"
    assert "delete_selected" not in admin_client.get(CHANGELIST).content.decode()


def test_staff_without_permission_cannot_create_or_revoke(client, django_user_model, make_project, operator):
    issued = minting_key_create(project=make_project(), name="ci", actor=operator)
    staff = django_user_model.objects.create_user(username="viewer", password="pw", is_staff=True)
    client.force_login(staff)
    assert client.get(ADD).status_code == 403
    assert client.post(f"{CHANGELIST}{issued.key.pk}/revoke/").status_code == 403
    assert MintingKey.objects.get(pk=issued.key.pk).revoked_at is None


def test_project_page_lists_its_minting_keys_and_offers_a_new_one(admin_client, make_project, operator):
    from django.urls import reverse

    project = make_project()
    issued = minting_key_create(project=project, name="web backend", actor=operator)
    response = admin_client.get(reverse("admin:projects_project_change", args=[project.pk]))
    page = response.content.decode()
    assert "web backend" in page and f"{issued.key.prefix}…" in page
    assert issued.plaintext not in page
    assert f"{reverse('admin:tokens_mintingkey_add')}?project={project.pk}" in page
    assert reverse("admin:tokens_mintingkey_revoke", args=[issued.key.pk]) in page
