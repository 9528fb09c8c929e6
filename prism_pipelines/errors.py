"""Errors a user can act on. Their text is shown as is: it names what is wrong and what to do,
and never carries a secret."""


class PrismError(Exception):
    """Base of every error whose message is meant for the person running the pipeline."""


class IntegrationsFileError(PrismError):
    """The integrations file is wrong; one line per problem."""

    def __init__(self, path: str, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{path} has {len(problems)} problem(s):\n{lines}")


class CredentialsError(PrismError):
    """The destination refused our credentials (or they are missing): the integration is in
    Error until someone fixes them. Retrying does not help."""


class DestinationError(PrismError):
    """The destination cannot take the data (missing bucket, queue, topic; unreachable endpoint;
    retries exhausted). The batch is not recorded, so the next run redoes it."""


class UnknownIntegrationError(PrismError, KeyError):
    """No integration has the name asked for (a ``KeyError`` too: a lookup that failed)."""

    def __str__(self) -> str:  # KeyError's would quote the message
        return str(self.args[0])


class Superseded(PrismError):
    """The destination refused a batch's file because it no longer holds what this run was to
    replace: a run that took the partition over published meanwhile. Nothing was overwritten and
    the cursor does not move; like a lost lease, it is not the partition's failure."""
