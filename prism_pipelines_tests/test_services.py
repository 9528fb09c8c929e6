"""Each service fixture answers the official client it stands in for."""

import os
import sys

import boto3
import pytest

from prism_pipelines_tests import services


def test_s3_roundtrip(moto_server):
    services.roundtrip_s3(moto_server)


def test_sqs_roundtrip(moto_server):
    services.roundtrip_sqs(moto_server)


def test_aws_env_points_default_clients_at_moto(moto_server, monkeypatch):
    for key, value in services.aws_env(moto_server.endpoint_url).items():
        monkeypatch.setenv(key, value)
    s3 = boto3.session.Session().client("s3")
    s3.create_bucket(Bucket="env-configured")
    assert "env-configured" in [b["Name"] for b in s3.list_buckets()["Buckets"]]


def test_azurite_roundtrip(azurite):
    assert "BlobEndpoint=http://127.0.0.1:" in azurite.connection_string
    services.roundtrip_azure(azurite)


def test_fake_gcs_resumable_roundtrip(fake_gcs):
    services.roundtrip_gcs(fake_gcs)


def test_pubsub_emulator_roundtrip(pubsub_emulator):
    services.roundtrip_pubsub(pubsub_emulator)


def test_pubsub_standin_roundtrip(pubsub_standin):
    assert pubsub_standin.kind == "standin"
    services.roundtrip_pubsub(pubsub_standin)


def test_apm_agent_roundtrip(apm_agent):
    services.roundtrip_apm_agent(apm_agent)


def test_standin_only_when_asked_for(tmp_path, monkeypatch):
    monkeypatch.setenv("PRISM_TEST_PUBSUB", "standin")
    with services.run_pubsub(tmp_path) as server:
        assert server.kind == "standin"


def test_without_the_emulator_the_pubsub_tests_fail_saying_what_to_install(tmp_path, monkeypatch):
    monkeypatch.delenv("PRISM_TEST_PUBSUB", raising=False)
    absent = tmp_path / "no-sdk" / "cloud-pubsub-emulator"
    monkeypatch.setenv("PRISM_TEST_PUBSUB_EMULATOR", str(absent))
    with (
        pytest.raises(services.PubSubEmulatorMissing) as missing,
        services.run_pubsub(tmp_path),
    ):
        pass
    message = str(missing.value)
    assert f"the emulator ({absent} does not exist)" in message
    assert "apt-get install google-cloud-cli-pubsub-emulator" in message
    assert "PRISM_TEST_PUBSUB=standin" in message


def test_pubsub_env_sets_and_restores(pubsub_standin, monkeypatch):
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "previous:1")
    monkeypatch.delenv("PUBSUB_PROJECT_ID", raising=False)
    with services.pubsub_env(pubsub_standin):
        assert os.environ["PUBSUB_EMULATOR_HOST"] == pubsub_standin.host
        assert os.environ["PUBSUB_PROJECT_ID"] == "test-project"
    assert os.environ["PUBSUB_EMULATOR_HOST"] == "previous:1"
    assert "PUBSUB_PROJECT_ID" not in os.environ


def test_server_that_exits_is_reported_with_its_log(tmp_path):
    argv = [sys.executable, "-c", "print('boom', flush=True); raise SystemExit(3)"]
    with (
        pytest.raises(RuntimeError, match=r"(?s)broken exited with code 3.*boom"),
        services.run_server("broken", lambda _: argv, "http://127.0.0.1:{}/".format, tmp_path),
    ):
        pass


def test_server_that_never_answers_times_out_and_is_killed(tmp_path):
    argv = [sys.executable, "-c", "import os, time; print(os.getpid(), flush=True); time.sleep(60)"]
    with (
        pytest.raises(RuntimeError, match=r"(?s)mute did not answer .* within 0.5s"),
        services.run_server(
            "mute", lambda _: argv, "http://127.0.0.1:{}/".format, tmp_path, timeout=0.5
        ),
    ):
        pass
    pid = int((tmp_path / "mute.log").read_text().splitlines()[-1])
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
