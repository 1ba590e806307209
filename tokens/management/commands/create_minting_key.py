from django.core.management.base import BaseCommand

from llmproxy.audit import Actor
from projects.management.cli import get_project, refusals_as_errors
from tokens.minting import minting_key_create


class Command(BaseCommand):
    help = (
        "Create a minting key for a project and print only the key (shown this once). A program holding it can "
        "create, list, read and revoke that project's tokens and read its usage through the management API, and "
        "nothing else."
    )

    def add_arguments(self, parser):
        parser.add_argument("--project", required=True, help="project name or ID")
        parser.add_argument("--name", required=True, help="which program will hold the key, e.g. 'web backend'")

    def handle(self, *args, project: str, name: str, **options):
        with refusals_as_errors():
            issued = minting_key_create(project=get_project(project), name=name, actor=Actor.cli())
        self.stdout.write(issued.plaintext)
