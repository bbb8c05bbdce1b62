"""The root `medcbir` app: every command and sub-app, registered here in the order `--help` lists them."""

from __future__ import annotations

import typer

from indexer.cli import adapt, governance, ingest, maintenance, pacs, prediction, serve

app = typer.Typer(
    name="medcbir",
    help="Content-based medical image retrieval: index an archive, then search it by image.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# the archive: put images in, look after it (ingest.py, maintenance.py)
app.command("index")(ingest.index)
app.command("stats")(maintenance.stats)
app.command("failures")(ingest.failures)
app.command("verify")(maintenance.verify)
app.command("rebuild-index")(maintenance.rebuild_index)
app.add_typer(maintenance.db_app, name="db")
app.command("list-encoders")(maintenance.list_encoders)
# the upper layers, started by import string (serve.py)
app.command("serve")(serve.serve)
app.command("ui")(serve.ui)
app.command("demo")(serve.demo)
# labels: measure and learn (prediction.py), and re-embed with what was learnt (ingest.py)
app.command("eval")(prediction.evaluate)
app.command("finetune")(prediction.finetune)
app.command("adapt")(adapt.adapt)
app.command("reindex")(ingest.reindex)
app.command("train-head")(prediction.train_head)
# accounts, audit and de-identified export (governance.py)
app.add_typer(governance.users_app, name="users")
app.command("audit")(governance.audit)
app.command("export")(governance.export)
# the hospital's PACS: connections, sync (pacs.py)
app.add_typer(pacs.pacs_app, name="pacs")
app.command("receive")(pacs.receive)
