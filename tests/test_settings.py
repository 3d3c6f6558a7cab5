"""ehc run settings: env vars with the reference's names, flags that win, clear errors."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ehc.coordinator.settings import SettingsError, add_arguments, concerns, load


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_defaults() -> None:
    s = load(None, env={})
    assert (s.interval, s.timeout, s.lease_name, s.lease_duration, s.renew_deadline, s.retry_period) == (
        1.0, 0.5, "endpoint-health-checker-leader", 4.0, 2.0, 0.5,
    )  # fmt: skip
    assert s.identity and s.namespace


def test_reference_env_names_and_go_durations() -> None:
    env = {"HEALTH_CHECK_INTERVAL": "1m30s", "HEALTH_CHECK_TIMEOUT": "250ms", "HEALTH_CHECK_RETRY_COUNT": "10",
           "POD_NAME": "ehc-0", "POD_NAMESPACE": "kube-system", "EHC_WORKERS": "4"}  # fmt: skip
    s = load(None, env=env)
    assert (s.interval, s.timeout, s.retry_count, s.identity, s.namespace, s.workers) == (
        90.0, 0.25, 10, "ehc-0", "kube-system", 4,
    )  # fmt: skip
    assert s.probe.retry_count == 10


def test_flag_wins_over_env() -> None:
    s = load(parse(["--timeout", "2s"]), env={"HEALTH_CHECK_TIMEOUT": "1s"})
    assert s.timeout == 2.0


def test_selectorless_is_off_by_default_and_a_bare_flag_turns_it_on() -> None:
    assert (load(None, env={}).selectorless, load(None, env={}).selectorless_namespaces) == (False, ())
    assert load(parse(["--selectorless"]), env={"EHC_SELECTORLESS": "false"}).selectorless is True
    assert load(parse(["--selectorless", "false"]), env={}).selectorless is False
    s = load(None, env={"EHC_SELECTORLESS": "True", "EHC_SELECTORLESS_NAMESPACES": " data, vms ,data,"})
    assert (s.selectorless, s.selectorless_namespaces) == (True, ("data", "vms"))


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"HEALTH_CHECK_INTERVAL": "5"}, "HEALTH_CHECK_INTERVAL='5' is invalid: expected a duration"),
        ({"HEALTH_CHECK_TIMEOUT": "-1s"}, "HEALTH_CHECK_TIMEOUT='-1s' is invalid"),
        (
            {"HEALTH_CHECK_RETRY_COUNT": "three"},
            "HEALTH_CHECK_RETRY_COUNT='three' is invalid: expected a whole number >= 0",
        ),
        ({"EHC_WORKERS": "0"}, "EHC_WORKERS='0' is invalid: expected a whole number >= 1"),
        ({"EHC_FAILSAFE_SHARE": "1.5"}, "EHC_FAILSAFE_SHARE='1.5' is invalid"),
        ({"EHC_LOG_FORMAT": "xml"}, "expected one of text, json"),
        (
            {"EHC_DEFAULT_PROBE": "http"},
            "EHC_DEFAULT_PROBE='http' is invalid: expected one of tcp, readiness, icmp",
        ),
        ({"RENEW_DEADLINE": "5s"}, "RENEW_DEADLINE (5s) < LEASE_DURATION (4s) must hold"),
        ({"EHC_METRICS_ADDRESS": "localhost"}, "EHC_METRICS_ADDRESS='localhost' is invalid"),
        ({"EHC_METRICS_ADDRESS": ":99999"}, "port from 1 to 65535"),
        (
            {"EHC_METRICS_ADDRESS": "::1:9090"},
            "EHC_METRICS_ADDRESS='::1:9090' is invalid: expected HOST:PORT, [IPv6]:PORT",
        ),
        ({"HEALTH_CHECK_RETRY_COUNT": "1000000"}, "expected a whole number >= 0 and <= 100"),
        ({"HEALTH_CHECK_RETRY_COUNT": "５"}, "HEALTH_CHECK_RETRY_COUNT='５' is invalid"),
        ({"EHC_PATCH_QPS": "nan"}, "EHC_PATCH_QPS='nan' is invalid: expected a finite number"),
        ({"EHC_PATCH_QPS": "inf"}, "EHC_PATCH_QPS='inf' is invalid"),
        ({"EHC_WORKERS": "200"}, "EHC_WORKERS='200' is invalid: expected a whole number >= 1 and <= 64"),
        ({"HEALTH_CHECK_INTERVAL": "2h"}, "at most 5m"),
        ({"LEASE_NAME": ""}, "LEASE_NAME='' is invalid: expected a DNS subdomain name"),
        ({"LEASE_NAME": "a/b"}, "LEASE_NAME='a/b' is invalid"),
        ({"LEASE_NAME": "Leader"}, "LEASE_NAME='Leader' is invalid"),
        ({"EHC_SELECTORLESS": "yes"}, "EHC_SELECTORLESS='yes' is invalid: expected true or false"),
        (
            {"EHC_SELECTORLESS_NAMESPACES": "data,Vms"},
            "EHC_SELECTORLESS_NAMESPACES='data,Vms' is invalid: expected namespace names",
        ),
    ],
)
def test_bad_values_name_the_variable_the_value_and_what_is_allowed(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError) as err:
        load(None, env=env)
    assert message in str(err.value)


def test_bad_flag_is_named_as_the_flag() -> None:
    with pytest.raises(SettingsError, match=r"--interval='soon' is invalid"):
        load(parse(["--interval", "soon"]), env={})


def test_run_rejects_a_bad_setting_with_exit_2() -> None:
    env = {**os.environ, "HEALTH_CHECK_TIMEOUT": "fast"}
    r = subprocess.run(
        [sys.executable, "-m", "ehc", "run"], env=env, capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 2
    assert "HEALTH_CHECK_TIMEOUT='fast' is invalid: expected a duration" in r.stderr


@pytest.mark.parametrize("address", [":9090", "0.0.0.0:9090", "[::1]:9090", "localhost:9090", ""])
def test_metrics_addresses_that_are_fine(address: str) -> None:
    assert load(None, env={"EHC_METRICS_ADDRESS": address}).metrics_address == address


def test_settings_are_read_once_and_trimmed() -> None:
    # A stray space is what a hand-edited manifest carries; it must not reach the workers unparsed.
    s = load(
        None, env={"EHC_LOG_LEVEL": " debug", "EHC_LOG_FORMAT": "JSON ", "EHC_DEFAULT_PROBE": "Readiness"}
    )
    assert (s.log_level, s.log_format, s.default_probe) == ("debug", "json", "readiness")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"EHC_METRICS_ADDRESS": "127.0.0.1:{busy}"},
            "EHC_METRICS_ADDRESS='127.0.0.1:{busy}': cannot listen there",
        ),
        ({"EHC_METRICS_ADDRESS": "no-such-host.invalid:9090"}, "cannot listen there"),
        ({"KUBECONFIG": "{empty}"}, "no cluster to talk to"),
        ({"KUBECONFIG": "{garbage}"}, "no cluster to talk to"),
    ],
)
def test_run_exits_2_with_one_line_for_what_it_cannot_use(
    env: dict[str, str], message: str, tmp_path: Path
) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    (tmp_path / "empty").write_text("")
    (tmp_path / "garbage").write_text("apiVersion: v1\nclusters: [\n")
    fill = {"busy": busy.getsockname()[1], "empty": tmp_path / "empty", "garbage": tmp_path / "garbage"}
    good = tmp_path / "kubeconfig"
    good.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters: [{name: c, cluster: {server: 'http://127.0.0.1:1'}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\nusers: [{name: u, user: {}}]\n"
    )
    env = {k: v.format(**fill) for k, v in env.items()}
    full = {
        **os.environ,
        "KUBECONFIG": str(good),
        "POD_NAMESPACE": "default",
        "EHC_LOG_FORMAT": "text",
        **env,
    }
    try:
        r = subprocess.run(
            [sys.executable, "-m", "ehc", "run"], env=full, capture_output=True, text=True, timeout=30
        )
    finally:
        busy.close()
    assert r.returncode == 2, r.stderr[-2000:]
    assert message.format(**fill) in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]


def test_allowed_but_probably_unmeant_settings_are_named() -> None:
    assert concerns(load(None, env={})) == []
    (said,) = concerns(load(None, env={"HEALTH_CHECK_TIMEOUT": "1s"}))
    assert "HEALTH_CHECK_TIMEOUT (1s) is not shorter than HEALTH_CHECK_INTERVAL (1s)" in said
    (said,) = concerns(load(None, env={"HEALTH_CHECK_INTERVAL": "1m"}))
    assert "HEALTH_CHECK_INTERVAL is 1m" in said
