"""List-cell formats for templates, the same as the admin lists use: `{{ time|compact_time }}`, `{{ time|until }}`."""

from datetime import datetime

from django import template
from django.utils.safestring import SafeString
from django.utils.timesince import timeuntil

from ..admin_toolkit import compact_time as _compact_time

register = template.Library()


@register.filter
def compact_time(value: datetime | None) -> SafeString | str:
    return _compact_time(value)


@register.filter
def until(value: datetime) -> str:
    """How long until `value`, in its largest unit only ("in 2 hours"), for cells with little room."""
    return f"in {timeuntil(value, depth=1)}"
