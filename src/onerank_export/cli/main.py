"""`onerank-export`: a thin shell over the pipeline's functions.

Error contract: a user error (bad option, missing file, invalid checkpoint or data) prints one
line `error: ...` on stderr and exits 1, with no traceback. A failed check (parity, accuracy
gate) exits 1 after writing its report. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys

import click

from onerank_export import __version__
from onerank_export.cli.common import err_console
from onerank_export.errors import OneRankError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="onerank-export")
def cli() -> None:
    """OneRank from PyTorch to Triton: ONNX with the MatchingScore custom op, FP16/INT8 variants,
    TensorRT engines, a Triton model repository, and parity reports that CI can gate on.

    Start with `onerank-export build` (no arguments: the bundled demo checkpoint)."""


def _register() -> None:
    from onerank_export.cli.build import build
    from onerank_export.cli.demo_checkpoint import demo_checkpoint
    from onerank_export.cli.embeddings import embeddings
    from onerank_export.cli.export import export
    from onerank_export.cli.verify import verify

    for command in (build, export, verify, demo_checkpoint, embeddings):
        cli.add_command(command)
    # Commands owned by optional stages; each module defines one click command of the same name.
    for module, name in (("onerank_export.cli.calibrate", "calibrate"), ("onerank_export.cli.serve", "serve"),
                         ("onerank_export.cli.doctor", "doctor")):
        try:
            mod = __import__(module, fromlist=[name])
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        cli.add_command(getattr(mod, name))


_register()


def main(argv: list[str] | None = None) -> int:
    try:
        code = cli.main(args=argv, prog_name="onerank-export", standalone_mode=False)
    except click.exceptions.Abort:
        err_console.print("aborted")
        return 130
    except click.ClickException as exc:  # usage errors: unknown option, bad value, missing path ...
        err_console.print(f"error: {_one_line(exc.format_message())}", highlight=False, markup=False, soft_wrap=True)
        return 1
    except OneRankError as exc:
        err_console.print(f"error: {exc}", highlight=False, markup=False, soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    return code if isinstance(code, int) else 0


def _one_line(message: str) -> str:
    return " ".join(message.split())


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
