import pytest


def test_healthz_answers_without_authentication(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_reports_database_and_migrations_ready(client, settings, tmp_path):
    settings.USAGE_SPILL_DIR = str(tmp_path)
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


@pytest.mark.django_db(transaction=True)  # the probe closes its connection, as in a server
def test_readiness_and_the_dashboard_say_degraded_while_usage_records_wait_on_disk(
    client, admin_client, settings, tmp_path
):
    settings.USAGE_SPILL_DIR = str(tmp_path)
    assert client.get("/readyz").json() == {"status": "ready"}
    assert "usage-degraded" not in admin_client.get("/admin/").content.decode()
    (tmp_path / "usage-123-20261202T000000000000.jsonl").write_text("")
    response = client.get("/readyz")
    assert response.status_code == 200 and response.json()["status"] == "degraded"
    assert "usage-degraded" in admin_client.get("/admin/").content.decode()
