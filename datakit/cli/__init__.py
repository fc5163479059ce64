"""The ``datakit`` command: the composition root.

The group, its global options and the error guard live here; the commands live in ``data``
(convert, merge, info, verify, preview), ``train`` (train, export, eval) and ``demo``, and are
registered at the bottom. Converters and training are imported inside the command functions, so
``datakit convert`` never pays for importing torch. Bad input ends as one line on stderr and a
non-zero exit, never a traceback: commands raise ``DatakitError`` and the group turns it into one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import click

from datakit import __version__
from datakit.errors import DatakitError


class CliError(click.ClickException):
    """A DatakitError shown as ``Error: <message>``, exit status 1 (bad data)."""

    exit_code = 1


class CliUsageError(CliError):
    """Exit status 2 (arguments that contradict each other or the state of the output)."""

    exit_code = 2


def _cli_error(message: str, exit_code: int = 1) -> CliError:
    return CliUsageError(message) if exit_code == 2 else CliError(message)


def _run_guarded(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except DatakitError as exc:
        raise _cli_error(str(exc), exc.exit_code) from None
    except FileNotFoundError as exc:
        raise CliError(f"{exc.filename}: no such file or directory") from None
    except PermissionError as exc:
        raise CliError(f"{exc.filename}: permission denied") from None
    except OSError as exc:
        if not exc.filename:
            raise
        raise CliError(f"{exc.filename}: {exc.strerror or exc}") from None


RESUMABLE = ("convert", "train")  # commands whose progress survives an interrupt (--resume)


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, a scheduler): unwinds as Ctrl-C does, so temporaries are
    removed and worker processes stopped, instead of the default instant death."""


TERMINATE_GRACE_S = 20.0  # after SIGTERM, unwinding gets this long; then the signal's default


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """While inside, SIGTERM raises :class:`Terminated`. Sent to the whole process group, it also
    kills the DataLoader workers: torch's SIGCHLD handler would report each as a failed worker
    (a traceback) while this one unwinds, so it is switched off first. Code that swallows the
    exception (a C extension's module init, say) must not make SIGTERM a no-op: a second SIGTERM,
    or the first after TERMINATE_GRACE_S, ends the process as the default action does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        signal.signal(signal.SIGCHLD, _no_op)  # (SIG_DFL: a SIGCHLD pending now would be reported)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        again = threading.Timer(TERMINATE_GRACE_S, os.kill, (os.getpid(), signal.SIGTERM))
        again.daemon = True
        again.start()
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _no_op(signum: int, frame: object) -> None:
    pass


class GuardedGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            with _sigterm_unwinds():
                return _run_guarded(super().invoke, ctx)
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: one line, the shell's status
            name = ctx.invoked_subcommand
            hint = "; the same command with --resume continues" if name in RESUMABLE else ""
            what, status = (
                ("Terminated", 143) if isinstance(exc, Terminated) else ("Interrupted", 130)
            )
            click.echo(f"{what}{hint}", err=True)
            ctx.exit(status)


@click.group(cls=GuardedGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="datakit")
@click.option(
    "--cache-dir",
    default=None,
    metavar="DIR",
    help="Keep a local copy of every remote shard read and reuse it while unchanged "
    "(env DATAKIT_CACHE_DIR).",
)
@click.option(
    "--on-shard-error",
    type=click.Choice(["fail", "skip"]),
    default=None,
    help="A remote shard still unreadable after retries: stop (default) or log and skip it "
    "(env DATAKIT_ON_SHARD_ERROR).",
)
def main(cache_dir: str | None, on_shard_error: str | None) -> None:
    """RGB-D datasets to verified WebDataset shards, and pixel-level contrastive pretraining.

    DATASET and OUT are folders or URLs (s3://, gs://, http(s)://); see docs/storage.md.
    """
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    # Storage settings travel as environment variables so that loader worker processes see them.
    if cache_dir:
        os.environ["DATAKIT_CACHE_DIR"] = cache_dir
    if on_shard_error:
        os.environ["DATAKIT_ON_SHARD_ERROR"] = on_shard_error


# The command modules import nothing from this package, so registering them here makes no cycle.
from datakit.cli.data import convert, info, merge, preview, verify  # noqa: E402
from datakit.cli.demo import demo  # noqa: E402
from datakit.cli.train import eval_command, export, train  # noqa: E402

for _command in (convert, merge, info, verify, preview, train, export, eval_command, demo):
    main.add_command(_command)
