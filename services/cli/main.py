"""The `stasis` command: run services, submit jobs and follow them.

Exit codes of the commands that wait for a job: 0 succeeded (or skipped),
1 failed, 124 timed out, 130 cancelled, 2 for a usage or connection error.
"""

import argparse
import asyncio
import json
import logging
import os
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NatsClient

from libs.config import Config, ConfigError, load_config
from libs.events import StasisEventError, connect
from libs.events.audit import (
    StoredMessage,
    audit_job,
    audit_range,
    follow_messages,
    message_to_line,
    read_messages,
)
from libs.events.embedded import EmbeddedNats, EmbeddedNatsError
from libs.events.timeline import describe_message, render_timeline
from libs.telemetry.logformat import set_log_format
from services.executor.heartbeat import parse_labels
from services.executor.service import Executor
from services.gateway import Gateway
from services.gateway.auth import KeyConfigError
from services.logsink import LogSink
from services.runtime import run_until_signal, setup_logging
from services.scheduler import Scheduler

from .client import ApiError, GatewayClient
from .stack import Service, Stack

log = logging.getLogger("stasis")

EXIT_CODES = {
    "succeeded": 0,
    "skipped": 0,
    "failed": 1,
    "timed_out": 124,
    "cancelled": 130,
}
DEFAULT_URL = "http://127.0.0.1:8080"


def main(argv: list[str] | None = None) -> int:
    """Run the `stasis` command line and return its exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(asyncio.run(args.handler(args)))
    except (
        ConfigError,
        ApiError,
        RuntimeError,
        KeyConfigError,
        EmbeddedNatsError,
        StasisEventError,
    ) as exc:
        print(f"stasis: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stasis", description=__doc__.splitlines()[0])
    parser.add_argument("--config", "-c", help="configuration file (YAML)")
    parser.add_argument(
        "--url",
        default=os.environ.get("STASIS_URL", DEFAULT_URL),
        help=f"gateway URL for client commands (default $STASIS_URL or {DEFAULT_URL})",
    )
    parser.add_argument("--api-key", default=os.environ.get("STASIS_API_KEY"))
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    up = commands.add_parser("up", help="run NATS and every service in the foreground")
    up.set_defaults(handler=cmd_up)
    nats = commands.add_parser("nats", help="run only the embedded NATS server")
    nats.set_defaults(handler=cmd_nats)
    for name in ("gateway", "scheduler", "executor", "logsink"):
        service = commands.add_parser(name, help=f"run only the {name}")
        service.set_defaults(handler=cmd_service, service=name)
        if name == "executor":
            service.add_argument("--slots", type=int, help="max concurrent jobs")
            service.add_argument("--pool", help="executor pool to pull from")
            service.add_argument(
                "--labels",
                default="",
                help="comma-separated labels this executor offers, e.g. docker,arm64",
            )

    run = commands.add_parser(
        "run", help="run the pipeline of a local repository through the whole system"
    )
    run.add_argument("path", help="path of a git repository with .stasis-ci.yaml")
    run.add_argument("--branch")
    run.add_argument("--commit")
    run.add_argument("--env", "-e", action="append", default=[], metavar="NAME=VALUE")
    run.set_defaults(handler=cmd_run)

    submit = commands.add_parser("submit", help="submit a job to a running gateway")
    submit.add_argument("repository", help="repository URL or absolute path")
    submit.add_argument("--branch")
    submit.add_argument("--commit")
    submit.add_argument(
        "--env", "-e", action="append", default=[], metavar="NAME=VALUE"
    )
    submit.add_argument(
        "--follow", "-f", action="store_true", help="print the log live"
    )
    submit.set_defaults(handler=cmd_submit)

    status = commands.add_parser("status", help="show a job")
    status.add_argument("job_id")
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=cmd_status)

    logs = commands.add_parser("logs", help="print a job's log")
    logs.add_argument("job_id")
    logs.add_argument(
        "--follow", "-f", action="store_true", help="follow until it ends"
    )
    logs.set_defaults(handler=cmd_logs)

    retry = commands.add_parser("retry", help="start a new run of a failed job")
    retry.add_argument("job_id")
    retry.add_argument("--follow", "-f", action="store_true", help="print the log live")
    retry.set_defaults(handler=cmd_retry)

    _add_replay_parser(commands)

    cancel = commands.add_parser("cancel", help="cancel a job's current run")
    cancel.add_argument("job_id")
    cancel.set_defaults(handler=cmd_cancel)

    artifacts = commands.add_parser("artifacts", help="list or download artifacts")
    artifacts.add_argument("job_id")
    artifacts.add_argument("--run", help="run id (default: the last run)")
    artifacts.add_argument("--download", metavar="NAME", help="artifact to download")
    artifacts.add_argument(
        "--output", "-o", help="file to write (default: the artifact's name)"
    )
    artifacts.set_defaults(handler=cmd_artifacts)
    return _with_stream_commands(parser, commands)


def _with_stream_commands(
    parser: argparse.ArgumentParser, commands: Any
) -> argparse.ArgumentParser:
    """Add `events` and `audit`, which read the streams from NATS directly."""
    nats_url = argparse.ArgumentParser(add_help=False)
    nats_url.add_argument(
        "--nats-url",
        default=os.environ.get("STASIS_NATS_URL"),
        help="NATS server(s) of the stack, comma-separated (default $STASIS_NATS_URL "
        "or nats.url of the config file)",
    )

    events = commands.add_parser(
        "events", parents=[nats_url], help="print a job's stored events from NATS"
    )
    events.add_argument("job_id")
    events.add_argument(
        "--follow", "-f", action="store_true", help="go on printing new events"
    )
    events.add_argument(
        "--json",
        action="store_true",
        help="one JSON object a line: subject, seq, stored_at, headers, data",
    )
    events.set_defaults(handler=cmd_events)

    audit = commands.add_parser(
        "audit",
        parents=[nats_url],
        help="verify the hash chain of a job's events and print its timeline",
        description="Exit codes: 0 intact or unchained (written before events "
        "were chained), 1 tampered or unreadable, 2 usage or connection error.",
    )
    audit.add_argument("job_id", nargs="?", help="the job to audit")
    audit.add_argument(
        "--all", action="store_true", help="audit every job made in a time range"
    )
    audit.add_argument(
        "--since",
        type=_parse_time,
        help="with --all: jobs made at or after this ISO 8601 date or time (UTC)",
    )
    audit.add_argument(
        "--until",
        type=_parse_time,
        help="with --all: jobs made before this ISO 8601 date or time (UTC)",
    )
    audit.set_defaults(handler=cmd_audit)
    return parser


def _add_replay_parser(commands: Any) -> None:
    replay = commands.add_parser(
        "replay", help="submit a new job copied from an old one, with overrides"
    )
    replay.add_argument("job_id")
    replay.add_argument("--commit", help="build this commit instead")
    replay.add_argument("--branch", help="build this branch (its head unless --commit)")
    replay.add_argument(
        "--env", "-e", action="append", default=[], metavar="NAME=VALUE"
    )
    replay.add_argument("--image", help="run every step in this image")
    replay.add_argument(
        "--step",
        action="append",
        dest="steps",
        metavar="NAME",
        help="run only this step; repeat for more",
    )
    replay.add_argument(
        "--follow", "-f", action="store_true", help="print the log live"
    )
    replay.set_defaults(handler=cmd_replay)


def _config(args: argparse.Namespace, **overrides: Any) -> Config:
    config = load_config(args.config, overrides=overrides)
    setup_logging(config.log_level)
    set_log_format(config.telemetry.log_format)
    return config


async def cmd_up(args: argparse.Namespace) -> int:
    """Run embedded NATS (unless nats.url is set) and all four services."""
    stack = Stack(_config(args))
    await run_until_signal(stack.start, stack.stop)
    return 0


async def cmd_nats(args: argparse.Namespace) -> int:
    """Run the embedded NATS server alone, for services started one by one."""
    config = _config(args)
    server = EmbeddedNats(
        os.path.join(config.data_dir, "nats"), config.nats.embedded_port
    )

    async def start() -> None:
        await server.start()
        print(server.url, flush=True)

    await run_until_signal(start, server.stop)
    return 0


async def cmd_service(args: argparse.Namespace) -> int:
    """Run one service against the configured NATS."""
    overrides: dict[str, Any] = {}
    if getattr(args, "slots", None):
        overrides["executor.max_concurrent_jobs"] = args.slots
    if getattr(args, "pool", None):
        overrides["executor.pool"] = args.pool
    config = _config(args, **overrides)
    classes: dict[str, type[Service]] = {
        "gateway": Gateway,
        "scheduler": Scheduler,
        "executor": Executor,
        "logsink": LogSink,
    }
    if args.service == "executor":
        labels = parse_labels(args.labels) if args.labels else None
        service: Service = Executor(config, labels=labels)
    else:
        service = classes[args.service](config)  # type: ignore[call-arg]
    await run_until_signal(service.start, service.stop)
    return 0


async def cmd_run(args: argparse.Namespace) -> int:
    """Start a private stack, run one local repository's pipeline, print its log."""
    path = Path(os.path.abspath(args.path))
    if not os.path.exists(path / ".git"):
        print(
            f"stasis: {str(path)!r} is not a git repository; run `git init` and "
            "commit .stasis-ci.yaml there, or pass the path of one",
            file=sys.stderr,
        )
        return 2
    config = _config(args, **{"server.port": 0})
    store = tempfile.mkdtemp(prefix="stasis-run-nats-")
    stack = Stack(config, nats_store=store)
    try:
        await stack.start()
        assert stack.gateway is not None
        async with GatewayClient(stack.gateway.url) as client:
            body = _job_body(str(path), args)
            accepted = await client.submit(body)
            print(f"job {accepted['job_id']} submitted", file=sys.stderr)
            return await _follow(client, accepted["job_id"])
    finally:
        await stack.stop()
        shutil.rmtree(store, ignore_errors=True)


def _job_body(repository: str, args: argparse.Namespace) -> dict[str, Any]:
    env = {}
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep:
            raise RuntimeError(f"--env {item!r} must be NAME=VALUE")
        env[name] = value
    repo: dict[str, Any] = {"url": repository}
    if args.branch:
        repo["branch"] = args.branch
    if args.commit:
        repo["commit"] = args.commit
    return {"repository": repo, "env": env}


async def _follow(client: GatewayClient, job_id: str) -> int:
    """Print a job's log and progress until it ends; return its exit code."""
    status = "unknown"
    async for sse in client.stream(job_id):
        if sse.event == "log":
            chunk = json.loads(sse.data)
            out = sys.stderr if chunk["stream"] == "stderr" else sys.stdout
            out.write(chunk["data"])
            out.flush()
        elif sse.event == "end":
            status = json.loads(sse.data)["status"]
        else:
            _print_event(json.loads(sse.data))
    print(f"job {job_id} {status}", file=sys.stderr)
    return EXIT_CODES.get(status, 1)


def _print_event(event: dict[str, Any]) -> None:
    kind = event.get("type", "")
    if kind == "step.started":
        attempt = (
            f" (attempt {event['attempt']})" if event.get("attempt", 1) > 1 else ""
        )
        print(f"==> step {event['step']}{attempt}", file=sys.stderr)
    elif kind == "step.finished":
        reason = f": {event['reason']}" if event.get("reason") else ""
        print(
            f"<== step {event['step']} {event['outcome']} in "
            f"{event.get('duration_s', 0):.2f}s{reason}",
            file=sys.stderr,
        )
    elif kind == "run.finished" and event.get("reason"):
        print(f"run {event['outcome']}: {event['reason']}", file=sys.stderr)
    sys.stderr.flush()


async def cmd_submit(args: argparse.Namespace) -> int:
    """Submit a job to the gateway at --url."""
    async with GatewayClient(args.url, args.api_key) as client:
        accepted = await client.submit(_job_body(args.repository, args))
        print(accepted["job_id"])
        if args.follow:
            return await _follow(client, accepted["job_id"])
    return 0


async def cmd_status(args: argparse.Namespace) -> int:
    """Print a job's status and steps."""
    async with GatewayClient(args.url, args.api_key) as client:
        job = await client.request("GET", f"/api/v1/jobs/{args.job_id}")
    if args.json:
        print(json.dumps(job, indent=2))
        return 0
    run = job["runs"][-1]
    print(f"job {job['job_id']}: {job['status']}  ({job['repository']['url']})")
    if run.get("reason"):
        print(f"  reason: {run['reason']}")
    for step in run.get("steps", []):
        code = "" if step.get("exit_code") is None else f" exit {step['exit_code']}"
        print(f"  {step['name']:<20} {step['status']}{code}")
    return 0


async def cmd_logs(args: argparse.Namespace) -> int:
    """Print a job's log, or follow it live with -f."""
    async with GatewayClient(args.url, args.api_key) as client:
        if args.follow:
            return await _follow(client, args.job_id)
        text = await client.request("GET", f"/api/v1/jobs/{args.job_id}/logs")
        sys.stdout.write(text)
    return 0


async def cmd_retry(args: argparse.Namespace) -> int:
    """Ask the gateway for a new run of a job whose last run did not succeed."""
    async with GatewayClient(args.url, args.api_key) as client:
        result = await client.request("POST", f"/api/v1/jobs/{args.job_id}/retry")
        print(result["run_id"])
        if args.follow:
            return await _follow(client, args.job_id)
    return 0


async def cmd_replay(args: argparse.Namespace) -> int:
    """Ask the gateway for a new job that replays an old one with overrides."""
    body: dict[str, Any] = {"env": _job_body("", args)["env"]}
    for name in ("commit", "branch", "image", "steps"):
        if getattr(args, name):
            body[name] = getattr(args, name)
    async with GatewayClient(args.url, args.api_key) as client:
        path = f"/api/v1/jobs/{args.job_id}/replay"
        result = await client.request("POST", path, json=body)
        print(result["job_id"])
        if args.follow:
            return await _follow(client, result["job_id"])
    return 0


async def cmd_artifacts(args: argparse.Namespace) -> int:
    """List a run's artifacts, or download one of them to a file."""
    params = {"run": args.run} if args.run else {}
    path = f"/api/v1/jobs/{args.job_id}/artifacts"
    async with GatewayClient(args.url, args.api_key) as client:
        listing = await client.request("GET", path, params=params)
        if not args.download:
            for item in listing["artifacts"]:
                print(f"{item['name']:<32} {item['size']:>12}  sha256 {item['sha256']}")
            for warning in listing.get("warnings", []):
                print(f"warning: {warning}", file=sys.stderr)
            return 0
        names = [item["name"] for item in listing["artifacts"]]
        if args.download not in names:
            print(
                f"stasis: run {listing['run_id']} has no artifact {args.download!r}; "
                f"it has {names}",
                file=sys.stderr,
            )
            return 2
        target = Path(args.output or args.download)
        size = await client.download(f"{path}/{args.download}", params, target)
    print(f"wrote {size} bytes to {target}")
    return 0


async def cmd_cancel(args: argparse.Namespace) -> int:
    """Ask the gateway to cancel a job's current run."""
    async with GatewayClient(args.url, args.api_key) as client:
        result = await client.request("DELETE", f"/api/v1/jobs/{args.job_id}")
    print(f"cancel requested for run {result['run_id']}")
    return 0


def _parse_time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"invalid date {text!r}: use ISO 8601, e.g. 2026-01-31 or "
            "2026-01-31T12:00:00Z"
        ) from exc
    return value if value.tzinfo else value.replace(tzinfo=UTC)


async def _connect_nats(args: argparse.Namespace) -> NatsClient:
    config = _config(args)
    url = args.nats_url or config.nats.url
    if not url:
        raise RuntimeError(
            f"`stasis {args.command}` reads the streams from NATS, not through the "
            "gateway: pass --nats-url or set STASIS_NATS_URL"
        )
    timeout = float(config.nats.connect_timeout)
    return await connect(url, f"stasis-{args.command}", timeout)


def _print_message(message: StoredMessage, as_json: bool) -> None:
    if as_json:
        print(message_to_line(message), flush=True)
    else:
        print(describe_message(message), flush=True)


async def cmd_events(args: argparse.Namespace) -> int:
    """Print a job's stored events with stream sequence and time."""
    client = await _connect_nats(args)
    try:
        if args.follow:
            async for message in follow_messages(client, args.job_id):
                _print_message(message, args.json)
            return 0
        messages = await read_messages(client, args.job_id)
        if not messages:
            print(f"stasis: job {args.job_id} has no stored events", file=sys.stderr)
            return 1
        for message in messages:
            _print_message(message, args.json)
    finally:
        await client.close()
    return 0


async def cmd_audit(args: argparse.Namespace) -> int:
    """Audit one job's chain, or count the verdicts of every job in a range."""
    if bool(args.all) == bool(args.job_id):
        raise RuntimeError("give either a JOB_ID or --all (with --since/--until)")
    if (args.since or args.until) and not args.all:
        raise RuntimeError("--since and --until go with --all")
    client = await _connect_nats(args)
    try:
        if args.all:
            counts = await audit_range(client, args.since, args.until)
            for problem in counts.problems:
                print(problem)
            print(
                f"intact {counts.intact}, tampered {counts.tampered}, "
                f"unreadable {counts.unreadable}, unchained {counts.unchained}"
            )
            return 1 if counts.tampered or counts.unreadable else 0
        report = await audit_job(client, args.job_id)
    finally:
        await client.close()
    sys.stdout.write(render_timeline(report))
    if report.verdict in ("tampered", "unreadable"):
        first = report.findings[0].message if report.findings else "no events"
        print(f"stasis: job {args.job_id} failed the audit: {first}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
