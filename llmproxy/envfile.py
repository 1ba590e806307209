"""`python -m llmproxy.envfile PATH`: write a `.env` with fresh secrets, unless one exists already."""

import secrets
import sys
from pathlib import Path

from cryptography.fernet import Fernet


def main(path: str) -> None:
    target = Path(path)
    if target.exists():
        return
    target.write_text(
        "# Written by `make` on first run. Keep it secret; losing ENCRYPTION_KEYS loses the stored upstream keys.\n"
        f"SECRET_KEY={secrets.token_urlsafe(50)}\n"
        f"ENCRYPTION_KEYS={Fernet.generate_key().decode()}\n"
        f"MANAGEMENT_TOKEN={secrets.token_urlsafe(32)}\n"
    )
    target.chmod(0o600)
    print(f"Wrote {target} with a fresh SECRET_KEY, ENCRYPTION_KEYS and MANAGEMENT_TOKEN.")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".env")
