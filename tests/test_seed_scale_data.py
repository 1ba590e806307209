"""The load-data command behind bench/admin_bench.py."""

import pytest
from django.core.management import CommandError, call_command

from projects.models import Project
from proxy.models import UsageDaily, UsageRecord
from proxy.selectors import usage_totals
from tokens.models import Token

pytestmark = pytest.mark.django_db


def test_seeds_an_empty_database_consistently():
    call_command("seed_scale_data", projects=3, tokens=20, usage=300, days=5)
    assert Project.objects.count() == 3 and Token.objects.count() == 20
    assert UsageRecord.objects.count() == 300
    assert usage_totals().requests == 300 and UsageDaily.objects.exists()
    priced = UsageRecord.objects.exclude(cost_usd=None)
    assert priced.exists() and not UsageRecord.objects.filter(upstream_aborted=True).exists()
    assert sum(r.cost_usd for r in priced) == sum(d.cost_usd for d in UsageDaily.objects.all())  # spend adds up
    for token in Token.objects.filter(request_count__gt=0):
        used = UsageRecord.objects.filter(token=token)
        assert used.count() == token.request_count
        assert not used.filter(time__gt=token.expires_at).exists()  # used within its lifetime


def test_refuses_a_database_with_projects(make_project):
    make_project()
    with pytest.raises(CommandError, match="already has projects"):
        call_command("seed_scale_data", projects=1, tokens=1, usage=1)
