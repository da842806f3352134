"""``dihya completion bash|zsh|fish``: the shell's completion script, by argcomplete.

argcomplete (a well-kept library that every major shell's completion can call) completes from
the parser itself, so a new command or option completes without a script to update; the script
printed here only asks ``dihya`` for candidates (``source <(dihya completion bash)``). The
completing run stops in :func:`cli.main.run` right after the parser is built, before any config
file is read or any API is called.
"""

from __future__ import annotations

import argparse

from argcomplete.shell_integration import shellcode

from cli.commands import Commands
from cli.context import Ctx
from cli.errors import Exit

SHELLS = ("bash", "zsh", "fish")


def register(root: Commands) -> None:
    p = root.command("completion", "help.completion", completion)
    p.add_argument("shell", choices=SHELLS, help=root.t("help.arg.shell"))
    p.set_defaults(offline=True)


def completion(ctx: Ctx, args: argparse.Namespace) -> int:
    ctx.out.write(shellcode(["dihya"], shell=args.shell))
    ctx.out.flush()
    return Exit.OK
