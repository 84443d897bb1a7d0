"""`nyxflow`: run the suite and talk to it."""

from __future__ import annotations

import asyncio
import time

import typer
from rich.console import Console

from nyxflow.cli.demo import create_demo
from nyxflow.cli.supervisor import SERVICES, Supervisor, wait_grpc_serving, wait_http_ok
from nyxflow.settings import CommonSettings

app = typer.Typer(help="nyxflow: durable LLM workflows, streamed live.", no_args_is_help=True)
console = Console(stderr=True)


class UpSettings(CommonSettings):
    api_key: str = "dev-key"
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8080


@app.command()
def up(
    demo: bool = typer.Option(True, help="Create a demo workflow and a pending run."),
    start_timeout: float = typer.Option(90.0, help="Seconds to wait for the services."),
) -> None:
    """Start runs, engine and gateway; Ctrl-C stops all three."""
    settings = UpSettings()
    supervisor = Supervisor.with_shared_secret()
    base = f"http://{settings.gateway_host}:{settings.gateway_port}"
    try:
        supervisor.start("runs")
        wait_grpc_serving(settings.runs_addr, start_timeout)
        supervisor.start("engine")
        wait_grpc_serving(settings.engine_addr, start_timeout)
        supervisor.start("gateway")
        wait_http_ok(f"{base}/healthz", start_timeout)
        console.print(f"[green]nyxflow is up[/]: {', '.join(SERVICES)}")
        console.print(f"  page      {base}/")
        console.print(f"  API key   {settings.api_key}")
        if demo:
            workflow, run = asyncio.run(create_demo(settings.runs_addr, settings.api_key))
            console.print(f"  demo      workflow {workflow.id}, run {run.id} (pending)")
            console.print(
                f"  SSE       {base}/v1/runs/{run.id}/events?access_token={settings.api_key}"
            )
            console.print(
                f"            curl -N -H 'Authorization: Bearer {settings.api_key}' "
                f"{base}/v1/runs/{run.id}/events"
            )
        console.print("Ctrl-C stops all three.")
        while not (dead := supervisor.dead()):
            time.sleep(0.5)
        console.print(f"[red]{', '.join(dead)} exited; stopping the others[/]")
        raise typer.Exit(1)
    except KeyboardInterrupt:
        console.print("stopping…")
    except TimeoutError as error:
        console.print(f"[red]{error}[/]")
        raise typer.Exit(1) from None
    finally:
        supervisor.stop()


@app.command()
def version() -> None:
    """Print the version."""
    from importlib.metadata import version as dist_version

    typer.echo(dist_version("nyxflow"))


if __name__ == "__main__":
    app()
