"""ehc run settings: env vars with the reference's names, flags that win, clear errors."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from ehc.coordinator.settings import SettingsError, add_arguments, load


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
        ({"RENEW_DEADLINE": "5s"}, "RENEW_DEADLINE (5s) < LEASE_DURATION (4s) must hold"),
        ({"EHC_METRICS_ADDRESS": "localhost"}, "EHC_METRICS_ADDRESS='localhost' is invalid"),
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
