"""Secrets out of free text: anything shaped like an API key or a token (`sk-…`) is cut to its display prefix.

For text a client or an operator chose (a path, a model name, an attempted user name) before it is logged or stored.
"""

import re

from tokens import secret

SECRET_LIKE_RE = re.compile(r"sk-[A-Za-z0-9_\-]{7,}")


def scrub_secrets(text: str) -> str:
    if "sk-" not in text:  # the common case, without a regex scan
        return text
    return SECRET_LIKE_RE.sub(lambda m: secret.display_prefix(m.group()) + "…", text)
