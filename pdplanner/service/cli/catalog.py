"""``pdplanner models`` and ``pdplanner gpus``: list the catalogs; ``create`` adds to a server's,
``delete`` removes a custom entry from it.

Listing runs in process or against a server (which adds its custom entries). ``create`` reads a
Hugging Face config.json (a model) or a YAML/JSON GPU file here, at the edge, and sends its
content with CreateModel/CreateGpu; the request_id is derived from the content, so creating the
same file twice is one creation, while another file under a taken name is refused. Custom
entries live in a server's database, so ``create`` and ``delete`` need ``--server``; deleting a
name that is no custom entry there (unknown, or built in) is a one-line error with exit status 2.
"""

from __future__ import annotations

from typing import Annotated

import typer

from pdplanner.service.cli import format as fmt
from pdplanner.service.cli.app import JsonOpt, ServerOpt, group, show, show_json
from pdplanner.service.cli.backend import backend, content_id, remote
from pdplanner.service.cli.errors import flags

models_app = group(
    "models",
    "The model catalog (with a server: including its custom models).",
    invoke_without_command=True,
)
gpus_app = group(
    "gpus",
    "The GPU catalog (with a server: including its custom GPUs).",
    invoke_without_command=True,
)

Name = Annotated[
    str | None, typer.Option("--name", metavar="ID", help="Catalog id (default: from the file).")
]


@models_app.callback()
def models(ctx: typer.Context, json_out: JsonOpt = False, server: ServerOpt = None) -> None:
    """List the model catalog (with a server: including its custom models)."""
    if ctx.invoked_subcommand is not None:
        return
    specs = backend(server).models()
    if json_out:
        show_json([fmt.model_entry(s) for s in specs])
    else:
        show(fmt.models_table(specs))


@models_app.command("create")
def models_create(
    path: Annotated[str, typer.Argument(metavar="CONFIG.json", help="Hugging Face config.json.")],
    name: Name = None,
    alias: Annotated[
        list[str] | None, typer.Option("--alias", help="Another name (repeat for several).")
    ] = None,
    json_out: JsonOpt = False,
    server: ServerOpt = None,
) -> None:
    """Add a custom model to the server's catalog from its Hugging Face config.json."""
    from pdplanner.planner.catalog import read_model_file

    runner = remote(server)
    with flags(("model", "name", "alias")):
        stem, config = read_model_file(path, "model")
        aliases = list(alias or ())
        spec = runner.create_model(
            name or stem, config, aliases=aliases, request_id=content_id([config, aliases])
        )
    if json_out:
        show_json(fmt.model_entry(spec))
    else:
        show(fmt.models_table([spec]))


@gpus_app.callback()
def gpus(ctx: typer.Context, json_out: JsonOpt = False, server: ServerOpt = None) -> None:
    """List the GPU catalog (with a server: including its custom GPUs)."""
    if ctx.invoked_subcommand is not None:
        return
    specs = backend(server).gpus()
    if json_out:
        show_json([fmt.gpu_entry(s) for s in specs])
    else:
        show(fmt.gpus_table(specs))


@gpus_app.command("create")
def gpus_create(
    path: Annotated[str, typer.Argument(metavar="GPU.yaml", help="GPU file (YAML or JSON).")],
    name: Name = None,
    json_out: JsonOpt = False,
    server: ServerOpt = None,
) -> None:
    """Add a custom GPU type to the server's catalog from a GPU file."""
    import dataclasses

    from pdplanner.planner.catalog import gpu_to_entry, load_gpu

    runner = remote(server)
    with flags(("gpu", "name")):
        spec = load_gpu(path, "gpu")
        if name:
            spec = dataclasses.replace(spec, name=name)
        created = runner.create_gpu(spec, request_id=content_id(gpu_to_entry(spec)))
    if json_out:
        show_json(fmt.gpu_entry(created))
    else:
        show(fmt.gpus_table([created]))


EntryName = Annotated[
    str, typer.Argument(metavar="NAME", help="Custom entry's name (or models/NAME, gpus/NAME).")
]


@models_app.command("delete")
def models_delete(name: EntryName, server: ServerOpt = None) -> None:
    """Remove a custom model from the server's catalog (plans made with it keep their copy)."""
    typer.echo(f"deleted {remote(server).delete_entry('models', name)}")


@gpus_app.command("delete")
def gpus_delete(name: EntryName, server: ServerOpt = None) -> None:
    """Remove a custom GPU type from the server's catalog (plans made with it keep their copy)."""
    typer.echo(f"deleted {remote(server).delete_entry('gpus', name)}")
