import json

from django.core.management.base import BaseCommand

from projects.selectors import project_list_with_token_counts


class Command(BaseCommand):
    help = "List projects with their masked upstream key, status and number of tokens (never the key itself)."

    def add_arguments(self, parser):
        parser.add_argument("--json", dest="as_json", action="store_true", help="print a JSON array instead of a table")

    def handle(self, *args, as_json: bool, **options):
        rows = [
            {
                "id": str(p.pk),
                "name": p.name,
                "api_key": p.api_key_masked,
                "is_active": p.is_active,
                "tokens": p.token_count,
                "created_at": p.created_at.isoformat(),
            }
            for p in project_list_with_token_counts().order_by("name")
        ]
        if as_json:
            self.stdout.write(json.dumps(rows, indent=2, ensure_ascii=False))
            return
        if not rows:
            self.stderr.write("No projects.")
            return
        table = [["ID", "NAME", "STATUS", "API KEY", "TOKENS", "CREATED"]] + [
            [
                r["id"],
                r["name"],
                "active" if r["is_active"] else "inactive",
                r["api_key"],
                str(r["tokens"]),
                r["created_at"][:16].replace("T", " "),
            ]
            for r in rows
        ]
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        for row in table:
            self.stdout.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
