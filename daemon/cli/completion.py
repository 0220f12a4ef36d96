"""`stoker completion SHELL`: the shell code that completes `stoker` commands, options and
chat ids (argcomplete: the shell runs `stoker` itself with `_ARGCOMPLETE` set to complete a
line, so completions always match the installed version).

    bash: eval "$(stoker completion bash)"            (in ~/.bashrc)
    zsh:  eval "$(stoker completion zsh)"             (in ~/.zshrc, after compinit)
    fish: stoker completion fish | source             (in ~/.config/fish/config.fish)
"""

from __future__ import annotations

import argparse
import sys

SHELLS = ("bash", "zsh", "fish")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    help_text = "print the shell code that completes stoker's commands (bash, zsh, fish)"
    p = sub.add_parser("completion", help=help_text, description=help_text + ". Install: "
                       "bash/zsh: eval \"$(stoker completion bash)\" in ~/.bashrc (zsh: "
                       "~/.zshrc); fish: stoker completion fish | source in config.fish")
    p.add_argument("shell", choices=SHELLS)
    p.set_defaults(handler=cmd_completion)


def cmd_completion(args: argparse.Namespace) -> int:
    from argcomplete.shell_integration import shellcode

    sys.stdout.write(shellcode(["stoker"], shell=args.shell))
    sys.stdout.flush()
    return 0


def complete(parser: argparse.ArgumentParser) -> None:
    """Answer the shell's completion request if this run is one (argcomplete exits then)."""
    import argcomplete

    argcomplete.autocomplete(parser)
